"""Station 7: vector search and RAG — upload and chunk documents, index them in Chroma, query by cosine
similarity (with dot product and L2 beside it), see the query on the chunk map, answer with the LM."""

from __future__ import annotations

import html
import re

import pandas as pd
import streamlit as st

from core.errors import VectorLabError
from core.retrieval.documents import (
    MAX_UPLOAD_MB,
    SUPPORTED_SUFFIXES,
    ChunkSettings,
    Document,
    FileError,
    chunks_html,
    parse_text,
)
from core.retrieval.rag import (
    PromptText,
    RagSettings,
    answer_from_text,
    answer_html,
    build_rag_prompt,
    render_prompt,
)
from core.retrieval.search import IndexProgress, IndexSettings, hit_context, hit_context_html, rankings_agree
from core.views.embedding_charts import search_map_chart
from ui import search_state, state
from ui.search_state import COLLECTION, DEFAULT_COLLECTION, QUERY, TOP_K, kept
from ui.sidebar import render_sidebar
from ui.widgets import show_chart

MAP_POINTS = 1500  # chunks drawn on the map at most; larger collections are sampled
PREVIEW_ROWS = 50  # chunks shown in the preview (the index gets all of them)
ACTION_MESSAGE = "vl_search_action_message"  # what the last delete did, shown once

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


def count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def md(text: str) -> str:
    """`text` with Markdown's special characters escaped (file names are user input)."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>$~])", r"\\\1", text)


def open_index():
    """The index over the chosen collection; a collection that cannot be used falls back to the default."""
    name = st.session_state[COLLECTION]
    try:
        return search_state.document_index(client, name)
    except (VectorLabError, ValueError) as e:
        st.error(str(e))
        if name == DEFAULT_COLLECTION:
            st.stop()
        st.session_state[COLLECTION] = DEFAULT_COLLECTION
        st.info(f"Using the '{DEFAULT_COLLECTION}' collection instead.")
        return search_state.require_index(client, DEFAULT_COLLECTION)


def use_collection(name: str) -> None:
    try:
        IndexSettings(collection=name)
    except ValueError as e:
        st.session_state[ACTION_MESSAGE] = ("error", str(e))
        return
    if name != st.session_state[COLLECTION]:
        st.session_state[COLLECTION] = name
        st.session_state[QUERY] = None


def choose_collection() -> None:
    use_collection(st.session_state["search_collection"])


def new_collection() -> None:
    name = st.session_state["search_new_collection"].strip()
    st.session_state["search_new_collection"] = ""
    if name:
        use_collection(name)


def reset_search_if_empty(index) -> None:
    if index.count() == 0:
        st.session_state[QUERY] = None


def delete_document(index, content_hash: str, name: str) -> None:
    try:
        removed = index.delete_document(content_hash)
    except VectorLabError as e:
        st.session_state[ACTION_MESSAGE] = ("error", str(e))
        return
    st.session_state[ACTION_MESSAGE] = ("success", f"Deleted '{name}' ({count(removed, 'chunk')}).")
    reset_search_if_empty(index)


def delete_collection(index, name: str) -> None:
    try:
        index.delete_collection(name)
    except VectorLabError as e:
        st.session_state[ACTION_MESSAGE] = ("error", str(e))
        return
    st.session_state["search_collection_confirm"] = False
    st.session_state[ACTION_MESSAGE] = ("success", f"Deleted the collection '{name}' and all its chunks.")
    if name == index.name:
        st.session_state[QUERY] = None


def cancel_indexing() -> None:
    # Pressing Cancel reruns the page, and Streamlit stops the indexing run at its next progress
    # update; the index removes what that run had stored (core.retrieval.search.DocumentIndex.add_documents).
    st.session_state.pop(search_state.INDEXING, None)
    st.session_state[ACTION_MESSAGE] = ("warning", "Indexing cancelled; nothing from this upload was kept.")


def submit_query() -> None:
    st.session_state[QUERY] = st.session_state["search_query_input"]
    st.session_state[TOP_K] = st.session_state["search_k"]


index = open_index()

# ---------------------------------------------------------------- the store
collections = index.collections()
names = sorted({c.name for c in collections} | {index.name})
st.session_state["search_collection"] = index.name
left, right = st.columns([1, 2])
left.selectbox(
    "Collection",
    names,
    key="search_collection",
    on_change=choose_collection,
    help="Both stations use the collection chosen here; start a new one in the Collections tab.",
)
right.markdown(
    f"**Store:** {location.describe()}  \n"
    f"**Collection '{index.name}':** {index.count()} chunks, embedded with {embedder.name} "
    f"({embedder.dimension}-d, cosine space). It stays on disk between restarts."
)
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

documents_info = index.list_documents()
add_tab, docs_tab, collections_tab = st.tabs(
    ["Add documents", f"Documents ({len(documents_info)})", f"Collections ({len(collections)})"]
)

# ---------------------------------------------------------------- add documents
with add_tab:
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
    except ValueError as e:
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
            indexer = search_state.require_index(client, index.name, chunk_settings)
            st.session_state[search_state.INDEXING] = [d.name for d in candidates]
            st.button("Cancel", key="search_index_cancel", icon=":material/cancel:", on_click=cancel_indexing)
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
                state.keep_result(search_state.INDEX_REPORT, (location.key, index.name), report)
            st.rerun()  # the counts and the document list above have changed

    report = state.kept_result(search_state.INDEX_REPORT, (location.key, index.name))
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

# ---------------------------------------------------------------- documents
with docs_tab:
    if not documents_info:
        st.info(f"The collection '{index.name}' is empty; add documents in the first tab.")
    else:
        st.dataframe(
            pd.DataFrame(
                {
                    "name": [d.name for d in documents_info],
                    "kind": [d.kind for d in documents_info],
                    "chunks": [d.n_chunks for d in documents_info],
                    "characters": [d.n_chars for d in documents_info],
                    "hash": [d.content_hash[:12] for d in documents_info],
                }
            ),
            hide_index=True,
            width="stretch",
        )
        if st.session_state.get("search_doc", 0) >= len(documents_info):
            st.session_state["search_doc"] = 0
        picked = documents_info[
            st.selectbox(
                "Inspect a document",
                range(len(documents_info)),
                format_func=lambda i: f"{documents_info[i].name} ({documents_info[i].content_hash[:8]})",
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
            on_click=delete_document,
            args=(index, picked.content_hash, picked.name),
        )

# ---------------------------------------------------------------- collections
with collections_tab:
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
        on_change=new_collection,
        placeholder="e.g. my-notes, then press Enter",
        help="3-512 letters, digits, '.', '_' or '-'. Chunks are only comparable within one collection.",
    )
    if collections:
        c1, c2 = st.columns([2, 1])
        doomed = c1.selectbox(
            "Collection to delete", [c.name for c in collections], key="search_collection_del"
        )
        confirmed = c2.checkbox(
            "Yes, delete it with all its chunks", key="search_collection_confirm", value=False
        )
        st.button(
            f"Delete collection '{doomed}'",
            key="search_collection_delete",
            icon=":material/delete_forever:",
            disabled=not confirmed,
            on_click=delete_collection,
            args=(index, doomed),
        )

# ---------------------------------------------------------------- search
st.subheader("Search")
st.session_state["search_query_input"] = st.session_state[QUERY] or ""
st.session_state["search_k"] = st.session_state[TOP_K]
with st.form("search_form", border=False):
    c1, c2 = st.columns([4, 1])
    c1.text_input("Question or phrase", key="search_query_input", placeholder="How do bees find food?")
    c2.slider("Top k", 1, 20, key="search_k")
    st.form_submit_button(
        "Search", type="primary", key="search_go", icon=":material/search:", on_click=submit_query
    )

query = st.session_state[QUERY]
if query is None:
    st.stop()
try:
    result = index.search(query, int(st.session_state[TOP_K]))
except VectorLabError as e:
    st.error(str(e))
    st.stop()

hits = result.hits
chunk_counts = {d.content_hash: d.n_chunks for d in documents_info}
for hit in hits:
    with st.container(border=True):
        st.markdown(
            f"**[{hit.rank}] {md(hit.doc_name)}** · chunk #{hit.chunk_index} "
            f"(of {chunk_counts.get(hit.doc_hash, '?')}, numbered from 0) · "
            f"characters {hit.char_start}–{hit.char_end} · cosine **{hit.cosine:.3f}**"
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
        "`‖q − c‖² = ‖q‖² + ‖c‖² − 2 q·c = 2 − 2·cos`: the largest cosine is also the largest dot product "
        "and the smallest distance, and the rankings agree. With vectors of different lengths they part: "
        "dot product favours long vectors, L2 favours vectors about as long as the query, and only cosine "
        "looks at direction alone."
    )

st.subheader("The query among the chunks")
embedding_map = index.embedding_map(query, max_points=MAP_POINTS, always_include=[h.id for h in hits])
show_chart(search_map_chart(embedding_map, [h.id for h in hits]), "search_map")
sampled = (
    f" The collection has {embedding_map.n_total} chunks; {len(embedding_map.ids)} are drawn, always "
    "including the hits."
    if embedding_map.n_total > len(embedding_map.ids)
    else ""
)
st.caption(
    "Red diamond: the query; ringed: the retrieved chunks. The map is a 2-D PCA of 384-d vectors, so "
    "the nearest points here are not always the nearest in full." + sampled
)

# ---------------------------------------------------------------- RAG
st.subheader("Answer from the retrieved chunks (RAG)")
loaded = state.require_model()
new_tokens = st.slider("New tokens to generate", 8, 256, key="rag_new_tokens", value=64)
settings = RagSettings(max_new_tokens=int(new_tokens))
try:
    rendered = render_prompt(build_rag_prompt(query, hits, settings), loaded.tokenizer)
except VectorLabError as e:
    st.error(str(e))
    st.stop()
search_key = (state.model_key(loaded), location.key, index.name, query, tuple(h.id for h in hits))
if state.kept_result(search_state.RAG_PROMPT_FOR, search_key) is None or "rag_prompt" not in st.session_state:
    st.session_state["rag_prompt"] = rendered.text  # a new search starts the editable prompt afresh
    state.keep_result(search_state.RAG_PROMPT_FOR, search_key, rendered.text)


def rebuild_prompt(text: str) -> None:
    st.session_state["rag_prompt"] = text


prompt_text = st.text_area(
    "The prompt, exactly as the model reads it — edit it if you like",
    key="rag_prompt",
    height=320,
    help="Built from the question and the hits above, numbered [1], [2], … so the answer can cite them.",
)
n_prompt = len(loaded.tokenizer(prompt_text, add_special_tokens=not rendered.used_chat_template)["input_ids"])
context = loaded.info.max_positions
fits = n_prompt + settings.max_new_tokens <= context
note = " (with the model's chat template)" if rendered.used_chat_template else ""
(st.caption if fits else st.warning)(
    f"{n_prompt} prompt tokens{note} + {settings.max_new_tokens} new tokens; {loaded.info.name} reads at "
    f"most {context}." + ("" if fits else " Lower Top k, the chunk size or the new tokens.")
)
c1, c2, _ = st.columns([1, 1, 3])
answer_clicked = c1.button("Answer", type="primary", key="rag_go", icon=":material/smart_toy:")
answer_key = (*search_key, prompt_text, rendered.used_chat_template, settings)
c2.button("Rebuild the prompt", key="rag_reset", on_click=rebuild_prompt, args=(rendered.text,))
if answer_clicked:
    with st.spinner(f"{loaded.info.name} is answering…"):
        try:
            answer = answer_from_text(
                loaded.model,
                loaded.tokenizer,
                PromptText(prompt_text, rendered.used_chat_template),
                hits,
                settings,
            )
        except VectorLabError as e:
            st.error(str(e))
        else:
            state.keep_result(search_state.RAG_ANSWER, answer_key, answer)

answer = state.kept_result(search_state.RAG_ANSWER, answer_key)
if answer is not None:
    st.markdown("**Answer**")
    with st.container(border=True):
        st.html(answer_html(answer.answer or "(the model generated no text)", len(answer.sources)))
    st.markdown("**Sources the model was given**")
    lines = []
    for number, hit in enumerate(answer.sources, start=1):
        mark = " — cited" if number in answer.cited else ""
        lines.append(
            f'<li><a href="#hit-{hit.rank}">[{number}]</a> {html.escape(hit.doc_name)}, '
            f"chunk #{hit.chunk_index}"
            f" (cosine {hit.cosine:.3f}){mark}</li>"
        )
    st.html("<ol style='list-style: none; padding-left: 0;'>" + "".join(lines) + "</ol>")
    st.caption(
        f"{answer.n_prompt_tokens} prompt tokens, greedy decoding."
        + (
            f" Cited: {', '.join(f'[{c}]' for c in answer.cited)}."
            if answer.cited
            else " The answer cites no source by number; small models often forget to."
        )
    )
