"""Caching and session keys for the Embeddings and Search stations: the sentence encoder, one Chroma
client per store (keyed by where it lives, so two data directories never share one), the document
index, and cached encodings."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import streamlit as st

from core.errors import InputError, VectorLabError
from core.retrieval.chunking import Chunker, ChunkPreview, ChunkSettings, preview_chunks
from core.retrieval.documents import Document, FileError, parse_file
from core.retrieval.embeddings import PairScore, compare_pairs
from core.retrieval.encoders import LMEmbedder, SentenceEmbedder
from core.retrieval.index import DocumentIndex, IndexSettings
from core.retrieval.recovery import IncompleteUpload
from core.retrieval.store import StoreLocation, make_client, store_location
from ui import state

# Plain session keys. Like ui.state's, they outlive the widgets: Streamlit forgets a widget's value
# on pages that do not draw it, so values that must survive a trip to another page live here.
COLLECTION = "vl_search_collection"  # the collection both stations read; shared by pages 6 and 7
QUERY = "vl_search_query"  # the last question submitted on the search page (None = none yet)
TOP_K = "vl_search_top_k"  # how many chunks that search returns
INDEX_REPORT = "vl_search_index_report"  # the IndexReport of the last "Index" click
INDEXING = "vl_search_indexing"  # names being indexed; found set by a later run: that run was stopped
RECOVERY_SHOWN = "vl_search_recovery_shown"  # removed incomplete uploads this session was told about
RAG_PROMPT_FOR = "vl_rag_prompt_for"  # which search the editable prompt was built from
RAG_ANSWER = "vl_rag_answer"  # (prompt signature, RagAnswer) of the last "Answer" click
KEPT_PREFIX = state.PERSIST_PREFIX  # + widget key: the remembered value of a widget drawn with kept()

DEFAULT_COLLECTION = "documents"


def init_search_state() -> None:
    st.session_state.setdefault(COLLECTION, DEFAULT_COLLECTION)
    st.session_state.setdefault(QUERY, None)
    st.session_state.setdefault(TOP_K, 5)


def kept(widget_key: str, default, allowed=None) -> dict:
    """Keyword arguments for a widget whose value survives visits to other pages: `ui.state.persist`."""
    return state.persist(widget_key, default, allowed=allowed)


# --- the sentence encoder -------------------------------------------------------------------------


@st.cache_resource(show_spinner="Loading the sentence encoder (all-MiniLM-L6-v2)…")
def sentence_embedder() -> SentenceEmbedder:
    from core.retrieval.encoders import load_sentence_embedder

    return load_sentence_embedder()


def require_embedder() -> SentenceEmbedder:
    """The bundled MiniLM, or an error message on the page and a stop."""
    try:
        return sentence_embedder()
    except VectorLabError as e:
        st.error(str(e))
        st.stop()


@st.cache_data(show_spinner="Embedding…", max_entries=32)
def encode(texts: tuple[str, ...]) -> np.ndarray:
    """MiniLM vectors [N, 384] for `texts`, computed once per list of texts."""
    return sentence_embedder().encode(list(texts))


@st.cache_resource(show_spinner=False, max_entries=8)
def _lm_pair_scores(
    model_key: str, pairs: tuple[tuple[str, str], ...], _embedder: SentenceEmbedder, _loaded
) -> list[PairScore]:
    lm = LMEmbedder(_loaded.model, _loaded.tokenizer, name=f"{_loaded.info.name}, mean-pooled")
    return compare_pairs({_embedder.name: _embedder, lm.name: lm}, list(pairs))


def pair_scores(pairs: Sequence[tuple[str, str]], embedder: SentenceEmbedder, loaded) -> list[PairScore]:
    """The pairs scored by MiniLM and by the loaded LM's mean-pooled last hidden states (cached)."""
    with st.spinner("Scoring the pairs with both encoders…"):
        return _lm_pair_scores(state.model_key(loaded), tuple(pairs), embedder, loaded)


# --- the vector store -----------------------------------------------------------------------------


@st.cache_resource(show_spinner="Opening the vector store…", max_entries=8)
def _client(key: str, _location: StoreLocation):
    return make_client(_location.path if _location.kind == "embedded" else None)


def require_store() -> tuple[StoreLocation, object]:
    """Where the index lives (from VECTORLAB_DATA_DIR or CHROMA_HOST/CHROMA_PORT) and its client."""
    try:
        location = store_location()
        return location, _client(location.key, location)
    except VectorLabError as e:
        st.error(str(e))
        st.stop()


@st.cache_resource(show_spinner=False, max_entries=8)
def _chunker(max_tokens: int, overlap_tokens: int) -> Chunker:
    return Chunker(sentence_embedder().tokenizer(), ChunkSettings(max_tokens, overlap_tokens))


def chunker(settings: ChunkSettings) -> Chunker:
    """A chunker counting MiniLM tokens, one per chunk size and overlap."""
    return _chunker(settings.max_tokens, settings.overlap_tokens)


def document_index(client, collection: str, chunk: ChunkSettings | None = None) -> DocumentIndex:
    """The index over one collection. Built on every run, not cached: a collection deleted in one
    browser tab must not leave a stale handle in another. Incomplete uploads left by a process that
    died are removed the first time this process opens the collection (see `removed_incomplete`)."""
    chunk = chunk or ChunkSettings()
    settings = IndexSettings(collection=collection, chunk=chunk)
    index = DocumentIndex(client, sentence_embedder(), settings, chunker=chunker(chunk), recover=False)
    removed_incomplete(index)
    return index


@st.cache_resource(show_spinner=False, max_entries=64)
def _removed_incomplete(collection_id: str, _index: DocumentIndex) -> tuple[IncompleteUpload, ...]:
    return tuple(_index.remove_incomplete())


def removed_incomplete(index: DocumentIndex) -> tuple[IncompleteUpload, ...]:
    """Uploads found incomplete, and removed, when this process first opened the collection. Once
    per process, not per run: a run must never remove what another process is still storing."""
    return _removed_incomplete(str(index.collection.id), index)


def require_index(client, collection: str, chunk: ChunkSettings | None = None) -> DocumentIndex:
    try:
        return document_index(client, collection, chunk)
    except VectorLabError as e:
        st.error(str(e))
        st.stop()


@st.cache_data(show_spinner="Reading the upload…", max_entries=128)
def parse_upload(name: str, data: bytes) -> Document | FileError:
    """One uploaded file as text, or why it cannot be used (parsed once per name and content)."""
    try:
        return parse_file(name, data)
    except InputError as e:
        return FileError(name=name, message=str(e))


@st.cache_resource(show_spinner="Cutting the document into chunks…", max_entries=32)
def _preview(
    content_hash: str, kind: str, max_tokens: int, overlap_tokens: int, _document: Document
) -> ChunkPreview:
    return preview_chunks(_document, _chunker(max_tokens, overlap_tokens))


def preview(document: Document, settings: ChunkSettings) -> ChunkPreview:
    """How `document` will be cut (first 50 chunks), once per content, kind and chunk settings."""
    return _preview(
        document.content_hash, document.kind, settings.max_tokens, settings.overlap_tokens, document
    )
