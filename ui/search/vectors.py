"""The "both vectors" section of the search page: for the query and one chosen hit, the sparse pair
(weighted terms, shared ones highlighted, each term's share of the BM25 score) and the dense pair (two
strips of 384 numbers and their products), with why each list ranked the hit where it did, every sum
checked against the library's own score."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from core.errors import VectorLabError
from core.retrieval.fusion import RRF_K
from core.retrieval.hybrid import chunk_embedding
from core.retrieval.search import Hit, SearchResult
from core.retrieval.sparse import BM25_B, BM25_K1
from core.tolerance import check_close, check_within, float64_tolerance
from core.views.vectors import dense_strip_chart, sparse_terms_html
from ui.search.common import SearchStore, md
from ui.widgets import check_metric, show_chart


def _rank_text(rank: int | None, depth: int, score: str) -> str:
    if rank is None:
        return f"{score}: not among the top {depth} of this list"
    return f"{score}: rank **{rank}** of this list"


def both_vectors(store: SearchStore, result: SearchResult) -> None:
    """Pick a hit; show its sparse and dense vectors beside the query's, and why each list ranked it."""
    st.subheader("The query and a hit as vectors")
    hits = {h.rank: h for h in result.hits}
    rank = st.selectbox(
        "Hit to compare with the query",
        list(hits),
        format_func=lambda r: f"[{r}] {hits[r].doc_name} · chunk #{hits[r].chunk_index}",
        key="search_vector_hit",
    )
    hit = hits[rank]
    try:
        keywords, _ = store.index.sync_sparse()
        why = keywords.explain(result.query, hit.id)
        chunk = chunk_embedding(store.index, hit.id)
    except VectorLabError as e:
        st.error(str(e))
        return
    sparse_col, dense_col = st.columns(2)
    with sparse_col:
        _sparse(why, hit, result)
    with dense_col:
        _dense(result.query_embedding, chunk, hit, result)
    if hit.rrf is not None:
        _fusion(hit, result)


def _sparse(why, hit: Hit, result: SearchResult) -> None:
    st.markdown("**Sparse: BM25 over words**")
    shared = {t.term for t in why.query_terms if t.matches}
    query_weights = {t.term: float(t.query_count) for t in why.query_terms}
    st.caption("Query: each term once per occurrence (stopwords and one-letter words dropped).")
    st.html(sparse_terms_html(query_weights, shared))
    n_terms = len(why.chunk_weights)
    st.caption(f"Chunk: term → BM25 weight, {n_terms} distinct terms; shared terms highlighted.")
    st.html(sparse_terms_html(why.chunk_weights, shared))
    st.dataframe(
        pd.DataFrame(
            {
                "term": [t.term for t in why.query_terms],
                "× in query": [t.query_count for t in why.query_terms],
                "idf": [round(t.idf, 4) for t in why.query_terms],
                "weight in chunk": [round(t.weight, 4) for t in why.query_terms],
                "contribution": [round(t.contribution, 4) for t in why.query_terms],
            }
        ),
        hide_index=True,
        width="stretch",
    )
    st.markdown(
        f"weight(t, chunk) = idf(t) · tf / (tf + k1·(1 − b + b·|chunk| / avg|chunk|)), k1 = {BM25_K1}, "
        f"b = {BM25_B}; idf(t) = ln(1 + (N − df + 0.5) / (df + 0.5)). **Score = Σ over query terms of "
        f"count · weight = {why.term_sum:.4f}**: a dot product of the two sparse vectors."
    )
    n_terms = max(1, sum(t.query_count for t in why.query_terms))
    check = check_close(why.term_sum, why.library_score, reduction_length=3 * n_terms)
    check_metric("Σ per-term vs bm25s's score", check, value=f"{why.library_score:.4f}")
    st.markdown(_rank_text(hit.sparse_rank, result.candidates, f"BM25 {hit.bm25:.3f}"))


def _dense(query: np.ndarray, chunk: np.ndarray, hit: Hit, result: SearchResult) -> None:
    st.markdown("**Dense: MiniLM's 384 numbers**")
    q = np.asarray(query, dtype=np.float64)
    c = np.asarray(chunk, dtype=np.float64)
    norms = float(np.linalg.norm(q) * np.linalg.norm(c))
    cosine = float(q @ c) / norms
    show_chart(dense_strip_chart(q, c, width=360), f"vectors_{hit.rank}")
    st.markdown(
        f"cos(q, c) = Σ q_i·c_i / (‖q‖ ‖c‖) = {float(q @ c):.4f} / ({np.linalg.norm(q):.3f} · "
        f"{np.linalg.norm(c):.3f}) = **{cosine:.4f}**"
    )
    # Chroma computes 1 − cosine distance in float32 over d products of numbers up to ‖q‖‖c‖.
    check = check_close(cosine, hit.cosine, reduction_length=q.size, reference=norms)
    check_metric("Σ q_i·c_i / (‖q‖‖c‖) vs Chroma's cosine", check, value=f"{hit.cosine:.4f}")
    st.markdown(_rank_text(hit.dense_rank, result.candidates, f"cosine {hit.cosine:.3f}"))


def _fusion(hit: Hit, result: SearchResult) -> None:
    k = result.rrf_k or RRF_K
    parts = [f"1/({k} + {r})" for r in (hit.dense_rank, hit.sparse_rank) if r is not None]
    ours = sum(1.0 / (k + r) for r in (hit.dense_rank, hit.sparse_rank) if r is not None)
    st.markdown(
        f"**Hybrid rank {hit.rank}** of {md(hit.doc_name)}: reciprocal rank fusion adds 1/(k + rank) from "
        f"each list that holds the hit (k = {k}): {' + '.join(parts)} = **{ours:.5f}**. Scores on "
        "different scales (cosine, BM25) are never compared, only ranks."
    )
    check = check_within(ours, hit.rrf, float64_tolerance(ours, 2))
    check_metric("Σ 1/(k + rank) vs the fused score", check, value=f"{hit.rrf:.5f}")
