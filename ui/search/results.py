"""The search section of the search page: the query form and the retrieval mode (cosine, BM25 or
both fused), the hits in their documents with both scores and ranks, the same hits under dot product
and L2, the query and one hit as both vectors (ui.search.vectors), and the query on the chunk map."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.errors import VectorLabError
from core.retrieval.fusion import SEARCH_MODES
from core.retrieval.maps import MapCache, embedding_map
from core.retrieval.search import SearchResult, hit_context, rankings_agree
from core.views.search import hit_context_html, search_map_chart
from ui import search_state
from ui.search.common import SearchStore, md
from ui.search.vectors import both_vectors
from ui.search_state import QUERY, TOP_K
from ui.widgets import show_chart

MAP_POINTS = 3000  # chunks drawn on the map at most; larger collections are sampled


@st.cache_resource(show_spinner=False)
def _map_cache() -> MapCache:
    """The sampled chunk maps of every collection, reused while a collection's version is unchanged."""
    return MapCache()


DEFAULT_MODE = "hybrid"  # on the manuals corpus (tests/data/manuals) hybrid finds the passage first
# for 88% of questions at 128-token chunks, dense for 73%; on short paraphrased texts dense does best
# (recall@1 1.00 vs 0.92)
MODE_LABELS = {"dense": "Dense (cosine)", "sparse": "Sparse (BM25)", "hybrid": "Hybrid (RRF of both)"}


def _ranks(hit) -> str:
    def rank(r: int | None) -> str:
        return f"#{r}" if r is not None else "–"

    rrf = f" · RRF **{hit.rrf:.4f}**" if hit.rrf is not None else ""
    ranks = f"ranks: cosine {rank(hit.dense_rank)}, BM25 {rank(hit.sparse_rank)}"
    return f"BM25 **{hit.bm25:.3f}** · {ranks}{rrf}"


def _submit_query() -> None:
    st.session_state[QUERY] = st.session_state["search_query_input"]
    st.session_state[TOP_K] = st.session_state["search_k"]


def search_results(store: SearchStore) -> SearchResult | None:
    """The search form and, once a question was submitted, its results; None when there are none."""
    index = store.index
    st.subheader("Search")
    st.session_state["search_query_input"] = st.session_state[QUERY] or ""
    st.session_state["search_k"] = st.session_state[TOP_K]
    with st.form("search_form", border=False):
        c1, c2 = st.columns([4, 1])
        c1.text_input("Question or phrase", key="search_query_input", placeholder="How do bees find food?")
        c2.slider("Top k", 1, 20, key="search_k")
        st.form_submit_button(
            "Search", type="primary", key="search_go", icon=":material/search:", on_click=_submit_query
        )

    mode = st.radio(
        "Retrieval",
        SEARCH_MODES,
        horizontal=True,
        format_func=MODE_LABELS.get,
        help="Dense: nearest MiniLM vectors by cosine. Sparse: BM25 over the words (exact terms, "
        "identifiers, error codes). Hybrid: both lists merged by reciprocal rank fusion, "
        "score = Σ 1/(60 + rank).",
        **search_state.kept("search_mode", DEFAULT_MODE, allowed=SEARCH_MODES),
    )
    query = st.session_state[QUERY]
    if query is None:
        return None
    try:
        result = index.search(query, int(st.session_state[TOP_K]), mode=mode)
    except VectorLabError as e:
        st.error(str(e))
        return None
    for note in result.notes:
        st.info(note)

    hits = result.hits
    chunk_counts = {d.content_hash: d.n_chunks for d in store.documents}
    for hit in hits:
        with st.container(border=True):
            st.markdown(
                f"**[{hit.rank}] {md(hit.source)}** · chunk #{hit.chunk_index} "
                f"(of {chunk_counts.get(hit.doc_hash, '?')}, numbered from 0) · "
                f"characters {hit.char_start}–{hit.char_end} · cosine **{hit.cosine:.3f}** · {_ranks(hit)}"
            )
            context = hit_context(hit, index.document_chunks(hit.doc_hash))
            st.html(hit_context_html(context, anchor=f"hit-{hit.rank}"))
    st.caption("Highlighted: the retrieved chunk; grey: the text around it in its document.")

    with st.expander("The same hits under dot product and L2 distance"):
        st.dataframe(
            pd.DataFrame(
                {
                    "rank": [h.rank for h in hits],
                    "document": [h.doc_name for h in hits],
                    "chunk": [h.chunk_index for h in hits],
                    "cosine ↓": [round(h.cosine, 4) for h in hits],
                    "dot q·c ↓": [round(h.dot, 4) for h in hits],
                    "L2 ‖q − c‖ ↑": [round(h.l2, 4) for h in hits],
                    "√(2 − 2·cos)": [round(max(0.0, 2 - 2 * h.cosine) ** 0.5, 4) for h in hits],
                }
            ),
            hide_index=True,
            width="stretch",
        )
        q_norm = float((result.query_embedding**2).sum() ** 0.5)
        if rankings_agree(hits):
            st.success(f"All three metrics rank these hits in the same order (‖q‖ = {q_norm:.3f}).")
        else:
            st.warning("The metrics disagree on the order here: the vectors are not all unit length.")
        st.markdown(
            "MiniLM's vectors are normalised to length 1, so `q·c = cos(q, c)` and "
            "`‖q − c‖² = ‖q‖² + ‖c‖² − 2 q·c = 2 − 2·cos`: the largest cosine is also the largest dot "
            "product and the smallest distance, and the rankings agree. With vectors of different lengths "
            "they part: dot product favours long vectors, L2 favours vectors about as long as the query, "
            "and only cosine looks at direction alone."
        )

    both_vectors(store, result)

    st.subheader("The query among the chunks")
    chunk_map = embedding_map(
        index,
        query,
        max_points=MAP_POINTS,
        always_include=[h.id for h in hits],
        cache=_map_cache(),
        query_embedding=result.query_embedding,
    )
    show_chart(search_map_chart(chunk_map, [h.id for h in hits]), "search_map")
    sampled = (
        " A seeded random sample, read once until chunks are added or deleted; the hits are always drawn."
        if chunk_map.sampled
        else ""
    )
    st.caption(
        f"**{chunk_map.describe().capitalize()}.** Red diamond: the query; ringed: the retrieved chunks. "
        "The map is a 2-D PCA of 384-d vectors, so the nearest points here are not always the nearest in "
        "full." + sampled
    )
    return result
