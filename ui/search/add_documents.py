"""The "Add documents" tab of the search page: upload files or paste text, choose the chunk size
with a live preview of the cuts, and index with the time left and Cancel."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.errors import VectorLabError
from core.retrieval.chunking import ChunkSettings
from core.retrieval.documents import SUPPORTED_SUFFIXES, Document, FileError, parse_text
from core.retrieval.limits import MAX_UPLOAD_MB
from core.retrieval.uploads import IndexProgress
from core.views.search import chunks_html
from ui import search_state, state
from ui.search.common import ACTION_MESSAGE, SearchStore, count
from ui.search_state import kept

PREVIEW_ROWS = 50  # chunks shown in the preview (the index gets all of them)


def _cancel_indexing() -> None:
    # Pressing Cancel reruns the page, and Streamlit stops the indexing run at its next progress
    # update; the index removes what that run had stored (core.retrieval.index.DocumentIndex.add_documents).
    st.session_state.pop(search_state.INDEXING, None)
    st.session_state[ACTION_MESSAGE] = ("warning", "Indexing cancelled; nothing from this upload was kept.")


def add_documents(store: SearchStore) -> None:
    """Read the uploads and the pasted text, preview the chunks, index on "Index"."""
    index = store.index
    left, right = st.columns(2)
    # No `type=`: Streamlit would then refuse some file names itself (a NUL byte), with an exception
    # that blanks the page; every upload's name and type are checked by core.retrieval.documents instead.
    uploads = left.file_uploader(
        "Upload files",
        accept_multiple_files=True,
        key="search_files",
        max_upload_size=MAX_UPLOAD_MB,
        help=f"{', '.join(SUPPORTED_SUFFIXES)}. Several at once; each is checked on its own, and a bad "
        "file never stops the others.",
    )
    pasted = right.text_area(
        "…or paste text", height=140, max_chars=200_000, key="search_paste", placeholder="Paste any text"
    )
    pasted_name = right.text_input(
        "Name for the pasted text (optional)", key="search_paste_name", placeholder="e.g. notes.txt"
    )
    c1, c2 = st.columns(2)
    max_tokens = c1.slider(
        "Chunk size (MiniLM tokens)",
        32,
        256,
        step=16,
        help="MiniLM reads at most 256 tokens; smaller chunks give sharper hits but less context each.",
        **kept("search_chunk_tokens", 128),
    )
    overlap = c2.slider(
        "Overlap (tokens)",
        0,
        64,
        step=4,
        help="Text a chunk repeats from the previous one, so a sentence cut at a boundary is still found.",
        **kept("search_overlap", 16),
    )

    candidates: list[Document] = []
    bad_files: list[FileError] = []
    for upload in uploads or []:
        parsed = search_state.parse_upload(upload.name, upload.getvalue())
        (bad_files if isinstance(parsed, FileError) else candidates).append(parsed)
    paste_error = None
    if pasted.strip():
        try:
            candidates.append(parse_text(pasted, pasted_name.strip() or None))
        except VectorLabError as e:
            paste_error = str(e)
    for bad in bad_files:
        st.error(bad.message)
    if paste_error:
        st.error(paste_error)

    try:
        chunk_settings = ChunkSettings(max_tokens=int(max_tokens), overlap_tokens=int(overlap))
    except VectorLabError as e:
        st.error(str(e))
        chunk_settings = None

    if candidates and chunk_settings is not None:
        st.markdown("**Preview: where the chunks will be cut**")
        chosen = 0
        if st.session_state.get("search_preview_doc", 0) >= len(candidates):  # fewer files than before
            st.session_state["search_preview_doc"] = 0
        if len(candidates) > 1:
            chosen = st.selectbox(
                "Document",
                range(len(candidates)),
                format_func=lambda i: candidates[i].name,
                key="search_preview_doc",
            )
        preview = search_state.preview(candidates[min(chosen, len(candidates) - 1)], chunk_settings)
        c1, c2, c3 = st.columns(3)
        c1.metric("Chunks", preview.n_chunks)
        c2.metric("Tokens in all chunks", preview.total_tokens)
        c3.metric("Largest chunk", f"{preview.max_chunk_tokens} of {chunk_settings.max_tokens} tokens")
        document = candidates[min(chosen, len(candidates) - 1)]
        with st.container(height=320):
            st.html(chunks_html(document.text, preview.chunks))
        st.caption(
            "Each shade is one chunk, its badge the chunk number and token count (with MiniLM's [CLS] and "
            "[SEP]); yellow text belongs to two chunks (the overlap)."
            + (f" Only the first {PREVIEW_ROWS} chunks are shown." if preview.n_chunks > PREVIEW_ROWS else "")
        )
        with st.expander("The same chunks as a table"):
            st.dataframe(pd.DataFrame(preview.rows()), hide_index=True, width="stretch")

    if st.button(
        "Index", type="primary", key="search_index_go", disabled=chunk_settings is None, icon=":material/add:"
    ):
        if not candidates and not bad_files and paste_error is None:
            st.error(
                "Nothing to index yet: upload files or paste text first."
                if not pasted
                else "The pasted text is empty; paste or type something first."
            )
        elif not candidates:
            st.error("None of the uploads can be indexed; see the messages above.")
        else:
            indexer = search_state.require_index(store.client, index.name, chunk_settings)
            st.session_state[search_state.INDEXING] = [d.name for d in candidates]
            st.button(
                "Cancel", key="search_index_cancel", icon=":material/cancel:", on_click=_cancel_indexing
            )
            bar = st.progress(0.0, text="Cutting the documents into chunks…")
            st.caption(
                "The documents appear once every chunk is stored. Changing anything on the page stops "
                "indexing, like Cancel; nothing half-indexed is ever kept."
            )

            def on_progress(progress: IndexProgress) -> None:
                bar.progress(progress.fraction, text=progress.describe())

            # A stopped run (Cancel, any other widget, a closed tab) raises Streamlit's StopException
            # out of `bar.progress`; add_documents removes its chunks and lets it through.
            try:
                report = indexer.add_documents(candidates, on_progress)
            except VectorLabError as e:
                st.session_state.pop(search_state.INDEXING, None)
                st.session_state[ACTION_MESSAGE] = ("error", str(e))
            else:
                st.session_state.pop(search_state.INDEXING, None)
                state.keep_result(search_state.INDEX_REPORT, (store.location.key, index.name), report)
            st.rerun()  # the counts and the document list above have changed

    report = state.kept_result(search_state.INDEX_REPORT, (store.location.key, index.name))
    if report is not None:
        if report.added:
            listing = ", ".join(f"'{d.name}' ({count(d.n_chunks, 'chunk')})" for d in report.added)
            total = f"{count(len(report.added), 'document')}, {count(report.n_chunks, 'chunk')}"
            st.success(f"Indexed {total}: {listing}.")
        for dup in report.duplicates:
            same = "" if dup.existing_name == dup.name else f" as '{dup.existing_name}'"
            st.info(f"'{dup.name}' is already indexed{same}; skipped.")
        for name in report.in_progress:
            st.info(
                f"'{name}' is being indexed by another run right now (another tab, or a cancelled run "
                "still removing its chunks); skipped. Index it again once that has finished."
            )
