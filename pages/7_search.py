"""Station 7: vector search and RAG — upload and chunk documents, index them in Chroma, query by cosine
similarity (with dot product and L2 beside it), see the query on the chunk map, answer with the LM.
Each section lives in ui.search; this page calls them in order."""

from __future__ import annotations

import streamlit as st

from ui import search_state
from ui.search.add_documents import add_documents
from ui.search.documents import documents_list
from ui.search.lab import chunking_lab
from ui.search.rag import rag_answer
from ui.search.results import search_results
from ui.search.store import collections_panel, open_store
from ui.sidebar import render_sidebar

st.title("7 · Vector search & RAG")
st.markdown(
    "**What happens.** Documents are cut into chunks of a few hundred tokens; MiniLM turns each chunk "
    "into a unit vector that Chroma stores. A question becomes a vector the same way, and the chunks "
    "with the highest `cos(q, c) = q·c / (‖q‖ ‖c‖)` come back. **Why it matters.** This is how a "
    "language model gets to read your documents: retrieval-augmented generation (RAG) pastes the "
    "best chunks into the prompt, and the model answers from them and cites them."
)

render_sidebar()
search_state.init_search_state()
embedder = search_state.require_embedder()
location, client = search_state.require_store()

store = open_store(embedder, location, client)
add_tab, docs_tab, collections_tab, lab_tab = st.tabs(
    [
        "Add documents",
        f"Documents ({len(store.documents)})",
        f"Collections ({len(store.collections)})",
        "Chunking lab",
    ]
)
with add_tab:
    add_documents(store)
with docs_tab:
    documents_list(store)
with collections_tab:
    collections_panel(store)
with lab_tab:
    chunking_lab(store)

result = search_results(store)
if result is not None:
    rag_answer(store, result)
