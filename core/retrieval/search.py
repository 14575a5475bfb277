"""What a search returns and how the page explains it: `Hit`s ranked by cosine, BM25 or both fused,
each carrying its cosine (re-scored under dot product and L2), BM25 score and rank in either list; the
three dense metrics' orders compared, and a hit placed back in its document."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.errors import InputError
from core.retrieval.chunking import Chunk, location_from_metadata, source_label


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk. Chroma ranks by cosine; dot and L2 are the same pair re-scored for teaching;
    BM25 ranks by shared terms; hybrid search fuses both rankings (core.retrieval.fusion)."""

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
    bm25: float | None = None  # BM25 score of the chunk for the query (0 = no shared term)
    dense_rank: int | None = None  # rank in the cosine list; None = not among its candidates
    sparse_rank: int | None = None  # rank in the BM25 list; None = not among its candidates
    rrf: float | None = None  # hybrid only: Σ over both lists of 1 / (RRF k + rank)
    heading_path: tuple[str, ...] = ()  # the headings the chunk sits under, outermost first
    page: int = 0  # PDF: the page the chunk starts on (0: no pages)
    last_page: int = 0  # PDF: the page it ends on

    @property
    def source(self) -> str:
        """Where the chunk comes from, "document › section › p. 3", as hits and citations show it."""
        return source_label(self.doc_name, self.heading_path, self.page, self.last_page)


@dataclass(frozen=True)
class SearchResult:
    query: str
    query_embedding: np.ndarray  # [d]
    hits: list[Hit]
    mode: str = "dense"  # "dense" (cosine), "sparse" (BM25) or "hybrid" (both, fused by RRF)
    candidates: int = 0  # how deep each list was read: ranks beyond this are None
    rrf_k: int = 0  # hybrid only: the k in 1 / (k + rank)
    notes: tuple[str, ...] = field(default=())  # what the page should say (a keyword index rebuilt)


def _hit(
    rank: int, cid: str, text: str, meta: dict[str, Any], e: np.ndarray, q: np.ndarray, cosine: float
) -> Hit:
    """One stored chunk as a Hit: its metadata, and its vector `e` scored against the query `q`."""
    return Hit(
        rank=rank,
        id=cid,
        doc_name=meta["doc_name"],
        doc_hash=meta["doc_hash"],
        chunk_index=int(meta["chunk_index"]),
        char_start=int(meta["char_start"]),
        char_end=int(meta["char_end"]),
        text=text,
        cosine=cosine,
        dot=float(e @ q),
        l2=float(np.linalg.norm(e - q)),
        **location_from_metadata(meta),
    )


def hits_from_query(got: dict[str, Any], q: np.ndarray) -> list[Hit]:
    """Hits from one Chroma query result (documents, metadatas, distances and embeddings included)
    for the query vector `q` [d], each chunk re-scored under dot product and L2."""
    rows = zip(
        got["ids"][0],
        got["documents"][0],
        got["metadatas"][0],
        got["distances"][0],
        got["embeddings"][0],
        strict=True,
    )
    return [
        _hit(rank, cid, text, meta, np.asarray(emb, dtype=np.float64), q, 1.0 - float(distance))
        for rank, (cid, text, meta, distance, emb) in enumerate(rows, start=1)
    ]


def hits_from_get(got: dict[str, Any], q: np.ndarray) -> dict[str, Hit]:
    """Hits (rank 0: placed later) from a Chroma `get` (documents, metadatas and embeddings included),
    by chunk id, each scored against the query vector `q` [d] under cosine, dot and L2."""
    hits = {}
    q_norm = float(np.linalg.norm(q))
    for cid, text, meta, emb in zip(
        got["ids"], got["documents"], got["metadatas"], got["embeddings"], strict=True
    ):
        e = np.asarray(emb, dtype=np.float64)
        norms = float(np.linalg.norm(e)) * q_norm
        hits[cid] = _hit(0, cid, text, meta, e, q, float(e @ q) / norms if norms else 0.0)
    return hits


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
