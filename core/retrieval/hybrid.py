"""Searching a DocumentIndex three ways: by cosine (Chroma's HNSW), by BM25 (core.retrieval.sparse),
or both lists fused by reciprocal rank fusion (core.retrieval.fusion)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from core.errors import InputError
from core.retrieval.fusion import CANDIDATES, RRF_K, check_mode, ranked_hits
from core.retrieval.search import Hit, SearchResult, hits_from_get

if TYPE_CHECKING:
    from core.retrieval.index import DocumentIndex


def search_index(
    index: DocumentIndex, query: str, k: int = 5, mode: str = "dense", rrf_k: int = RRF_K
) -> SearchResult:
    """Top-k chunks of `index` for `query` in one mode. Both lists are read `max(k, CANDIDATES)` deep,
    so every hit also carries its cosine (re-scored under dot and L2), its BM25 score and its rank in
    either list; the keyword index is brought in step with the collection first."""
    if not isinstance(query, str) or not query.strip():
        raise InputError("Type a question or phrase to search for.")
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}.")
    check_mode(mode)
    index.require_content()  # before encoding: an empty index needs no model call
    sparse, note = index.sync_sparse()
    vector = index.embedder.encode([query])[0]  # [d]
    depth = max(k, CANDIDATES)
    q = np.asarray(vector, dtype=np.float64)
    bm25 = sparse.scores(query)  # [N], once: both the BM25 list and every hit's score come from it
    scores = dict(zip(sparse.ids, bm25.tolist(), strict=True))
    hits = ranked_hits(
        mode,
        k,
        dense=index.search_vector(vector, depth),
        sparse=sparse.ranked(bm25, depth),
        bm25_of=lambda cid: scores.get(cid, 0.0),
        fetch=lambda ids: hits_by_id(index, ids, q),
        rrf_k=rrf_k,
    )
    if mode == "sparse" and not hits:
        raise InputError(
            f"No chunk in '{index.name}' contains any word of {query!r} (stopwords such as 'the' and "
            "one-letter words are ignored); try dense or hybrid search."
        )
    return SearchResult(
        query=query,
        query_embedding=vector,
        hits=hits,
        mode=mode,
        candidates=depth,
        rrf_k=rrf_k if mode == "hybrid" else 0,
        notes=(note,) if note else (),
    )


def hits_by_id(index: DocumentIndex, ids: list[str], q: np.ndarray) -> dict[str, Hit]:
    """Chunks of `index` by id as hits (rank 0: placed later), scored against the query `q` [d]."""
    if not ids:
        return {}
    got = index.collection.get(ids=list(ids), include=["documents", "metadatas", "embeddings"])
    return hits_from_get(got, q)


def chunk_embedding(index: DocumentIndex, chunk_id: str) -> np.ndarray:
    """One stored chunk vector [d], as Chroma holds it."""
    got = index.collection.get(ids=[chunk_id], include=["embeddings"])
    if not got["ids"]:
        raise InputError(f"Chunk {chunk_id} is no longer in '{index.name}'; search again.")
    return np.asarray(got["embeddings"][0], dtype=np.float32)
