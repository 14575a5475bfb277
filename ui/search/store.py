"""The store section of the search page: which collection is open (with a fall-back to the default
one), what the store holds, messages left by the previous run, and the Collections tab."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.errors import VectorLabError
from core.retrieval.encoders import SentenceEmbedder
from core.retrieval.index import DocumentIndex, IndexSettings
from core.retrieval.store import (
    HNSW_CHANGEABLE,
    HNSW_FIXED,
    HNSW_LIMITS,
    HnswSettings,
    StoreLocation,
    collection_hnsw,
    set_ef_search,
)
from ui import search_state
from ui.search.common import ACTION_MESSAGE, SearchStore, count
from ui.search_state import COLLECTION, DEFAULT_COLLECTION, QUERY


def open_store(embedder: SentenceEmbedder, location: StoreLocation, client) -> SearchStore:
    """Open the chosen collection and show the store's state above the tabs."""
    index = _open_index(client)
    collections = index.collections()
    names = sorted({c.name for c in collections} | {index.name})
    st.session_state["search_collection"] = index.name
    left, right = st.columns([1, 2])
    left.selectbox(
        "Collection",
        names,
        key="search_collection",
        on_change=_choose_collection,
        help="Both stations use the collection chosen here; start a new one in the Collections tab.",
    )
    right.markdown(
        f"**Store:** {location.describe()}  \n"
        f"**Collection '{index.name}':** {index.count()} chunks, embedded with {embedder.name} "
        f"({embedder.dimension}-d, cosine space). It stays on disk between restarts."
    )
    _show_messages(index)
    return SearchStore(location, client, embedder, index, collections, index.list_documents())


def _open_index(client) -> DocumentIndex:
    """The index over the chosen collection; a collection that cannot be used falls back to the default."""
    name = st.session_state[COLLECTION]
    try:
        return search_state.document_index(client, name)
    except VectorLabError as e:
        st.error(str(e))
        if name == DEFAULT_COLLECTION:
            st.stop()
        st.session_state[COLLECTION] = DEFAULT_COLLECTION
        st.info(f"Using the '{DEFAULT_COLLECTION}' collection instead.")
        return search_state.require_index(client, DEFAULT_COLLECTION)


def _show_messages(index: DocumentIndex) -> None:
    """What the last callback did, an indexing run that was cut off, uploads under way elsewhere,
    and incomplete uploads removed when this process opened the collection (each told once)."""
    message = st.session_state.pop(ACTION_MESSAGE, None)
    if message is not None:
        getattr(st, message[0])(message[1])
    interrupted = st.session_state.pop(search_state.INDEXING, None)  # set only by a run that was stopped
    if interrupted and message is None:
        st.warning(
            f"Indexing {', '.join(repr(n) for n in interrupted)} stopped because the page changed while it "
            "ran; nothing from it was kept. Index again and leave the page as it is until it finishes."
        )
    busy = index.uploads_in_progress()
    if busy:
        st.info(
            f"{count(busy, 'document')} being indexed into '{index.name}' by another run of this app right "
            "now (another tab, or a cancelled run removing what it had stored); shown here once finished."
        )
    shown = st.session_state.setdefault(search_state.RECOVERY_SHOWN, set())
    for upload in search_state.removed_incomplete(index):
        if (str(index.collection.id), upload.content_hash) not in shown:
            shown.add((str(index.collection.id), upload.content_hash))
            st.warning(upload.describe())


def _use_collection(name: str) -> None:
    try:
        IndexSettings(collection=name)
    except VectorLabError as e:
        st.session_state[ACTION_MESSAGE] = ("error", str(e))
        return
    if name != st.session_state[COLLECTION]:
        st.session_state[COLLECTION] = name
        st.session_state[QUERY] = None


def _choose_collection() -> None:
    _use_collection(st.session_state["search_collection"])


def _new_collection(store: SearchStore) -> None:
    """Create the named collection with the HNSW settings chosen below the name, and switch to it."""
    name = st.session_state["search_new_collection"].strip()
    st.session_state["search_new_collection"] = ""
    if not name:
        return
    try:
        hnsw = HnswSettings(**{field: int(st.session_state[f"search_hnsw_{field}"]) for field in HNSW_LIMITS})
        index = DocumentIndex(store.client, store.embedder, IndexSettings(collection=name, hnsw=hnsw))
    except VectorLabError as e:
        st.session_state[ACTION_MESSAGE] = ("error", str(e))
        return
    _use_collection(name)
    if index.hnsw_notes:
        st.session_state[ACTION_MESSAGE] = (
            "warning",
            f"'{name}' already existed; ef_search is now {hnsw.ef_search}, but " + " ".join(index.hnsw_notes),
        )


def _change_ef_search(store: SearchStore) -> None:
    ef_search = int(st.session_state["search_hnsw_ef_live"])
    try:
        set_ef_search(store.index.collection, ef_search)
    except VectorLabError as e:
        st.session_state[ACTION_MESSAGE] = ("error", str(e))
        return
    st.session_state[ACTION_MESSAGE] = (
        "success",
        f"ef_search of '{store.index.name}' is now {ef_search}. Chroma reads it when it opens the "
        "collection's index: searches use it after the app (or the Chroma server) is restarted.",
    )


def hnsw_panel(store: SearchStore) -> None:
    """The open collection's HNSW settings (ef_search changeable) and those for new collections."""
    have = collection_hnsw(store.index.collection)
    defaults = HnswSettings()
    st.markdown(f"**Index settings of '{store.index.name}'** (HNSW graph)")
    st.dataframe(
        pd.DataFrame(
            {
                "setting": list(have),
                "value": list(have.values()),
                "new collections get": [getattr(defaults, name) for name in have],
                "changeable": [
                    "yes (after a restart)" if name in HNSW_CHANGEABLE else "no: fixed at creation"
                    for name in have
                ],
            }
        ),
        hide_index=True,
        width="stretch",
    )
    low, high = HNSW_LIMITS["ef_search"]
    c1, c2 = st.columns([2, 1])
    c1.number_input(
        "ef_search for this collection",
        low,
        high,
        value=min(max(have["ef_search"], low), high),
        step=10,
        key="search_hnsw_ef_live",
        help="Candidates kept per query: more finds the exact nearest chunks more often, at more time.",
    )
    c2.button("Apply", key="search_hnsw_apply", on_click=_change_ef_search, args=(store,))
    st.caption(
        "max_neighbors (M) and ef_construction shape the graph when chunks are added, so Chroma fixes them "
        "when the collection is created: to change them, start a new collection and index the documents "
        "again. ef_search can be changed here; Chroma reads it when it opens the index, so it takes effect "
        "after a restart of the app (or of the Chroma server). The defaults were chosen "
        "by measurement (bench/bench_scale.py): recall@10 against exact search on 100,000 MiniLM vectors."
    )


def _delete_collection(index: DocumentIndex, name: str) -> None:
    try:
        index.delete_collection(name)
    except VectorLabError as e:
        st.session_state[ACTION_MESSAGE] = ("error", str(e))
        return
    st.session_state["search_collection_confirm"] = False
    st.session_state[ACTION_MESSAGE] = ("success", f"Deleted the collection '{name}' and all its chunks.")
    if name == index.name:
        st.session_state[QUERY] = None


def collections_panel(store: SearchStore) -> None:
    """The Collections tab: every collection, start a new one, delete one (after a confirmation)."""
    collections = store.collections
    st.dataframe(
        pd.DataFrame(
            {
                "collection": [c.name for c in collections],
                "chunks": [c.n_chunks for c in collections],
                "encoder": [c.embedder for c in collections],
            }
        ),
        hide_index=True,
        width="stretch",
    )
    st.text_input(
        "Start a new collection",
        key="search_new_collection",
        on_change=_new_collection,
        args=(store,),
        placeholder="e.g. my-notes, then press Enter",
        help="3-512 letters, digits, '.', '_' or '-'. Chunks are only comparable within one collection.",
    )
    defaults = HnswSettings()
    fixed = " and ".join(HNSW_FIXED)
    columns = st.columns(len(HNSW_LIMITS))
    for column, (field, (low, high)) in zip(columns, HNSW_LIMITS.items(), strict=True):
        column.number_input(
            f"{field}" + (" (fixed at creation)" if field in HNSW_FIXED else ""),
            low,
            high,
            value=getattr(defaults, field),
            key=f"search_hnsw_{field}",
            help=f"Used when the collection above is created; {fixed} cannot be changed afterwards.",
        )
    hnsw_panel(store)
    if not collections:
        return
    c1, c2 = st.columns([2, 1])
    doomed = c1.selectbox("Collection to delete", [c.name for c in collections], key="search_collection_del")
    confirmed = c2.checkbox(
        "Yes, delete it with all its chunks", key="search_collection_confirm", value=False
    )
    st.button(
        f"Delete collection '{doomed}'",
        key="search_collection_delete",
        icon=":material/delete_forever:",
        disabled=not confirmed,
        on_click=_delete_collection,
        args=(store.index, doomed),
    )
