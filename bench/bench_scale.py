"""Recall and latency of Chroma's HNSW index on real text vectors, per set of HNSW settings:
recall@k against exact search (numpy brute force over the unit vectors) and p50 query latency
against that brute force, at N stored passages.

    python bench/bench_scale.py [--n 100000] [--queries 300] [--k 10]
                                [--settings 16,100,100 32,200,200 ...]   # M,ef_construction,ef_search

The passages (docstrings of installed packages, /usr/share/doc) and their MiniLM vectors come from
bench/scale_corpus.py, embedded once and cached under bench/cache/. Queries are the first sentences
of held-out passages: real text that is not itself stored. Each settings row builds its own
collection (M and ef_construction are fixed when the graph is built); rows that differ only in
ef_search reuse the collection through `collection.modify`, as the app does, and reopen the store:
Chroma reads ef_search when it loads the graph, so a change shows only in a store opened afterwards.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scale_corpus import load  # noqa: E402

from core.retrieval.store import (  # noqa: E402
    HnswSettings,
    apply_hnsw,
    close_client,
    collection_hnsw,
    make_client,
)

DEFAULTS = "16,100,100"  # Chroma's own: max_neighbors, ef_construction, ef_search


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact cosine top-k rows for unit vectors [N, d] and unit queries [Q, d] -> [Q, k], best first."""
    scores = queries @ vectors.T  # [Q, N]
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
    return np.take_along_axis(top, order, axis=1)


def numpy_p50_ms(vectors: np.ndarray, queries: np.ndarray, k: int) -> float:
    """p50 of one brute-force query (matrix-vector product + partial sort), the way an app would do it."""
    times = []
    for q in queries:
        start = time.perf_counter()
        scores = vectors @ q
        top = np.argpartition(-scores, k)[:k]
        top[np.argsort(-scores[top])]
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def fill(collection, vectors: np.ndarray, batch: int) -> float:
    """Add vectors [N, d] with ids = row numbers; returns seconds taken."""
    start = time.perf_counter()
    for lo in range(0, len(vectors), batch):
        hi = min(len(vectors), lo + batch)
        collection.add(ids=[str(i) for i in range(lo, hi)], embeddings=vectors[lo:hi])
    return time.perf_counter() - start


def measure(collection, queries: np.ndarray, exact: np.ndarray, k: int) -> dict[str, float]:
    for q in queries[:10]:  # warm-up: loads the graph into memory
        collection.query(query_embeddings=[q], n_results=k, include=[])
    times, recalls = [], []
    for q, truth in zip(queries, exact, strict=True):
        start = time.perf_counter()
        got = collection.query(query_embeddings=[q], n_results=k, include=[])
        times.append((time.perf_counter() - start) * 1000)
        recalls.append(len({int(i) for i in got["ids"][0]} & {int(i) for i in truth}) / k)
    return {
        "p50_ms": statistics.median(times),
        "recall": float(np.mean(recalls)),
        "min": float(np.min(recalls)),
    }


def run(n: int, n_queries: int, k: int, settings: list[HnswSettings], root: Path) -> list[dict]:
    vectors, queries = load(n, n_queries)
    exact = exact_top_k(vectors, queries, k)
    numpy_ms = numpy_p50_ms(vectors, queries, k)
    client = make_client(root)
    rows = []
    try:
        batch = min(5000, client.get_max_batch_size())
        built: dict[tuple[int, int], tuple[object, float]] = {}
        for s in settings:
            key = (s.max_neighbors, s.ef_construction)
            if key not in built:
                for old, _ in built.values():  # one graph in memory at a time
                    client.delete_collection(old.name)
                built.clear()
                collection = client.create_collection(
                    f"scale-m{key[0]}-efc{key[1]}", configuration=s.configuration()
                )
                built[key] = (collection, fill(collection, vectors, batch))
            collection, build_s = built[key]
            if collection_hnsw(collection)["ef_search"] != s.ef_search:
                apply_hnsw(collection, s)  # Chroma reads ef_search when it loads the graph: reopen the store
                close_client(client)
                client = make_client(root)
                collection = client.get_collection(collection.name)
                built[key] = (collection, build_s)
            row = measure(collection, queries, exact, k)
            row.update(settings=s, build_s=build_s, numpy_ms=numpy_ms)
            rows.append(row)
            print(_row(row, k), flush=True)
    finally:
        close_client(client)
    return rows


def _row(r: dict, k: int) -> str:
    s = r["settings"]
    return (
        f"| {s.max_neighbors} | {s.ef_construction} | {s.ef_search} | {r['recall']:.3f} | {r['min']:.1f} "
        f"| {r['p50_ms']:.2f} | {r['numpy_ms']:.2f} | {r['p50_ms'] / r['numpy_ms']:.2f} "
        f"| {r['build_s']:.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="passages stored")
    parser.add_argument("--queries", type=int, default=300, help="held-out query sentences")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument(
        "--settings",
        nargs="+",
        default=[DEFAULTS, _as_arg(HnswSettings())],
        help="max_neighbors,ef_construction,ef_search per row (default: Chroma's, then Vector Lab's)",
    )
    args = parser.parse_args()
    settings = [HnswSettings(*(int(v) for v in text.split(","))) for text in args.settings]
    print(f"top-{args.k} at {args.n:,} passages, {args.queries} queries (recall vs numpy brute force)")
    print(
        f"| M | ef_construction | ef_search | recall@{args.k} | worst query | Chroma p50 (ms) "
        "| numpy p50 (ms) | Chroma / numpy | build (s) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        run(args.n, args.queries, args.k, settings, Path(tmp))


def _as_arg(s: HnswSettings) -> str:
    return f"{s.max_neighbors},{s.ef_construction},{s.ef_search}"


if __name__ == "__main__":
    main()
