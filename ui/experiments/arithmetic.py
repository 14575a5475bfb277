"""The "Embedding arithmetic" tab: a − b + c on token embedding rows or on MiniLM sentence vectors,
with an honest verdict on whether the analogy worked."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.errors import VectorLabError
from core.experiments.arithmetic import (
    FIRST,
    MEAN,
    PIECE_MODES,
    candidates_from_text,
    sentence_analogy,
    token_analogy,
    vector_check,
)
from ui import state
from ui.search_state import require_embedder
from ui.widgets import check_metric

RESULT = "vl_arithmetic_result"  # keep_result name: (Analogy, check or None)
TOKENS, SENTENCES = "token embedding rows (the loaded model)", "sentence vectors (MiniLM)"
PIECE_HELP = {MEAN: "the mean of its pieces' rows", FIRST: "its first piece's row"}
CANDIDATES = "queen\nprincess\nking\nwoman\nman\nprince\nempress\ngirl\nmother\nduke"


def _hits_table(hits, label: str) -> pd.DataFrame:
    return pd.DataFrame(
        {"rank": range(1, len(hits) + 1), label: [h.text for h in hits], "cosine": [h.cosine for h in hits]}
    )


def _verdict(expected) -> None:
    if expected is None:
        st.caption("Type the answer you expect to see where it ranks, and whether c alone already finds it.")
        return
    text = expected.verdict()
    if expected.rank == 1 and expected.baseline_rank != 1:
        st.success(text)
    else:
        st.warning(text)
    if expected.note and expected.rank is not None:
        st.info(expected.note)


def render(loaded) -> None:
    st.markdown(
        "The classic analogy: **a − b + c** should land near the word that is to c what a is to b "
        "(king − man + woman → queen?). The result's nearest neighbours by cosine are listed, **a, b and c "
        "themselves excluded** (they are usually nearest). The second list is the honest baseline: the "
        "nearest neighbours of **c alone**. When it already finds the answer, the analogy shows little."
    )
    space = st.radio("Vectors", (TOKENS, SENTENCES), horizontal=True, **state.persist("arith_space", TOKENS))
    c1, c2, c3, c4 = st.columns(4)
    a = c1.text_input("a", **state.persist("arith_a", "king"))
    b = c2.text_input("− b", **state.persist("arith_b", "man"))
    c = c3.text_input("+ c", **state.persist("arith_c", "woman"))
    expected = c4.text_input("expected (optional)", **state.persist("arith_expected", "queen"))
    k = st.slider("Nearest shown", 1, 30, **state.persist("arith_k", 10, allowed=range(1, 31)))
    if space == TOKENS:
        d1, d2 = st.columns(2)
        space_first = d1.checkbox(
            "Leading space (' king', the form inside a sentence)", **state.persist("arith_space_first", True)
        )
        mode = d2.radio(
            "A word that splits into several tokens is",
            PIECE_MODES,
            format_func=PIECE_HELP.get,
            **state.persist("arith_mode", MEAN),
        )
        key = (state.model_key(loaded), TOKENS, a, b, c, expected, k, space_first, mode)
    else:
        candidates_text = st.text_area(
            "Candidates (one a line)", height=160, **state.persist("arith_candidates", CANDIDATES)
        )
        candidates = candidates_from_text(candidates_text)
        key = ("minilm", SENTENCES, a, b, c, expected, k, tuple(candidates))
    try:
        result = state.kept_result(RESULT, key)
        if result is None:
            if space == TOKENS:
                strings, norms, matrix = state.vocabulary(loaded)
                analogy = token_analogy(
                    loaded.tokenizer, strings, norms, matrix, a, b, c, expected, k, space_first, mode
                )
                result = (analogy, vector_check(loaded.model, analogy, mode))
            else:
                with st.spinner("Embedding with MiniLM…"):
                    analogy = sentence_analogy(require_embedder(), a, b, c, candidates, expected, k)
                result = (analogy, None)
            state.keep_result(RESULT, key, result)
    except VectorLabError as e:
        st.error(str(e))
        return
    analogy, check = result
    if analogy.tokens is not None:
        for slot, word in zip(("a", "b", "c"), analogy.tokens, strict=True):
            if word.splits:
                st.info(
                    f"{slot} = '{word.word}' splits into {len(word.token_ids)} tokens "
                    f"({' + '.join(word.pieces)}): {word.how} stands for it."
                )
    _verdict(analogy.expected)
    left, right = st.columns(2)
    label = "token" if analogy.tokens is not None else "candidate"
    left.markdown(f"**Nearest to {analogy.words[0]} − {analogy.words[1]} + {analogy.words[2]}**")
    left.dataframe(_hits_table(analogy.hits, label), hide_index=True)
    right.markdown(f"**Nearest to {analogy.words[2]} alone** (baseline)")
    right.dataframe(_hits_table(analogy.baseline, label), hide_index=True)
    if check is not None:
        st.caption(
            f"Cosine over the whole vocabulary ({len(state.vocabulary(loaded)[0])} rows); "
            f"excluded: {len(analogy.excluded)} token(s) of a, b, c."
        )
        check_metric("a − b + c here vs from the model's own embedding layer", check)
