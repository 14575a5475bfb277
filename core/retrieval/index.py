"""`DocumentIndex`: documents chunked, embedded and stored in one Chroma collection (cosine space),
deduplicated by content hash, with a BM25 keyword index beside it (core.retrieval.sparse) kept in step;
add with progress, list, inspect, delete, search by cosine, BM25 or both fused.

A document becomes visible only once all its chunks are stored (core.retrieval.recovery): an upload
that was interrupted is rolled back, and one whose process died is removed when the index is opened."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from chromadb.errors import ChromaError

from core.errors import InputError, SettingsError, VectorLabError
from core.retrieval import collections as admin
from core.retrieval.chunking import (
    Chunk,
    Chunker,
    ChunkSettings,
    location_from_metadata,
    location_metadata,
    merge_chunks,
)
from core.retrieval.collections import ChunkVectors, CollectionInfo
from core.retrieval.documents import Document, ParseSettings, parse_files
from core.retrieval.encoders import Embedder
from core.retrieval.fusion import RRF_K
from core.retrieval.hybrid import search_index
from core.retrieval.keywords import sync_keywords
from core.retrieval.maps import mark_modified
from core.retrieval.recovery import IN_FLIGHT, PENDING, VISIBLE, IncompleteUpload, has_pending, is_pending
from core.retrieval.recovery import remove_incomplete as remove_incomplete_uploads
from core.retrieval.search import Hit, SearchResult, hits_from_query
from core.retrieval.sparse import SparseIndex, sparse_file
from core.retrieval.store import (
    HnswSettings,
    VectorLabEmbeddingFunction,
    apply_hnsw,
    collection_name_problem,
)
from core.retrieval.uploads import DocumentInfo, Duplicate, IndexProgress, IndexReport, ProgressCallback

log = logging.getLogger(__name__)


@dataclass
class IndexSettings:
    """Which collection a DocumentIndex uses and how it fills it."""

    collection: str = "documents"  # Chroma collection: 3-512 chars of a-z A-Z 0-9 . _ -
    batch_size: int = 64  # chunks embedded and added per Chroma call; progress ticks once per batch
    chunk: ChunkSettings = field(default_factory=ChunkSettings)  # how documents are cut
    hnsw: HnswSettings | None = None  # HNSW graph settings; None: a new collection gets HnswSettings(),
    # an existing one keeps its own. Given: ef_search is applied to an existing collection too (M and
    # ef_construction are fixed at creation; `hnsw_notes` says when they differ).

    def __post_init__(self) -> None:
        problem = collection_name_problem(self.collection)
        if problem is not None:
            raise SettingsError(problem)
        if self.batch_size < 1:
            raise SettingsError(f"batch_size must be at least 1, got {self.batch_size}; try 64.")


class DocumentIndex:
    """Documents chunked, embedded and stored in one Chroma collection (cosine space).

    `client` comes from `make_client`; `embedder` is a `SentenceEmbedder` (its tokenizer sizes chunks)
    or any `Embedder` together with an explicit `chunker`. Opening the index removes incomplete uploads
    left by a process that died (`removed_incomplete` lists them) unless `recover=False`. The keyword
    index lives in `sparse_dir` (default: `collections.default_sparse_dir(client)`)."""

    def __init__(
        self,
        client: Any,
        embedder: Embedder,
        settings: IndexSettings | None = None,
        chunker: Chunker | None = None,
        recover: bool = True,
        sparse_dir: Path | None = None,
    ) -> None:
        self.client = client
        self.sparse_dir = Path(sparse_dir) if sparse_dir is not None else admin.default_sparse_dir(client)
        self.embedder = embedder
        self.settings = settings or IndexSettings()
        limit = getattr(embedder, "max_tokens", None)
        if limit is not None and self.settings.chunk.max_tokens > limit:
            raise SettingsError(
                f"chunk max_tokens ({self.settings.chunk.max_tokens}) is more than {embedder.name} reads "
                f"({limit}); lower it to at most {limit}."
            )
        if chunker is None:
            if not hasattr(embedder, "tokenizer") or not callable(embedder.tokenizer):
                raise InputError("This embedder has no tokenizer() for chunking; pass chunker= explicitly.")
            chunker = Chunker(embedder.tokenizer(), self.settings.chunk)
        self.chunker = chunker
        self.embedding_function = VectorLabEmbeddingFunction(embedder)
        self.collection = self._open_collection(self.settings.collection)
        self._max_batch: int | None = None
        self.removed_incomplete: list[IncompleteUpload] = self.remove_incomplete() if recover else []

    @property
    def name(self) -> str:
        return self.settings.collection

    def _open_collection(self, name: str) -> Any:
        try:
            collection = self.client.get_or_create_collection(
                name,
                configuration=(self.settings.hnsw or HnswSettings()).configuration("cosine"),
                metadata={"embedder": self.embedder.name, "dimension": int(self.embedder.dimension)},
                embedding_function=self.embedding_function,
            )
        except ValueError as e:  # Chroma: the collection was made with another embedding function
            raise InputError(f"Collection '{name}' cannot be opened with {self.embedder.name}: {e}") from e
        except ChromaError as e:  # e.g. a name Chroma refuses
            raise InputError(f"Chroma cannot open a collection named {name!r}: {e}") from e
        metadata = collection.metadata or {}
        if metadata.get("embedder", self.embedder.name) != self.embedder.name or int(
            metadata.get("dimension", self.embedder.dimension)
        ) != int(self.embedder.dimension):
            raise InputError(
                f"Collection '{name}' holds {metadata.get('dimension')}-d vectors from "
                f"{metadata.get('embedder')}, not {self.embedder.name}; choose another collection name."
            )
        space = (collection.configuration or {}).get("hnsw", {}) or {}
        if space.get("space", "cosine") != "cosine":
            raise InputError(
                f"Collection '{name}' was created with {space.get('space')} distance, not cosine; "
                "choose another collection name."
            )
        self.hnsw_notes = apply_hnsw(collection, self.settings.hnsw) if self.settings.hnsw else []
        return collection

    # -- reading: only complete documents are ever seen --

    def count(self) -> int:
        """Number of chunks of complete documents stored."""
        return int(self.collection.count()) - len(self.collection.get(where=PENDING, include=[])["ids"])

    def list_documents(self) -> list[DocumentInfo]:
        """Every indexed document (one row per content hash), sorted by name."""
        metadatas = self.collection.get(include=["metadatas"])["metadatas"] or []
        by_hash: dict[str, dict[str, Any]] = {}
        pending: set[str] = set()
        for m in metadatas:
            entry = by_hash.setdefault(m["doc_hash"], {"meta": m, "n": 0})
            entry["n"] += 1
            if is_pending(m):
                pending.add(m["doc_hash"])
        docs = [
            DocumentInfo(
                name=e["meta"]["doc_name"],
                content_hash=h,
                kind=e["meta"]["doc_kind"],
                n_chunks=e["n"],
                n_chars=int(e["meta"]["doc_chars"]),
            )
            for h, e in by_hash.items()
            if h not in pending
        ]
        return sorted(docs, key=lambda d: (d.name, d.content_hash))

    def document_chunks(self, content_hash: str) -> list[Chunk]:
        """The chunks of one document in order (to inspect how it was cut)."""
        got = self.collection.get(where={"doc_hash": content_hash}, include=["metadatas", "documents"])
        if not got["ids"] or any(is_pending(m) for m in got["metadatas"]):
            raise InputError(f"No indexed document has hash {content_hash[:12]}...; refresh the list.")
        chunks = [
            _chunk_from(meta, text) for meta, text in zip(got["metadatas"], got["documents"], strict=True)
        ]
        return sorted(chunks, key=lambda c: c.index)

    def document_text(self, content_hash: str) -> str:
        """One indexed document's text, rebuilt from its chunks (overlaps counted once)."""
        return merge_chunks(self.document_chunks(content_hash))

    def has_document(self, content_hash: str) -> bool:
        return self._existing_name(content_hash) is not None

    # -- writing --

    def add_documents(
        self, documents: Sequence[Document], on_progress: ProgressCallback | None = None
    ) -> IndexReport:
        """Chunk, embed and store documents in batches; text already indexed is skipped.

        `on_progress(IndexProgress)` is called first with nothing done, then after every batch.
        Chunks are stored as pending and become visible together once all are stored. If anything
        stops this call half-way (an error, or an exception raised by `on_progress`, such as the one
        Streamlit raises to stop a script run), its chunks are removed again and the exception goes on:
        the index is as before."""
        report = IndexReport()
        planned: list[tuple[Document, list[Chunk]]] = []
        claimed: list[str] = []
        seen: dict[str, str] = {}  # content hash -> the name it is (or will be) indexed under
        try:
            for doc in documents:
                if doc.content_hash in seen:
                    report.duplicates.append(Duplicate(doc.name, existing_name=seen[doc.content_hash]))
                    continue
                if not IN_FLIGHT.claim(self._collection_key, doc.content_hash):
                    report.in_progress.append(doc.name)
                    continue
                claimed.append(doc.content_hash)
                existing = self._existing_name(doc.content_hash)  # checked once claimed: no race
                seen[doc.content_hash] = existing or doc.name
                if existing is not None:
                    report.duplicates.append(Duplicate(doc.name, existing_name=existing))
                    continue
                planned.append((doc, self.chunker.chunk(doc)))
            self._store(planned, on_progress)
        finally:
            IN_FLIGHT.release(self._collection_key, claimed)
        for doc, chunks in planned:
            report.added.append(
                DocumentInfo(doc.name, doc.content_hash, doc.kind, n_chunks=len(chunks), n_chars=doc.n_chars)
            )
        log.info("Indexed %d documents (%d chunks) into %s", len(planned), report.n_chunks, self.name)
        return report

    def _store(
        self, planned: Sequence[tuple[Document, list[Chunk]]], on_progress: ProgressCallback | None
    ) -> None:
        rows = [(doc, chunk, len(chunks)) for doc, chunks in planned for chunk in chunks]
        # Batches of similar length pad less inside the encoder (the order in the store is irrelevant).
        rows.sort(key=lambda row: row[1].n_tokens)
        total, tokens_total = len(rows), sum(chunk.n_tokens for _, chunk, _ in rows)
        started, tokens_done = time.monotonic(), 0

        def report(done: int) -> None:
            if on_progress:
                on_progress(IndexProgress(done, total, tokens_done, tokens_total, time.monotonic() - started))

        attempted: list[str] = []
        try:
            for doc, _ in planned:  # pending chunks of an earlier upload of this text that never finished
                self._delete(self.collection.get(where={"doc_hash": doc.content_hash}, include=[])["ids"])
            report(0)
            for start in range(0, total, self.settings.batch_size):
                batch = rows[start : start + self.settings.batch_size]
                ids = [_chunk_id(chunk) for _, chunk, _ in batch]
                attempted.extend(ids)
                self.collection.add(
                    ids=ids,
                    documents=[chunk.text for _, chunk, _ in batch],
                    embeddings=self.embedder.encode([chunk.embedding_text for _, chunk, _ in batch]),
                    metadatas=[_chunk_metadata(doc, chunk, n, complete=False) for doc, chunk, n in batch],
                )
                tokens_done += sum(chunk.n_tokens for _, chunk, _ in batch)
                report(start + len(batch))
            self._complete(attempted)
            self.sync_sparse()
        except BaseException as e:  # BaseException too: Streamlit stops a run with one, and so does Ctrl+C
            log.info("Indexing into %s stopped (%r); removing its %d chunks", self.name, e, len(attempted))
            self._rollback(attempted)
            if isinstance(e, Exception) and not isinstance(e, VectorLabError):
                raise VectorLabError(f"Indexing stopped ({e}); nothing from this upload was kept.") from e
            raise

    def _complete(self, ids: list[str]) -> None:
        """Make a finished upload visible: check every chunk is there, then flip their flags."""
        found = sum(len(self.collection.get(ids=part, include=[])["ids"]) for part in self._batches(ids))
        if found != len(ids):
            raise VectorLabError(
                f"Indexing stopped: {len(ids) - found} of {len(ids)} stored chunks disappeared before the "
                "upload finished (was the collection deleted meanwhile?); nothing from this upload was kept."
            )
        for part in self._batches(ids):
            self.collection.update(ids=part, metadatas=[{"complete": True}] * len(part))
        mark_modified(self.collection)  # cached maps of this collection are now stale

    def _rollback(self, ids: list[str]) -> None:
        try:
            self._delete(ids)
        except Exception:  # the store failed: the chunks stay pending (unseen) until the next opening
            log.warning("Could not remove %d pending chunks from %s", len(ids), self.name, exc_info=True)

    def add_files(
        self,
        files: Iterable[tuple[str, bytes]],
        on_progress: ProgressCallback | None = None,
        parse_settings: ParseSettings | None = None,
    ) -> IndexReport:
        """Parse (name, bytes) uploads and index the good ones; bad files are listed in `errors`."""
        parsed = parse_files(files, parse_settings)
        report = self.add_documents(parsed.documents, on_progress)
        report.errors.extend(parsed.errors)
        return report

    def delete_document(self, content_hash: str) -> int:
        """Remove one document's chunks; returns how many were removed."""
        if self._existing_name(content_hash) is None:
            raise InputError(f"No indexed document has hash {content_hash[:12]}...; refresh the list.")
        ids = self.collection.get(where={"doc_hash": content_hash}, include=[])["ids"]
        self._delete(ids)
        self.sync_sparse()
        return len(ids)

    def remove_incomplete(self) -> list[IncompleteUpload]:
        """Remove the chunks of uploads that never finished (their process died), except uploads this
        process is storing right now; returns what was removed, by name."""
        return remove_incomplete_uploads(self.collection, self._collection_key, self._delete)

    def uploads_in_progress(self) -> int:
        """Documents this process is storing into this collection right now, in any thread (another
        browser tab, or a stopped run still removing what it had stored)."""
        return IN_FLIGHT.count(self._collection_key)

    def _existing_name(self, content_hash: str) -> str | None:
        """The name a complete document with this text was indexed under, or None."""
        got = self.collection.get(where={"doc_hash": content_hash}, limit=1, include=["metadatas"])
        if not got["ids"] or has_pending(self.collection, content_hash):
            return None
        return got["metadatas"][0]["doc_name"]

    @property
    def _collection_key(self) -> str:
        return str(self.collection.id)

    def _batches(self, ids: Sequence[str]) -> Iterator[list[str]]:
        if self._max_batch is None:
            self._max_batch = max(1, int(self.client.get_max_batch_size()))
        for start in range(0, len(ids), self._max_batch):
            yield list(ids[start : start + self._max_batch])

    def _delete(self, ids: Sequence[str]) -> None:
        for part in self._batches(ids):
            self.collection.delete(ids=part)
        if ids:
            mark_modified(self.collection)

    # -- collections --

    def collections(self) -> list[CollectionInfo]:
        """Every collection on this client with its size and encoder."""
        return admin.list_collections(self.client)

    def delete_collection(self, name: str) -> None:
        """Delete a collection and its keyword index; deleting this index's own collection leaves it
        empty and usable."""
        admin.delete_collection(self.client, name, self.sparse_dir)
        if name == self.name:
            self.collection = self._open_collection(name)

    # -- the keyword index --

    @property
    def sparse_path(self) -> Path:
        return sparse_file(self.sparse_dir, self.name)

    def sync_sparse(self) -> tuple[SparseIndex, str | None]:
        """The BM25 index of this collection's complete chunks, brought in step with the collection
        first, and what had to be done (None when it was up to date): `keywords.sync_keywords`."""
        return sync_keywords(self.collection, self.sparse_path, self.name, self._batches)

    # -- querying --

    def search(self, query: str, k: int = 5, mode: str = "dense", rrf_k: int = RRF_K) -> SearchResult:
        """Top-k chunks for `query` by cosine ("dense"), BM25 ("sparse") or both fused by reciprocal
        rank fusion ("hybrid"); each hit carries both scores and its rank in both lists."""
        return search_index(self, query, k, mode, rrf_k)

    def search_vector(self, vector: np.ndarray, k: int = 5) -> list[Hit]:
        """Top-k chunks nearest an already-embedded query [d]."""
        q = np.asarray(vector, dtype=np.float64)
        query = {  # k beyond the collection size simply returns every chunk
            "query_embeddings": [q.astype(np.float32)],
            "n_results": k,
            "include": ["documents", "metadatas", "distances", "embeddings"],
        }
        got = self.collection.query(**query)
        if any(is_pending(m) for m in got["metadatas"][0]):  # an upload is being stored right now:
            got = self.collection.query(**query, where=VISIBLE)  # filter only then (filters cost time)
        if not got["ids"][0]:
            self.require_content()
        return hits_from_query(got, q)

    def chunk_vectors(self) -> ChunkVectors:
        """All chunks with their stored embeddings, in document/chunk order."""
        self.require_content()
        vectors = admin.read_chunk_vectors(self.collection)
        if not vectors.ids:
            self.require_content()
        return vectors

    def require_content(self) -> int:
        count = self.count()
        if count == 0:
            raise InputError(f"Nothing is indexed in '{self.name}' yet; upload a document first.")
        return count


def _chunk_id(chunk: Chunk) -> str:
    return f"{chunk.doc_hash}-{chunk.index:05d}"


def _chunk_metadata(doc: Document, chunk: Chunk, n_chunks: int, complete: bool) -> dict[str, Any]:
    return {
        "complete": complete,
        "doc_name": doc.name,
        "doc_hash": doc.content_hash,
        "doc_kind": doc.kind,
        "doc_chars": doc.n_chars,
        "doc_chunks": n_chunks,
        "chunk_index": chunk.index,
        "char_start": chunk.char_start,
        "char_end": chunk.char_end,
        "n_tokens": chunk.n_tokens,
        **location_metadata(chunk),  # heading path and pages
    }


def _chunk_from(meta: dict[str, Any], text: str) -> Chunk:
    return Chunk(
        doc_name=meta["doc_name"],
        doc_hash=meta["doc_hash"],
        index=int(meta["chunk_index"]),
        char_start=int(meta["char_start"]),
        char_end=int(meta["char_end"]),
        text=text,
        n_tokens=int(meta["n_tokens"]),
        **location_from_metadata(meta),
    )
