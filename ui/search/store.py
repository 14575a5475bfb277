"""The store section of the search page: which collection is open (with a fall-back to the default
one), what the store holds, messages left by the previous run, and the Collections tab."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.errors import VectorLabError
from core.retrieval.encoders import SentenceEmbedder
from core.retrieval.index import DocumentIndex, IndexSettings
from core.retrieval.store import StoreLocation
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


def _new_collection() -> None:
    name = st.session_state["search_new_collection"].strip()
    st.session_state["search_new_collection"] = ""
    if name:
        _use_collection(name)


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
        placeholder="e.g. my-notes, then press Enter",
        help="3-512 letters, digits, '.', '_' or '-'. Chunks are only comparable within one collection.",
    )
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
