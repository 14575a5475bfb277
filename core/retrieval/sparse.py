"""BM25 keyword retrieval beside the dense index: chunk texts cut into terms, weighted by `bm25s`
(Lucene's IDF, k1 = 1.5, b = 0.75), kept in one file per collection that is written atomically, and
the per-term sums that explain every score (a BM25 score is a dot product of two sparse vectors)."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import threading
import zipfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import bm25s
import numpy as np
from bm25s.stopwords import STOPWORDS_EN

from core.errors import InputError

log = logging.getLogger(__name__)

BM25_K1 = 1.5  # term-frequency saturation: a term's weight approaches idf·1 as it repeats
BM25_B = 0.75  # length normalisation: 0 = none, 1 = weights scale fully with chunk length / average
BM25_METHOD = (
    "lucene"  # idf = ln(1 + (N − df + 0.5) / (df + 0.5)); tf part = tf / (tf + k1·(1 − b + b·L/avgL))
)
TERM_PATTERN = re.compile(r"(?u)\b\w\w+\b")  # words of 2+ letters/digits/underscores: err_conn_reset
STOPWORDS = frozenset(STOPWORDS_EN)  # Lucene's 33 English stopwords ("the", "is", "of" ...)
FORMAT_VERSION = 2  # bumped when the file layout or what is indexed changes; an older file is rebuilt


def terms(text: str) -> list[str]:
    """The terms BM25 sees in `text`: lower-cased words of two or more characters, stopwords dropped,
    no stemming (so identifiers and error codes match exactly), repeats kept."""
    return [t for t in TERM_PATTERN.findall(text.lower()) if t not in STOPWORDS]


def fingerprint(ids: Sequence[str]) -> str:
    """Names a set of chunk ids (order-free): equal fingerprints mean the same chunks."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


@dataclass(frozen=True)
class TermContribution:
    """One query term's share of a chunk's BM25 score."""

    term: str
    query_count: int  # times the term appears in the query (its weight in the query's sparse vector)
    idf: float  # ln(1 + (N − df + 0.5)/(df + 0.5)); 0 for a term no chunk contains
    weight: float  # the term's BM25 weight in the chunk (0 when the chunk lacks it)
    contribution: float  # query_count · weight

    @property
    def matches(self) -> bool:
        return self.weight != 0


@dataclass(frozen=True)
class SparseExplanation:
    """Why BM25 scored one chunk as it did: score = Σ over query terms of query_count · weight."""

    chunk_id: str
    query_terms: list[TermContribution]  # every distinct query term, in query order
    chunk_weights: dict[str, float]  # the chunk's sparse vector: term -> BM25 weight, largest first
    library_score: float  # what bm25s itself returns for this chunk

    @property
    def term_sum(self) -> float:
        return float(sum(t.contribution for t in self.query_terms))


class SparseIndex:
    """BM25 over a set of chunks. Immutable: `with_chunks` / `without_ids` return a new index, so a
    cached one can be shared by threads. Rows follow `ids`."""

    def __init__(self, ids: Sequence[str], tokens: Sequence[Sequence[str]], collection_id: str = "") -> None:
        if len(ids) != len(tokens):
            raise ValueError(f"{len(ids)} ids but {len(tokens)} token lists.")
        self.ids = list(ids)
        self.tokens = [list(t) for t in tokens]  # each chunk's terms, in text order
        self.collection_id = collection_id  # the Chroma collection these chunks came from
        self.fingerprint = fingerprint(self.ids)
        self._row = {cid: i for i, cid in enumerate(self.ids)}
        self.model = bm25s.BM25(k1=BM25_K1, b=BM25_B, method=BM25_METHOD)
        if self.ids:
            # A chunk with no terms still needs a row: bm25s counts it in N and the average length.
            self.model.index([t or [""] for t in self.tokens], show_progress=False)
        n_docs = len(self.ids)
        self.avg_length = float(np.mean([len(t) or 1 for t in self.tokens])) if n_docs else 0.0

    @classmethod
    def from_texts(cls, ids: Sequence[str], texts: Sequence[str], collection_id: str = "") -> SparseIndex:
        return cls(ids, [terms(t) for t in texts], collection_id)

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, chunk_id: object) -> bool:
        return chunk_id in self._row

    def with_chunks(self, ids: Sequence[str], texts: Sequence[str]) -> SparseIndex:
        """This index plus new chunks (ids already present are replaced)."""
        new = dict(zip(ids, (terms(t) for t in texts), strict=True))
        keep = [(cid, tok) for cid, tok in zip(self.ids, self.tokens, strict=True) if cid not in new]
        rows = keep + list(new.items())
        return SparseIndex([r[0] for r in rows], [r[1] for r in rows], self.collection_id)

    def without_ids(self, ids: Sequence[str]) -> SparseIndex:
        gone = set(ids)
        rows = [(cid, tok) for cid, tok in zip(self.ids, self.tokens, strict=True) if cid not in gone]
        return SparseIndex([r[0] for r in rows], [r[1] for r in rows], self.collection_id)

    # -- scoring --

    def _known(self, query_terms: Sequence[str]) -> list[str]:
        vocab = getattr(self.model, "vocab_dict", {})
        return [t for t in query_terms if t and t in vocab]

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every chunk [N] for `query` (0 where no query term occurs), from bm25s."""
        known = self._known(terms(query))
        if not self.ids or not known:
            return np.zeros(len(self.ids), dtype=np.float32)
        return np.asarray(self.model.get_scores(known), dtype=np.float32)

    def top(self, query: str, n: int) -> list[tuple[str, float]]:
        """Up to `n` (chunk id, score) pairs, best first; chunks sharing no term with the query are
        left out. Ties keep the index's row order."""
        return self.ranked(self.scores(query), n)

    def ranked(self, scores: np.ndarray, n: int) -> list[tuple[str, float]]:
        """`top` from scores already computed by `scores` [N]."""
        order = np.argsort(-scores, kind="stable")
        return [(self.ids[i], float(scores[i])) for i in order[:n] if scores[i] > 0]

    @cached_property
    def document_frequency(self) -> Counter[str]:
        """How many chunks hold each term."""
        return Counter(t for tokens in self.tokens for t in set(tokens))

    def idf(self, term: str) -> float:
        """ln(1 + (N − df + 0.5)/(df + 0.5)), or 0 for a term no chunk contains."""
        df = self.document_frequency.get(term, 0)
        if df == 0:
            return 0.0
        n = len(self.ids)
        return float(np.log(1 + (n - df + 0.5) / (df + 0.5)))

    def weight(self, term: str, chunk_id: str) -> float:
        """The term's BM25 weight in one chunk as bm25s stored it (its score matrix entry), or 0."""
        row = self._require_row(chunk_id)
        column = self.model.vocab_dict.get(term) if self.ids else None
        if column is None:
            return 0.0
        scores = self.model.scores
        start, end = scores["indptr"][column], scores["indptr"][column + 1]
        rows = scores["indices"][start:end]
        found = np.nonzero(rows == row)[0]
        return float(scores["data"][start + found[0]]) if found.size else 0.0

    def chunk_vector(self, chunk_id: str) -> dict[str, float]:
        """The chunk's sparse vector: every distinct term it holds -> BM25 weight, largest first."""
        row = self._require_row(chunk_id)
        weights = {t: self.weight(t, chunk_id) for t in dict.fromkeys(self.tokens[row])}
        return dict(sorted(weights.items(), key=lambda kv: (-kv[1], kv[0])))

    def explain(self, query: str, chunk_id: str) -> SparseExplanation:
        """Each query term's contribution to the chunk's score, and the score bm25s gives it."""
        row = self._require_row(chunk_id)
        counts = Counter(terms(query))
        rows = []
        for term, count in counts.items():
            weight = self.weight(term, chunk_id)
            rows.append(TermContribution(term, count, self.idf(term), weight, count * weight))
        return SparseExplanation(
            chunk_id=chunk_id,
            query_terms=rows,
            chunk_weights=self.chunk_vector(chunk_id),
            library_score=float(self.scores(query)[row]),
        )

    def _require_row(self, chunk_id: str) -> int:
        row = self._row.get(chunk_id)
        if row is None:
            raise InputError(f"Chunk {chunk_id} is not in the keyword index; search again.")
        return row

    # -- files --

    def save(self, path: Path) -> None:
        """Write the index to `path` atomically: a temporary file beside it, then a rename, so a
        reader finds the old file or the new one, never half of one."""
        path.parent.mkdir(parents=True, exist_ok=True)
        vocab = sorted({t for tokens in self.tokens for t in tokens})
        column = {t: i for i, t in enumerate(vocab)}
        flat = np.asarray([column[t] for tokens in self.tokens for t in tokens], dtype=np.int32)
        offsets = np.cumsum([0] + [len(t) for t in self.tokens]).astype(np.int64)
        handle, temp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(handle, "wb") as f:
                np.savez(
                    f,
                    version=np.int64(FORMAT_VERSION),
                    collection_id=np.str_(self.collection_id),
                    fingerprint=np.str_(self.fingerprint),
                    ids=np.asarray(self.ids, dtype=str),
                    vocab=np.asarray(vocab, dtype=str),
                    token_ids=flat,
                    offsets=offsets,
                    params=np.asarray([BM25_K1, BM25_B]),
                )
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path) -> SparseIndex | None:
        """The index saved at `path`, or None when there is none or it cannot be used (written by
        another version, other parameters, or damaged): the caller rebuilds it."""
        try:
            with np.load(path, allow_pickle=False) as f:
                if int(f["version"]) != FORMAT_VERSION or list(f["params"]) != [BM25_K1, BM25_B]:
                    log.info("Keyword index %s was written with other settings; rebuilding it", path)
                    return None
                vocab, flat, offsets = list(f["vocab"]), f["token_ids"], f["offsets"]
                tokens = [
                    [str(vocab[i]) for i in flat[a:b]] for a, b in zip(offsets, offsets[1:], strict=False)
                ]
                index = cls([str(i) for i in f["ids"]], tokens, str(f["collection_id"]))
                stored = str(f["fingerprint"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            log.warning("Keyword index %s cannot be read (%s); rebuilding it", path, e)
            return None
        if index.fingerprint != stored:
            log.warning("Keyword index %s does not match its own fingerprint; rebuilding it", path)
            return None
        return index


def sparse_file(directory: Path, collection: str) -> Path:
    """Where one collection's keyword index lives."""
    return directory / f"{collection}.bm25.npz"


_LOADED: dict[str, tuple[tuple[int, int], SparseIndex]] = {}  # path -> (file mtime_ns, size), index
_LOADED_LOCK = threading.Lock()


def load_cached(path: Path) -> SparseIndex | None:
    """`SparseIndex.load`, read once per process and again whenever the file changes."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    signature = (stat.st_mtime_ns, stat.st_size)
    with _LOADED_LOCK:
        cached = _LOADED.get(str(path))
    if cached is not None and cached[0] == signature:
        return cached[1]
    index = SparseIndex.load(path)
    if index is not None:
        with _LOADED_LOCK:
            _LOADED[str(path)] = (signature, index)
    return index


def save_cached(index: SparseIndex, path: Path) -> None:
    index.save(path)
    stat = path.stat()
    with _LOADED_LOCK:
        _LOADED[str(path)] = ((stat.st_mtime_ns, stat.st_size), index)


def forget(path: Path) -> None:
    """Delete a collection's keyword index (its collection was deleted)."""
    with _LOADED_LOCK:
        _LOADED.pop(str(path), None)
    path.unlink(missing_ok=True)
