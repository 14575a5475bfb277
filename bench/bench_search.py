"""Cost of vector search: (a) upload -> indexed throughput against raw SentenceTransformer.encode on
the same chunks; (b) Chroma query latency (p50) at N chunks against brute-force numpy cosine top-k,
with Chroma's recall@10 measured against that exact answer.

    python bench/bench_search.py [--n 100000] [--copies 4] [--queries 100]

(a) indexes the test corpus `--copies` times (each copy made unique so dedup does not skip it).
(b) uses seeded random unit 384-d vectors added with precomputed embeddings; queries are either
near-duplicates of stored vectors (like a real question close to its passage) or uniform random
directions (the hardest case for an approximate index: every vector is about equally far). Random
384-d data has no cluster structure, so recall here is a floor, not what real embeddings get:
bench/bench_scale.py measures recall on MiniLM vectors of real text.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.retrieval.documents import Document, content_hash, parse_file  # noqa: E402
from core.retrieval.encoders import load_sentence_embedder  # noqa: E402
from core.retrieval.index import DocumentIndex, IndexSettings  # noqa: E402
from core.retrieval.store import HnswSettings, close_client, make_client  # noqa: E402

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "data" / "corpus"
DIM = 384


def corpus_copies(copies: int) -> list[Document]:
    base = [parse_file(p.name, p.read_bytes()) for p in sorted(CORPUS.glob("*.txt"))]
    docs = []
    for i in range(copies):
        for doc in base:
            text = f"{doc.text}\n\n(copy {i})"
            docs.append(Document(f"{i}-{doc.name}", doc.kind, text, content_hash(text)))
    return docs


def bench_indexing(embedder, copies: int, root: Path, repeat: int = 2) -> dict[str, float]:
    """Chunks per second, best of `repeat`: DocumentIndex.add_documents (chunk + embed + store, each run
    into a fresh collection) vs SentenceTransformer.encode alone on the same chunk texts."""
    client = make_client(root / "throughput")
    try:
        docs = corpus_copies(copies)
        chunker = DocumentIndex(client, embedder, IndexSettings(collection="bench-warmup")).chunker
        texts = [c.text for doc in docs for c in chunker.chunk(doc)]
        embedder.model.encode(texts[:64], batch_size=32)  # warm-up
        raw_s, indexed_s = [], []
        for run in range(repeat):
            start = time.perf_counter()
            embedder.model.encode(texts, batch_size=embedder.batch_size, normalize_embeddings=True)
            raw_s.append(time.perf_counter() - start)
            index = DocumentIndex(client, embedder, IndexSettings(collection=f"bench-throughput-{run}"))
            start = time.perf_counter()
            report = index.add_documents(docs)
            indexed_s.append(time.perf_counter() - start)
            assert report.n_chunks == len(texts)
        return {
            "chunks": len(texts),
            "indexed_per_s": len(texts) / min(indexed_s),
            "raw_per_s": len(texts) / min(raw_s),
        }
    finally:
        close_client(client)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def brute_force_top_k(vectors: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    """Exact cosine top-k for unit vectors [N, d] and a unit query [d] -> row ids, best first."""
    scores = vectors @ query  # [N]
    top = np.argpartition(-scores, k)[:k]
    return top[np.argsort(-scores[top])]


def fill(index: DocumentIndex, vectors: np.ndarray, batch: int) -> float:
    """Add precomputed vectors [N, d] as chunks; returns vectors inserted per second."""
    start = time.perf_counter()
    for lo in range(0, len(vectors), batch):
        hi = min(len(vectors), lo + batch)
        index.collection.add(
            ids=[str(i) for i in range(lo, hi)],
            embeddings=vectors[lo:hi],
            documents=[f"chunk {i}" for i in range(lo, hi)],
            metadatas=[
                {"doc_name": "random", "doc_hash": "h", "chunk_index": i, "char_start": 0, "char_end": 0}
                for i in range(lo, hi)
            ],
        )
    return len(vectors) / (time.perf_counter() - start)


def bench_scale(
    embedder, n: int, n_queries: int, k: int, ef_values: list[int], root: Path, hnsw: HnswSettings
) -> list[dict[str, float]]:
    """Per ef_search value (one collection each: Chroma fixes it when the index is built and loaded):
    p50 latency of Chroma and of numpy brute force, and Chroma's recall@k against the exact answer."""
    rng = np.random.default_rng(0)
    vectors = unit(rng.normal(size=(n, DIM)))  # [N, 384]
    targets = rng.integers(n, size=n_queries)
    query_sets = {
        "near-duplicate": unit(vectors[targets] + rng.normal(size=(n_queries, DIM)) * 0.03),  # cos ~0.87
        "uniform random": unit(rng.normal(size=(n_queries, DIM))),
    }
    client = make_client(root / "scale")
    rows = []
    try:
        batch = min(5000, client.get_max_batch_size())
        for ef in ef_values:
            settings = IndexSettings(collection=f"bench-scale-ef{ef}", hnsw=replace(hnsw, ef_search=ef))
            index = DocumentIndex(client, embedder, settings)
            insert_per_s = fill(index, vectors, batch)
            for label, queries in query_sets.items():
                for q in queries[:5]:  # warm-up: loads the index into memory
                    index.collection.query(query_embeddings=[q], n_results=k, include=[])
                chroma_ms, hits_ms, numpy_ms, recalls, top1 = [], [], [], [], []
                for q in queries:
                    start = time.perf_counter()
                    got = index.collection.query(query_embeddings=[q], n_results=k, include=[])
                    chroma_ms.append((time.perf_counter() - start) * 1000)
                    start = time.perf_counter()
                    index.search_vector(q, k)
                    hits_ms.append((time.perf_counter() - start) * 1000)
                    start = time.perf_counter()
                    exact = brute_force_top_k(vectors, q, k)
                    numpy_ms.append((time.perf_counter() - start) * 1000)
                    found = [int(i) for i in got["ids"][0]]
                    recalls.append(len(set(found) & {int(i) for i in exact}) / k)
                    top1.append(found[0] == int(exact[0]))
                rows.append(
                    {
                        "label": f"{label}, ef_search={ef}",
                        "chroma_p50_ms": statistics.median(chroma_ms),
                        "hits_p50_ms": statistics.median(hits_ms),
                        "numpy_p50_ms": statistics.median(numpy_ms),
                        "recall": float(np.mean(recalls)),
                        "top1": float(np.mean(top1)),
                        "insert_per_s": insert_per_s,
                    }
                )
            client.delete_collection(settings.collection)  # free disk before the next build
        return rows
    finally:
        close_client(client)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="chunks in the scale test")
    parser.add_argument("--copies", type=int, default=4, help="copies of the test corpus to index")
    parser.add_argument("--queries", type=int, default=100, help="queries per query set")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument(
        "--ef-search",
        type=int,
        nargs="+",
        default=[100, 400],
        help="HNSW ef_search values (100 = Chroma default)",
    )
    parser.add_argument(
        "--graph",
        default="default",
        choices=["default", "chroma"],
        help="M and ef_construction: Vector Lab's defaults (HnswSettings) or Chroma's own (16, 100)",
    )
    args = parser.parse_args()

    embedder = load_sentence_embedder()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        a = bench_indexing(embedder, args.copies, root)
        hnsw = (
            HnswSettings() if args.graph == "default" else HnswSettings(max_neighbors=16, ef_construction=100)
        )
        rows = bench_scale(embedder, args.n, args.queries, args.k, args.ef_search, root, hnsw)

    print("\n(a) upload -> indexed, chunks per second")
    print("| chunks | DocumentIndex.add_documents | SentenceTransformer.encode | indexed / encode |")
    print("|---:|---:|---:|---:|")
    ratio = a["indexed_per_s"] / a["raw_per_s"]
    print(f"| {a['chunks']} | {a['indexed_per_s']:.1f} | {a['raw_per_s']:.1f} | {ratio:.2f} |")

    print(f"\n(b) top-{args.k} query at {args.n:,} chunks (insert: {rows[0]['insert_per_s']:,.0f} vectors/s)")
    print(
        "| queries | Chroma query p50 (ms) | DocumentIndex.search_vector p50 (ms) "
        f"| numpy brute force p50 (ms) | Chroma / numpy | recall@{args.k} vs brute force | top-1 found |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['label']} | {r['chroma_p50_ms']:.2f} | {r['hits_p50_ms']:.2f} | {r['numpy_p50_ms']:.2f} "
            f"| {r['chroma_p50_ms'] / r['numpy_p50_ms']:.2f} | {r['recall']:.3f} | {r['top1']:.2f} |"
        )


if __name__ == "__main__":
    main()
