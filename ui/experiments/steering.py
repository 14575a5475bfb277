"""The "Steer" tab: build a steering vector from two sets of prompts and add it while generating."""

from __future__ import annotations

import streamlit as st

from core.errors import VectorLabError
from core.experiments.steering import (
    IN,
    LAST,
    MAX_ALPHA,
    MEAN,
    OUT,
    REDUCTIONS,
    WHERE,
    prompts_from_text,
    steer,
    steering_check,
    steering_vector,
    token_of,
)
from ui import state
from ui.experiments.common import show_comparison
from ui.widgets import check_metric

VECTOR = "vl_steer_vector"  # keep_result name: the steering vector
RESULT = "vl_steer_result"  # keep_result name: (comparison, identity check, steering check)
ALPHA_RANGE = 8.0  # the slider's reach; core accepts up to MAX_ALPHA
WHERE_HELP = {OUT: "the block's output (blocks.{i}.out)", IN: "the block's input (blocks.{i}.in)"}
REDUCE_HELP = {LAST: "its last token's residual", MEAN: "the mean of its residual over its tokens"}


def render(loaded) -> None:
    info = loaded.info
    text = state.current_text()
    st.markdown(
        "Run each prompt of the two sets alone, take the residual stream at one layer (each prompt's last "
        "token, or its mean over tokens), average each set and subtract: **v = mean(toward) − mean(away)**. "
        "Then run the sidebar text again with **α·v added to the residual at every position** — the "
        "prompt's and every generated token's. α = 0 adds an exact zero and must reproduce the original. "
        f"The prompt is the sidebar text: *{text[:120]}*"
    )
    c1, c2 = st.columns(2)
    toward = c1.text_area("Toward (one prompt a line)", height=90, **state.persist("steer_toward", "I love"))
    away = c2.text_area("Away from (one prompt a line)", height=90, **state.persist("steer_away", "I hate"))
    c3, c4, c5 = st.columns(3)
    n = info.n_layer
    layer = c3.slider("Layer", 0, n - 1, **state.persist("steer_layer", n // 2, allowed=range(n)))
    where = c4.radio("Add at", WHERE, format_func=WHERE_HELP.get, **state.persist("steer_where", OUT))
    reduce = c5.radio(
        "Each prompt gives", REDUCTIONS, format_func=REDUCE_HELP.get, **state.persist("steer_reduce", LAST)
    )
    c6, c7 = st.columns([2, 1])
    alpha = c6.slider(
        "Strength α",
        -ALPHA_RANGE,
        ALPHA_RANGE,
        step=0.25,
        help=f"α·v is added; negative α steers away. Larger |α| (up to {MAX_ALPHA:g}) drowns the residual.",
        **state.persist("steer_alpha", 0.5, allowed=state.Between(-ALPHA_RANGE, ALPHA_RANGE)),
    )
    target_text = c7.text_input(
        "Follow the probability of",
        help="A token, with its leading space (e.g. ' great'); empty: the original run's top token.",
        **state.persist("steer_target", ""),
    )

    model = state.model_key(loaded)
    positive, negative = prompts_from_text(toward), prompts_from_text(away)
    vector_key = (model, positive, negative, layer, where, reduce)
    try:
        target_id, note = token_of(loaded.tokenizer, target_text)
        vector = state.kept_result(VECTOR, vector_key)
        if vector is None:
            with st.spinner("Running the prompts to build the steering vector…"):
                vector = steering_vector(loaded, positive, negative, layer, where, reduce)
            state.keep_result(VECTOR, vector_key, vector)
        result_key = (*vector_key, text, float(alpha), target_id)
        result = state.kept_result(RESULT, result_key)
        if result is None:
            with st.spinner("Generating with and without the steering vector…"):
                comparison = steer(loaded, text, vector, alpha, target_id=target_id)
                identity = steer(loaded, text, vector, 0.0, n_continue=0).unchanged_check
                added = steering_check(loaded, text, vector, alpha)
            result = (comparison, identity, added)
            state.keep_result(RESULT, result_key, result)
    except VectorLabError as e:
        st.error(str(e))
        return
    comparison, identity, added = result
    if note:
        st.info(note)
    st.caption(
        f"‖v‖ = {vector.norm:.3g} at {vector.point}; the residual there has median ‖x‖ = "
        f"{vector.residual_norm:.3g} over the prompts' tokens, so α·‖v‖ = {abs(alpha) * vector.norm:.3g} "
        f"is {abs(alpha) * vector.norm / max(vector.residual_norm, 1e-12):.2f}× a typical residual."
    )
    show_comparison(comparison, "steering")
    left, right = st.columns(2)
    check_metric(
        "Identity check: α = 0", identity, container=left, value=f"max |Δlogit| {identity.error:.2e}"
    )
    check_metric(f"steered − original at {vector.point} vs α·v", added, container=right)
