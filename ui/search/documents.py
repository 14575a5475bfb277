"""The "Documents" tab of the search page: every indexed document, how one was cut, and Delete."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.errors import VectorLabError
from core.retrieval.index import DocumentIndex
from ui.search.common import ACTION_MESSAGE, SearchStore, count
from ui.search_state import QUERY


def _delete_document(index: DocumentIndex, content_hash: str, name: str) -> None:
    try:
        removed = index.delete_document(content_hash)
    except VectorLabError as e:
        st.session_state[ACTION_MESSAGE] = ("error", str(e))
        return
    st.session_state[ACTION_MESSAGE] = ("success", f"Deleted '{name}' ({count(removed, 'chunk')}).")
    if index.count() == 0:
        st.session_state[QUERY] = None


def documents_list(store: SearchStore) -> None:
    """The documents table, one document's chunks, and its Delete button."""
    index, documents = store.index, store.documents
    if not documents:
        st.info(f"The collection '{index.name}' is empty; add documents in the first tab.")
        return
    st.dataframe(
        pd.DataFrame(
            {
                "name": [d.name for d in documents],
                "kind": [d.kind for d in documents],
                "chunks": [d.n_chunks for d in documents],
                "characters": [d.n_chars for d in documents],
                "hash": [d.content_hash[:12] for d in documents],
            }
        ),
        hide_index=True,
        width="stretch",
    )
    if st.session_state.get("search_doc", 0) >= len(documents):
        st.session_state["search_doc"] = 0
    picked = documents[
        st.selectbox(
            "Inspect a document",
            range(len(documents)),
            format_func=lambda i: f"{documents[i].name} ({documents[i].content_hash[:8]})",
            key="search_doc",
        )
    ]
    chunks = index.document_chunks(picked.content_hash)
    st.dataframe(
        pd.DataFrame(
            {
                "chunk": [c.index for c in chunks],
                "tokens": [c.n_tokens for c in chunks],
                "chars": [f"{c.char_start}-{c.char_end}" for c in chunks],
                "text": [c.text for c in chunks],
            }
        ),
        hide_index=True,
        width="stretch",
    )
    st.button(
        f"Delete '{picked.name}'",
        key="search_doc_delete",
        icon=":material/delete:",
        on_click=_delete_document,
        args=(index, picked.content_hash, picked.name),
    )
