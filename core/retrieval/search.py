"""Vector search over uploaded documents with Chroma: the client factory, our registered embedding
function, `DocumentIndex` (dedup, batch indexing with progress, list/inspect/delete, top-k query) and
the cosine / dot / L2 comparison the search page teaches with.

A document becomes visible only once all its chunks are stored: chunks are written with
`complete: False` and flipped to `True` last. Readers never see pending chunks; an upload that was
interrupted is rolled back, and one whose process died is removed when the index is next opened."""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import chromadb
import numpy as np
from chromadb.api.types import Documents, EmbeddingFunction, Embeddings
from chromadb.config import Settings
from chromadb.errors import ChromaError
from chromadb.utils.embedding_functions import register_embedding_function

from core.errors import InputError, VectorLabError
from core.paths import data_dir
from core.retrieval.documents import (
    Chunk,
    Chunker,
    ChunkSettings,
    Document,
    FileError,
    ParseSettings,
    parse_files,
)
from core.retrieval.embeddings import MINILM_NAME, Embedder, Projection2D, load_sentence_embedder, pca_2d

log = logging.getLogger(__name__)

CHROMA_HOST_ENV = "CHROMA_HOST"  # set (and/or CHROMA_PORT) to use a Chroma server instead of local files
CHROMA_PORT_ENV = "CHROMA_PORT"
EMBEDDING_FUNCTION_NAME = "vectorlab-minilm"
_COLLECTION_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9._-]{1,510}[a-zA-Z0-9]")  # used with fullmatch
_PENDING = {"complete": False}  # chunks of an upload that has not finished: invisible to every reader
_VISIBLE = {"complete": {"$ne": False}}  # finished chunks (and chunks stored before the flag existed)

# (collection id, content hash) of every upload this process is storing right now. Opening an index
# removes pending chunks, but never those of a live upload in another thread (another browser tab).
_IN_FLIGHT: set[tuple[str, str]] = set()
_IN_FLIGHT_LOCK = threading.Lock()


def collection_name_problem(name: object) -> str | None:
    """Why Chroma would refuse `name` for a collection, or None if it is fine. Chroma's rule: 3-512
    characters from [a-zA-Z0-9._-], starting and ending with a letter or digit, no '..', and not an
    IP address."""
    if not isinstance(name, str) or not _COLLECTION_NAME.fullmatch(name):
        return (
            f"collection {name!r} is not a valid Chroma name: use 3-512 letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit."
        )
    if ".." in name:
        return f"collection {name!r} is not a valid Chroma name: it must not contain '..'."
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return None
    return f"collection {name!r} is not a valid Chroma name: it must not be an IP address."


# --- Chroma plumbing ------------------------------------------------------------------------------


@register_embedding_function
class VectorLabEmbeddingFunction(EmbeddingFunction[Documents]):
    """Chroma's view of our encoder. Always passed to collections: Chroma's default would download
    a model at run time. Rebuilt from its config (bundled MiniLM, loaded lazily) when Chroma asks."""

    def __init__(self, embedder: Embedder | None = None) -> None:
        self._embedder = embedder
        self._model = embedder.name if embedder is not None else MINILM_NAME

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = load_sentence_embedder()
        return self._embedder

    def __call__(self, input: Documents) -> Embeddings:
        return list(self.embedder.encode(list(input)))

    @staticmethod
    def name() -> str:
        return EMBEDDING_FUNCTION_NAME

    def get_config(self) -> dict[str, Any]:
        return {"model": self._model}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> VectorLabEmbeddingFunction:
        VectorLabEmbeddingFunction.validate_config(config)
        return VectorLabEmbeddingFunction()

    @staticmethod
    def validate_config(config: dict[str, Any]) -> None:
        if config.get("model", MINILM_NAME) != MINILM_NAME:
            raise ValueError(
                f"{EMBEDDING_FUNCTION_NAME} can only rebuild {MINILM_NAME}, not {config.get('model')!r}; "
                "pass the embedder explicitly."
            )

    def default_space(self) -> str:  # type: ignore[override]
        return "cosine"

    def supported_spaces(self) -> list[str]:  # type: ignore[override]
        return ["cosine", "ip", "l2"]


@dataclass(frozen=True)
class StoreLocation:
    """Where `make_client` connects: a Chroma server, or Chroma's files on this machine."""

    kind: str  # "server" or "embedded"
    host: str = ""  # server only
    port: int = 0  # server only
    path: Path | None = None  # embedded only, resolved

    @property
    def key(self) -> str:
        """Names the store in cache keys: two data directories are two stores."""
        return f"server:{self.host}:{self.port}" if self.kind == "server" else f"embedded:{self.path}"

    def describe(self) -> str:
        if self.kind == "server":
            return f"the Chroma server at {self.host}:{self.port} (from {CHROMA_HOST_ENV}/{CHROMA_PORT_ENV})"
        return f"embedded Chroma, files in {self.path}"


def store_location(path: str | Path | None = None) -> StoreLocation:
    """Where `make_client(path)` will connect, worked out without connecting."""
    host = os.environ.get(CHROMA_HOST_ENV, "").strip()
    port_text = os.environ.get(CHROMA_PORT_ENV, "").strip()
    if path is None and (host or port_text):
        try:
            port = int(port_text or 8000)
        except ValueError:
            raise InputError(f"{CHROMA_PORT_ENV} must be a port number, got {port_text!r}.") from None
        return StoreLocation(kind="server", host=host or "localhost", port=port)
    folder = Path(path) if path is not None else data_dir() / "chroma"
    return StoreLocation(kind="embedded", path=folder.resolve())


def make_client(path: str | Path | None = None) -> Any:
    """A Chroma client: embedded at `path` if given; else a server if CHROMA_HOST/CHROMA_PORT are set;
    else embedded under `data_dir()/chroma`. Telemetry is off."""
    settings = Settings(anonymized_telemetry=False)
    location = store_location(path)
    if location.kind == "server":
        host, port = location.host, location.port
        try:
            client = chromadb.HttpClient(host=host, port=port, settings=settings)
            client.heartbeat()
        except Exception as e:
            raise InputError(
                f"Could not reach the Chroma server at {host}:{port} ({e}). Start it with `chroma run "
                f"--port {port}`, or unset {CHROMA_HOST_ENV}/{CHROMA_PORT_ENV} to use local files."
            ) from e
        log.info("Using the Chroma server at %s:%d", host, port)
        return client
    folder = location.path
    assert folder is not None
    folder.mkdir(parents=True, exist_ok=True)
    log.info("Using the local Chroma database in %s", folder)
    return chromadb.PersistentClient(path=str(folder), settings=settings)


def close_client(client: Any) -> None:
    """Release a client's files and connections (safe to call twice)."""
    close = getattr(client, "close", None)
    if callable(close):
        close()


# --- results --------------------------------------------------------------------------------------


@dataclass
class IndexSettings:
    """Which collection a DocumentIndex uses and how it fills it."""

    collection: str = "documents"  # Chroma collection: 3-512 chars of a-z A-Z 0-9 . _ -
    batch_size: int = 64  # chunks embedded and added per Chroma call; progress ticks once per batch
    chunk: ChunkSettings = field(default_factory=ChunkSettings)  # how documents are cut
    hnsw_ef_search: int = 100  # HNSW candidates kept per query (Chroma's default); more = better recall,
    # slower. Fixed when the collection is created: an existing collection keeps its own value.

    def __post_init__(self) -> None:
        problem = collection_name_problem(self.collection)
        if problem is not None:
            raise ValueError(problem)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}; try 64.")
        if self.hnsw_ef_search < 1:
            raise ValueError(f"hnsw_ef_search must be at least 1, got {self.hnsw_ef_search}; try 100.")


@dataclass(frozen=True)
class DocumentInfo:
    """One indexed document, as listed on the page."""

    name: str
    content_hash: str
    kind: str
    n_chunks: int
    n_chars: int


@dataclass(frozen=True)
class Duplicate:
    """An upload skipped because the same text is already indexed (possibly under another name)."""

    name: str
    existing_name: str


@dataclass(frozen=True)
class IndexReport:
    """What one upload did to the index."""

    added: list[DocumentInfo] = field(default_factory=list)
    duplicates: list[Duplicate] = field(default_factory=list)
    errors: list[FileError] = field(default_factory=list)  # files rejected while parsing
    in_progress: list[str] = field(default_factory=list)  # names skipped: the same text is being
    # indexed by another upload in this process right now (another tab, or one still rolling back)

    @property
    def n_chunks(self) -> int:
        return sum(d.n_chunks for d in self.added)


@dataclass(frozen=True)
class IndexProgress:
    """How far one `add_documents` call has got; passed to `on_progress` after every stored batch."""

    done: int  # chunks stored so far
    total: int  # chunks this call stores
    tokens_done: int  # encoder tokens in the stored chunks
    tokens_total: int  # encoder tokens in all of this call's chunks
    elapsed_s: float  # seconds since the first chunk went to the encoder

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the rate so far, or None before anything is stored. The rate is counted in
        tokens: chunks are sent shortest first, so a rate in chunks would promise too little."""
        if self.done >= self.total:
            return 0.0
        if self.tokens_done == 0 or self.elapsed_s <= 0:
            return None
        return self.elapsed_s * (self.tokens_total - self.tokens_done) / self.tokens_done

    def describe(self) -> str:
        """A progress line: 'Embedded 120 of 3,812 chunks · about 6 min 10 s left'."""
        text = f"Embedded {self.done:,} of {self.total:,} chunks"
        eta = self.eta_s
        if eta is None:
            return text + " · estimating the time left…"
        return text + ("" if self.done >= self.total else f" · about {_duration(eta)} left")


def _duration(seconds: float) -> str:
    whole = max(1, round(seconds))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


ProgressCallback = Callable[[IndexProgress], None]


@dataclass(frozen=True)
class IncompleteUpload:
    """A document whose upload stopped before all its chunks were stored (the process was killed, or
    rolling back failed); found and removed when the index is opened."""

    name: str
    content_hash: str
    n_stored: int  # chunks that had been stored
    n_chunks: int  # chunks the whole document has

    def describe(self) -> str:
        return (
            f"Removed an incomplete upload of '{self.name}' ({self.n_stored} of {self.n_chunks} chunks "
            "had been stored when indexing stopped); upload it again to index it."
        )


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    n_chunks: int
    embedder: str  # the encoder that filled it ("?" if not made by Vector Lab)


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk. Chroma ranks by cosine; dot and L2 are the same pair re-scored for teaching."""

    rank: int  # 1 = best
    id: str
    doc_name: str
    doc_hash: str
    chunk_index: int
    char_start: int
    char_end: int
    text: str
    cosine: float  # 1 - Chroma's cosine distance; higher is closer
    dot: float  # query · chunk; equals cosine for unit vectors
    l2: float  # ||query - chunk||; sqrt(2 - 2·cosine) for unit vectors; lower is closer


@dataclass(frozen=True)
class SearchResult:
    query: str
    query_embedding: np.ndarray  # [d]
    hits: list[Hit]


@dataclass(frozen=True)
class ChunkVectors:
    """Every chunk in a collection with its stored embedding."""

    ids: list[str]
    embeddings: np.ndarray  # [N, d]
    doc_names: list[str]
    chunk_indices: list[int]
    texts: list[str]


@dataclass(frozen=True)
class EmbeddingMap:
    """Chunks (and optionally a query) on a 2-D PCA map of the collection."""

    coords: np.ndarray  # [N, 2], one row per chunk shown
    ids: list[str]  # chunk ids, as in Hit.id
    doc_names: list[str]
    chunk_indices: list[int]
    texts: list[str]
    projection: Projection2D  # fitted on the chunks only
    query: str | None = None
    query_coords: np.ndarray | None = None  # [2]
    n_total: int = 0  # chunks in the collection; more than len(ids) when the map shows a sample


@dataclass(frozen=True)
class MetricRankings:
    """Order of the same candidates under each metric (indices into the candidates, best first)."""

    cosine: list[int]
    dot: list[int]
    l2: list[int]

    @property
    def agree(self) -> bool:
        return self.cosine == self.dot == self.l2


def rank_under_metrics(query: np.ndarray, vectors: np.ndarray, decimals: int = 6) -> MetricRankings:
    """Rank candidate vectors [K, d] for a query [d] by cosine (desc), dot (desc) and L2 (asc).

    Scores are rounded to `decimals` so float noise between equal scores does not count as a
    disagreement; ties keep the candidates' original order."""
    q = np.asarray(query, dtype=np.float64)
    v = np.atleast_2d(np.asarray(vectors, dtype=np.float64))
    dot = v @ q  # [K]
    norms = np.linalg.norm(v, axis=1) * np.linalg.norm(q)
    cosine = dot / np.where(norms == 0, 1.0, norms)  # [K]
    l2 = np.linalg.norm(v - q, axis=1)  # [K]

    def order(scores: np.ndarray) -> list[int]:
        return [int(i) for i in np.argsort(np.round(scores, decimals), kind="stable")]

    return MetricRankings(cosine=order(-cosine), dot=order(-dot), l2=order(l2))


def hits_rankings(hits: Sequence[Hit], decimals: int = 6) -> MetricRankings:
    """Orders of `hits` (indices into the list) under each metric, from the scores they carry."""

    def order(scores: list[float]) -> list[int]:
        return [int(i) for i in np.argsort(np.round(scores, decimals), kind="stable")]

    return MetricRankings(
        cosine=order([-h.cosine for h in hits]),
        dot=order([-h.dot for h in hits]),
        l2=order([h.l2 for h in hits]),
    )


def rankings_agree(hits: Sequence[Hit]) -> bool:
    """True when cosine, dot product and L2 distance put `hits` in the same order."""
    return hits_rankings(hits).agree


@dataclass(frozen=True)
class HitContext:
    """A retrieved chunk with the document text around it, rebuilt from the document's stored chunks."""

    before: str  # up to `context_chars` characters before the chunk
    text: str  # the chunk itself
    after: str  # up to `context_chars` characters after it
    at_start: bool  # nothing of the document comes before `before`
    at_end: bool  # nothing comes after `after`


def hit_context(hit: Hit, chunks: Sequence[Chunk], context_chars: int = 200) -> HitContext:
    """Place `hit` in its document. `chunks` are that document's chunks (DocumentIndex.document_chunks);
    the text between chunks (whitespace the splitter dropped) comes back as spaces."""
    if context_chars < 0:
        raise InputError(f"context_chars must be at least 0, got {context_chars}.")
    length = max([c.char_end for c in chunks] + [hit.char_end])
    buffer = [" "] * length
    for c in chunks:
        buffer[c.char_start : c.char_end] = list(c.text)
    buffer[hit.char_start : hit.char_end] = list(hit.text)
    document = "".join(buffer)
    start = max(0, hit.char_start - context_chars)
    end = min(length, hit.char_end + context_chars)
    before, after = document[start : hit.char_start], document[hit.char_end : end]
    if start > 0:  # begin and end the context on whole words
        before = re.sub(r"^\S*\s", "", before, count=1)
    if end < length:
        after = re.sub(r"\s\S*$", "", after, count=1)
    return HitContext(before=before, text=hit.text, after=after, at_start=start == 0, at_end=end == length)


def hit_context_html(context: HitContext, anchor: str | None = None) -> str:
    """The chunk highlighted inside its surrounding text (all of it html-escaped); `anchor` becomes
    the element id that answers link to."""
    import html

    grey = 'style="color: #6b7280;"'
    before = ("" if context.at_start else "…") + context.before.lstrip()
    after = context.after.rstrip() + ("" if context.at_end else "…")
    ident = f' id="{html.escape(anchor, quote=True)}"' if anchor else ""
    return (
        f'<div{ident} style="white-space: pre-wrap; line-height: 1.6; font-size: 0.92rem;">'
        f"<span {grey}>{html.escape(before)}</span>"
        f'<mark style="background: #fde68a; padding: 0 2px;">{html.escape(context.text)}</mark>'
        f"<span {grey}>{html.escape(after)}</span></div>"
    )


# --- the index ------------------------------------------------------------------------------------


class DocumentIndex:
    """Documents chunked, embedded and stored in one Chroma collection (cosine space).

    `client` comes from `make_client`; `embedder` is a `SentenceEmbedder` (its tokenizer sizes chunks)
    or any `Embedder` together with an explicit `chunker`. Opening the index removes incomplete uploads
    left by a process that died (`removed_incomplete` lists them) unless `recover=False`."""

    def __init__(
        self,
        client: Any,
        embedder: Embedder,
        settings: IndexSettings | None = None,
        chunker: Chunker | None = None,
        recover: bool = True,
    ) -> None:
        self.client = client
        self.embedder = embedder
        self.settings = settings or IndexSettings()
        limit = getattr(embedder, "max_tokens", None)
        if limit is not None and self.settings.chunk.max_tokens > limit:
            raise ValueError(
                f"chunk max_tokens ({self.settings.chunk.max_tokens}) is more than {embedder.name} reads "
                f"({limit}); lower it to at most {limit}."
            )
        if chunker is None:
            if not hasattr(embedder, "tokenizer") or not callable(embedder.tokenizer):
                raise ValueError("This embedder has no tokenizer() for chunking; pass chunker= explicitly.")
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
                configuration={"hnsw": {"space": "cosine", "ef_search": self.settings.hnsw_ef_search}},
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
        return collection

    # -- reading: only complete documents are ever seen --

    def count(self) -> int:
        """Number of chunks of complete documents stored."""
        return int(self.collection.count()) - len(self.collection.get(where=_PENDING, include=[])["ids"])

    def list_documents(self) -> list[DocumentInfo]:
        """Every indexed document (one row per content hash), sorted by name."""
        metadatas = self.collection.get(include=["metadatas"])["metadatas"] or []
        by_hash: dict[str, dict[str, Any]] = {}
        pending: set[str] = set()
        for m in metadatas:
            entry = by_hash.setdefault(m["doc_hash"], {"meta": m, "n": 0})
            entry["n"] += 1
            if _is_pending(m):
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
        if not got["ids"] or any(_is_pending(m) for m in got["metadatas"]):
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
                if not self._claim(doc.content_hash):
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
            self._release(claimed)
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
                    metadatas=[_chunk_metadata(doc, chunk, n, complete=False) for doc, chunk, n in batch],
                )
                tokens_done += sum(chunk.n_tokens for _, chunk, _ in batch)
                report(start + len(batch))
            self._complete(attempted)
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
        return len(ids)

    def remove_incomplete(self) -> list[IncompleteUpload]:
        """Remove the chunks of uploads that never finished (their process died), except uploads this
        process is storing right now; returns what was removed, by name."""
        got = self.collection.get(where=_PENDING, include=["metadatas"])
        first_meta: dict[str, dict[str, Any]] = {}
        for meta in got["metadatas"] or []:
            first_meta.setdefault(meta["doc_hash"], meta)
        removed = []
        for content_hash, meta in first_meta.items():
            with _IN_FLIGHT_LOCK:  # held while deleting, so no upload of this text can start meanwhile
                if (self._collection_key, content_hash) in _IN_FLIGHT or not self._has_pending(content_hash):
                    continue  # a live upload, or one that has just finished
                ids = self.collection.get(where={"doc_hash": content_hash}, include=[])["ids"]
                self._delete(ids)
            upload = IncompleteUpload(meta["doc_name"], content_hash, len(ids), int(meta["doc_chunks"]))
            log.warning("%s", upload.describe())
            removed.append(upload)
        return sorted(removed, key=lambda u: (u.name, u.content_hash))

    def uploads_in_progress(self) -> int:
        """Documents this process is storing into this collection right now, in any thread (another
        browser tab, or a stopped run still removing what it had stored)."""
        with _IN_FLIGHT_LOCK:
            return sum(1 for collection, _ in _IN_FLIGHT if collection == self._collection_key)

    def _existing_name(self, content_hash: str) -> str | None:
        """The name a complete document with this text was indexed under, or None."""
        got = self.collection.get(where={"doc_hash": content_hash}, limit=1, include=["metadatas"])
        if not got["ids"] or self._has_pending(content_hash):
            return None
        return got["metadatas"][0]["doc_name"]

    def _has_pending(self, content_hash: str) -> bool:
        where = {"$and": [{"doc_hash": content_hash}, _PENDING]}
        return bool(self.collection.get(where=where, limit=1, include=[])["ids"])

    @property
    def _collection_key(self) -> str:
        return str(self.collection.id)

    def _claim(self, content_hash: str) -> bool:
        """Mark this text as being stored by this process; False if another upload already is."""
        key = (self._collection_key, content_hash)
        with _IN_FLIGHT_LOCK:
            if key in _IN_FLIGHT:
                return False
            _IN_FLIGHT.add(key)
            return True

    def _release(self, hashes: Iterable[str]) -> None:
        with _IN_FLIGHT_LOCK:
            for content_hash in hashes:
                _IN_FLIGHT.discard((self._collection_key, content_hash))

    def _batches(self, ids: Sequence[str]) -> Iterator[list[str]]:
        if self._max_batch is None:
            self._max_batch = max(1, int(self.client.get_max_batch_size()))
        for start in range(0, len(ids), self._max_batch):
            yield list(ids[start : start + self._max_batch])

    def _delete(self, ids: Sequence[str]) -> None:
        for part in self._batches(ids):
            self.collection.delete(ids=part)

    # -- collections --

    def collections(self) -> list[CollectionInfo]:
        """Every collection on this client with its size and encoder."""
        infos = []
        for col in self.client.list_collections():
            meta = col.metadata or {}
            infos.append(CollectionInfo(col.name, int(col.count()), str(meta.get("embedder", "?"))))
        return sorted(infos, key=lambda c: c.name)

    def delete_collection(self, name: str) -> None:
        """Delete a collection; deleting this index's own collection leaves it empty and usable."""
        if name not in {c.name for c in self.client.list_collections()}:
            raise InputError(f"There is no collection named '{name}'.")
        try:
            self.client.delete_collection(name)
        except ChromaError as e:
            raise InputError(f"Chroma could not delete the collection '{name}': {e}") from e
        if name == self.name:
            self.collection = self._open_collection(name)

    # -- querying --

    def search(self, query: str, k: int = 5) -> SearchResult:
        """Top-k chunks for `query` by cosine similarity, each re-scored under dot and L2."""
        if not isinstance(query, str) or not query.strip():
            raise InputError("Type a question or phrase to search for.")
        if k < 1:
            raise InputError(f"k must be at least 1, got {k}.")
        self._require_content()  # before encoding: an empty index needs no model call
        vector = self.embedder.encode([query])[0]  # [d]
        return SearchResult(query=query, query_embedding=vector, hits=self.search_vector(vector, k))

    def search_vector(self, vector: np.ndarray, k: int = 5) -> list[Hit]:
        """Top-k chunks nearest an already-embedded query [d]."""
        q = np.asarray(vector, dtype=np.float64)
        query = {  # k beyond the collection size simply returns every chunk
            "query_embeddings": [q.astype(np.float32)],
            "n_results": k,
            "include": ["documents", "metadatas", "distances", "embeddings"],
        }
        got = self.collection.query(**query)
        if any(_is_pending(m) for m in got["metadatas"][0]):  # an upload is being stored right now:
            got = self.collection.query(**query, where=_VISIBLE)  # filter only then (filters cost time)
        if not got["ids"][0]:
            self._require_content()
        hits = []
        for rank, (cid, text, meta, distance, emb) in enumerate(
            zip(
                got["ids"][0],
                got["documents"][0],
                got["metadatas"][0],
                got["distances"][0],
                got["embeddings"][0],
                strict=True,
            ),
            start=1,
        ):
            e = np.asarray(emb, dtype=np.float64)
            hits.append(
                Hit(
                    rank=rank,
                    id=cid,
                    doc_name=meta["doc_name"],
                    doc_hash=meta["doc_hash"],
                    chunk_index=int(meta["chunk_index"]),
                    char_start=int(meta["char_start"]),
                    char_end=int(meta["char_end"]),
                    text=text,
                    cosine=1.0 - float(distance),
                    dot=float(e @ q),
                    l2=float(np.linalg.norm(e - q)),
                )
            )
        return hits

    def chunk_vectors(self) -> ChunkVectors:
        """All chunks with their stored embeddings, in document/chunk order."""
        self._require_content()
        got = self.collection.get(include=["embeddings", "metadatas", "documents"])
        pending = {m["doc_hash"] for m in got["metadatas"] if _is_pending(m)}
        order = sorted(
            (i for i, m in enumerate(got["metadatas"]) if m["doc_hash"] not in pending),
            key=lambda i: (got["metadatas"][i]["doc_name"], got["metadatas"][i]["chunk_index"]),
        )
        if not order:
            self._require_content()
        return ChunkVectors(
            ids=[got["ids"][i] for i in order],
            embeddings=np.asarray(got["embeddings"], dtype=np.float32)[order],
            doc_names=[got["metadatas"][i]["doc_name"] for i in order],
            chunk_indices=[int(got["metadatas"][i]["chunk_index"]) for i in order],
            texts=[got["documents"][i] for i in order],
        )

    def embedding_map(
        self,
        query: str | None = None,
        max_points: int = 2000,
        always_include: Sequence[str] = (),
        seed: int = 0,
    ) -> EmbeddingMap:
        """Chunks on a 2-D PCA map, plus where `query` lands on the same map.

        Collections larger than `max_points` are shown as a seeded random sample (charts of more
        points are slow to draw); chunk ids in `always_include` (e.g. the hits) are always kept."""
        if max_points < 1:
            raise InputError(f"max_points must be at least 1, got {max_points}.")
        if query is not None and not query.strip():
            raise InputError("Type a question or phrase to place on the map.")
        vectors = self.chunk_vectors()
        n_total = len(vectors.ids)
        rows = np.arange(n_total)
        if n_total > max_points:
            wanted = set(always_include)
            keep = {i for i, cid in enumerate(vectors.ids) if cid in wanted}
            rest = np.setdiff1d(rows, list(keep))
            extra = np.random.default_rng(seed).choice(
                rest, size=max(0, max_points - len(keep)), replace=False
            )
            rows = np.sort(np.concatenate([np.array(sorted(keep), dtype=int), extra]))
        projection = pca_2d(vectors.embeddings[rows])
        query_coords = None
        if query is not None:
            query_coords = projection.project(self.embedder.encode([query]))[0]
        return EmbeddingMap(
            coords=projection.coords,
            ids=[vectors.ids[i] for i in rows],
            doc_names=[vectors.doc_names[i] for i in rows],
            chunk_indices=[vectors.chunk_indices[i] for i in rows],
            texts=[vectors.texts[i] for i in rows],
            projection=projection,
            query=query,
            query_coords=query_coords,
            n_total=n_total,
        )

    def _require_content(self) -> int:
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
    }


def _is_pending(meta: dict[str, Any] | None) -> bool:
    """True for a chunk of an upload that has not finished (chunks stored before the flag existed
    have no flag and count as complete)."""
    return meta is not None and meta.get("complete") is False


def _chunk_from(meta: dict[str, Any], text: str) -> Chunk:
    return Chunk(
        doc_name=meta["doc_name"],
        doc_hash=meta["doc_hash"],
        index=int(meta["chunk_index"]),
        char_start=int(meta["char_start"]),
        char_end=int(meta["char_end"]),
        text=text,
        n_tokens=int(meta["n_tokens"]),
    )


def merge_chunks(chunks: Sequence[Chunk]) -> str:
    """Join chunks of one document back into its text using their character spans.

    Chunks may overlap (ChunkSettings.overlap_tokens); each character is taken once, from the first
    chunk that covers it. Gaps between chunks (whitespace the splitter dropped) become one space.
    """
    text = ""
    end = 0  # character position in the document that `text` has reached
    for chunk in sorted(chunks, key=lambda c: c.char_start):
        if chunk.char_end <= end:
            continue
        if chunk.char_start > end and text:
            text += " "
        skip = max(0, end - chunk.char_start)
        text += chunk.text[skip:]
        end = chunk.char_end
    return text
