"""The RAG section of the search page: the prompt built from the hits (editable), whether it fits
the model, and the model's answer with its sources linked to the hits above. It runs as a fragment,
so moving its controls reruns only this section, never the search."""

from __future__ import annotations

import html

import pandas as pd
import streamlit as st

from core.errors import VectorLabError
from core.retrieval.attribution import AttributedAnswer, attribute
from core.retrieval.rag import PromptText, RagSettings, answer_from_text, build_rag_prompt, render_prompt
from core.retrieval.search import SearchResult
from core.views.search import answer_html
from ui import search_state, state
from ui.search.common import SearchStore

RAG_ATTRIBUTION = "vl_rag_attribution"  # (answer signature, AttributedAnswer) of the last answer


def _rebuild_prompt(text: str) -> None:
    st.session_state["rag_prompt"] = text


@st.fragment
def rag_answer(store: SearchStore, result: SearchResult) -> None:
    """Build the prompt from `result`'s hits and answer with the loaded model on "Answer"."""
    query, hits = result.query, result.hits
    st.subheader("Answer from the retrieved chunks (RAG)")
    loaded = state.require_model()
    new_tokens = st.slider("New tokens to generate", 8, 256, key="rag_new_tokens", value=64)
    settings = RagSettings(max_new_tokens=int(new_tokens))
    try:
        rendered = render_prompt(build_rag_prompt(query, hits, settings), loaded.tokenizer)
    except VectorLabError as e:
        st.error(str(e))
        return
    hit_ids = tuple(h.id for h in hits)
    search_key = (state.model_key(loaded), store.location.key, store.index.name, query, hit_ids)
    fresh = state.kept_result(search_state.RAG_PROMPT_FOR, search_key) is None
    if fresh or "rag_prompt" not in st.session_state:
        st.session_state["rag_prompt"] = rendered.text  # a new search starts the editable prompt afresh
        state.keep_result(search_state.RAG_PROMPT_FOR, search_key, rendered.text)

    prompt_text = st.text_area(
        "The prompt, exactly as the model reads it — edit it if you like",
        key="rag_prompt",
        height=320,
        help="Built from the question and the hits above, numbered [1], [2], … so the answer can cite them.",
    )
    special = not rendered.used_chat_template  # a chat template already holds the special tokens
    n_prompt = len(loaded.tokenizer(prompt_text, add_special_tokens=special)["input_ids"])
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
    c2.button("Rebuild the prompt", key="rag_reset", on_click=_rebuild_prompt, args=(rendered.text,))
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
                try:
                    attributed = attribute(answer.answer, query, answer.sources, store.embedder)
                except VectorLabError as e:
                    st.error(str(e))
                else:
                    state.keep_result(RAG_ATTRIBUTION, answer_key, attributed)

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
                f'<li><a href="#hit-{hit.rank}">[{number}]</a> {html.escape(hit.source)}, '
                f"chunk #{hit.chunk_index}"
                f" (cosine {hit.cosine:.3f}){mark}</li>"
            )
        st.html("<ol style='list-style: none; padding-left: 0;'>" + "".join(lines) + "</ol>")
        st.caption(
            f"{answer.n_prompt_tokens} prompt tokens; {answer.n_new_tokens} new, stopped at the "
            f"{answer.stopped}. Greedy decoding with repetition penalty {settings.repetition_penalty} and no "
            f"repeated {settings.no_repeat_ngram_size}-token run, so it does not loop."
            + (
                f" Cited: {', '.join(f'[{c}]' for c in answer.cited)}."
                if answer.cited
                else " The answer cites no source by number; small models often forget to."
            )
        )
        attributed = state.kept_result(RAG_ATTRIBUTION, answer_key)
        if attributed is not None:
            _show_attribution(attributed, answer.sources)


def _show_attribution(attributed: AttributedAnswer, sources) -> None:
    """Each answer sentence with the source it is closest to, or "not supported by any source"."""
    st.markdown("**Where each sentence came from**")
    threshold = attributed.settings.support_threshold
    if attributed.sentences:
        rows = []
        for a in attributed.sentences:
            hit = sources[a.source - 1] if a.source is not None else None
            rows.append(
                {
                    "answer sentence": a.sentence,
                    "source": f"[{a.source}] {hit.source}, chunk #{hit.chunk_index}"
                    if hit is not None
                    else "not supported by any source",
                    "cosine": round(a.score, 3),
                    "closest source sentence": a.evidence,
                }
            )
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    if attributed.dropped:
        st.info(
            f"Left out {len(attributed.dropped)} sentence(s) that only restate the question (cosine to the "
            f"question ≥ {attributed.settings.restate_threshold}): "
            + " · ".join(f"“{s}”" for s in attributed.dropped)
        )
    st.caption(
        "Each sentence is matched to the retrieved chunks by MiniLM cosine against each chunk's sentences, "
        f"whether or not the model wrote a [k] marker. Below {threshold} (support_threshold) it is shown as "
        "not supported: sentences on other topics stay below that (99th percentile 0.53), while text "
        "taken from a source scores well above it."
    )
