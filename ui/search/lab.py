"""The "Chunking lab" of the search page: write questions, mark the passage that answers each (pasted,
or taken from a retrieved chunk), and measure recall@1/@3 and MRR of dense, sparse and hybrid search
at 2-3 chunk sizes, each indexed into a temporary in-memory collection (progress bar, Cancel)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.errors import VectorLabError
from core.retrieval.documents import Document
from core.retrieval.evaluation import EvalQuestion, evaluate_chunk_sizes, temporary_client
from core.views.retrieval_charts import retrieval_eval_chart
from ui import state
from ui.search.common import SearchStore
from ui.search_state import kept
from ui.widgets import show_chart

QUESTIONS = "vl_lab_questions"  # the questions table as the user left it (list of dicts)
RESULT = "vl_lab_result"  # keep_result name: the rows of the last finished run
RUNNING = "vl_lab_running"  # set while a run is in progress; Cancel pops it
SIZES = (64, 128, 256)  # chunk sizes on offer (MiniLM tokens)


def _cancel() -> None:
    # Cancel reruns the page; Streamlit stops the run at its next progress update, and the
    # temporary collection is removed (core.retrieval.evaluation.evaluate_chunk_sizes).
    st.session_state.pop(RUNNING, None)


def _passage(text: str) -> str:
    """The first sentence of a chunk (past its heading lines): short enough to fit a smaller chunk."""
    body = " ".join(line for line in text.split("\n") if line.strip() and not line.startswith("#"))
    end = body.find(". ")
    return (body[: end + 1] if 0 < end < 160 else body[:160]).strip()


def chunking_lab(store: SearchStore) -> None:
    """Questions with their answer passages in, recall and MRR per mode and chunk size out."""
    st.subheader("Chunking lab")
    st.markdown(
        "Write a few questions about your documents and, for each, a piece of the passage that answers "
        "it. The lab indexes the documents of this collection again at each chunk size, in a temporary "
        "collection, asks every question in every search mode, and counts a hit as right when its chunk "
        "holds the passage. **recall@k**: the share of questions answered among the first k hits; "
        "**MRR**: the mean of 1/rank of the first right hit (0 when it is not in the top 10)."
    )
    if not store.documents:
        st.info("Index some documents first (Add documents): the lab measures search over them.")
        return
    rows = st.session_state.get(QUESTIONS) or [{"question": "", "answer passage": ""}]
    edited = st.data_editor(
        pd.DataFrame(rows, columns=["question", "answer passage"]),
        num_rows="dynamic",
        width="stretch",
        key="lab_questions_editor",
    )
    st.session_state[QUESTIONS] = edited.fillna("").to_dict("records")

    with st.expander("Take an answer passage from a retrieved chunk"):
        asked = [r["question"] for r in st.session_state[QUESTIONS] if str(r["question"]).strip()]
        if not asked:
            st.caption("Write a question above first.")
        else:
            chosen = st.selectbox(
                "Question", range(len(asked)), format_func=lambda i: asked[i], key="lab_pick_q"
            )
            try:
                hits = store.index.search(asked[chosen], 5).hits
            except VectorLabError as e:
                st.error(str(e))
                hits = []
            for hit in hits:
                passage = _passage(hit.text)
                c1, c2 = st.columns([5, 1])
                c1.markdown(f"**[{hit.rank}] {hit.source}** — {passage}")
                if c2.button("Use", key=f"lab_use_{hit.id}"):
                    table = st.session_state[QUESTIONS]
                    index = next(i for i, r in enumerate(table) if r["question"] == asked[chosen])
                    table[index]["answer passage"] = passage
                    st.session_state.pop("lab_questions_editor", None)
                    st.rerun()

    c1, c2 = st.columns(2)
    sizes = c1.multiselect("Chunk sizes (tokens)", SIZES, **kept("lab_sizes", list(SIZES)))
    overlap = c2.slider("Overlap (tokens)", 0, 32, step=4, **kept("lab_overlap", 16))
    try:
        questions = [
            EvalQuestion(str(r["question"]).strip(), str(r["answer passage"]).strip())
            for r in st.session_state[QUESTIONS]
            if str(r["question"]).strip() or str(r["answer passage"]).strip()
        ]
    except VectorLabError as e:
        st.error(str(e))
        return
    key = (
        store.location.key,
        store.index.name,
        tuple(d.content_hash for d in store.documents),
        tuple((q.question, q.answer) for q in questions),
        tuple(sorted(sizes)),
        int(overlap),
    )
    if st.button("Measure", type="primary", key="lab_go", icon=":material/science:"):
        if not questions:
            st.error("Write at least one question with its answer passage first.")
        elif not sizes:
            st.error("Choose at least one chunk size.")
        else:
            _run(store, questions, sorted(sizes), int(overlap), key)
    rows_kept = state.kept_result(RESULT, key)
    if rows_kept is not None:
        st.dataframe(pd.DataFrame(rows_kept), hide_index=True, width="stretch")
        show_chart(retrieval_eval_chart(rows_kept), "chunking_lab")
    elif state.result_is_stale(RESULT, key):
        st.caption("The questions, documents or sizes changed since the last measurement: press Measure.")


def _run(
    store: SearchStore, questions: list[EvalQuestion], sizes: list[int], overlap: int, key: tuple
) -> None:
    st.session_state[RUNNING] = True
    st.button("Cancel", key="lab_cancel", icon=":material/cancel:", on_click=_cancel)
    bar = st.progress(0.0, text="Reading the documents…")
    documents = [
        Document(d.name, d.kind, store.index.document_text(d.content_hash), d.content_hash)
        for d in store.documents
    ]

    def on_progress(done: int, total: int, text: str) -> None:
        bar.progress(min(done / max(total, 1), 1.0), text=text)

    try:
        results = evaluate_chunk_sizes(
            temporary_client(), store.embedder, documents, questions, sizes, overlap, on_progress=on_progress
        )
    except VectorLabError as e:
        st.error(str(e))
        return
    finally:
        st.session_state.pop(RUNNING, None)
    state.keep_result(RESULT, key, [r.row() for r in results])
