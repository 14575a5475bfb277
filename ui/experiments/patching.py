"""The "Patch activations" tab: copy one vector from a clean run into a corrupted one, cell by cell."""

from __future__ import annotations

import streamlit as st

from core.errors import VectorLabError
from core.experiments.compare import compare
from core.experiments.patching import SITES, patch, patch_from, patch_sweep, prepare
from core.views.experiment_charts import grid_heatmap
from ui import state
from ui.experiments.common import show_comparison, sweep_section
from ui.widgets import check_metric, show_chart

SWEEP = "vl_patching_sweep"  # keep_result name of the last patching sweep
SETUP = "vl_patching_setup"  # keep_result name of the prepared clean/corrupted pair
COMPARISON = "vl_patching_comparison"  # keep_result name of the last single-cell comparison
DEFAULT_CLEAN = "The capital of France is"
DEFAULT_CORRUPTED = "The capital of Italy is"
DEFAULT_ANSWER = "top-1 of its own run"


def render(loaded) -> None:
    info = loaded.info
    st.markdown(
        "Run a **clean** prompt and a **corrupted** one that differ in a word, with the same number of "
        "tokens. Then copy one vector of the clean run into the corrupted run — at one layer and one "
        "position — and measure how much of the clean answer comes back: "
        "restored = (d_patched − d_corrupted) / (d_clean − d_corrupted), where d = logit[clean answer] − "
        "logit[corrupted answer] at the last position. 1: fully restored; 0: no effect."
    )
    c1, c2 = st.columns(2)
    clean = c1.text_input("Clean prompt", **state.persist("patch_clean", DEFAULT_CLEAN))
    corrupted = c2.text_input("Corrupted prompt", **state.persist("patch_corrupted", DEFAULT_CORRUPTED))
    c3, c4, c5 = st.columns(3)
    site = c3.selectbox(
        "Vector to copy",
        list(SITES),
        format_func=lambda s: SITES[s][2],
        **state.persist("patch_site", "resid_in", allowed=list(SITES)),
    )
    clean_answer = c4.text_input(
        "Clean answer token id", help=f"Empty: the {DEFAULT_ANSWER}.", **state.persist("patch_clean_id", "")
    )
    corrupted_answer = c5.text_input(
        "Corrupted answer token id",
        help=f"Empty: the {DEFAULT_ANSWER}.",
        **state.persist("patch_corrupt_id", ""),
    )
    try:
        answers = tuple(_token_id(v) for v in (clean_answer, corrupted_answer))
        setup_key = (state.model_key(loaded), clean, corrupted, site, answers)
        setup = state.kept_result(SETUP, setup_key)
        if setup is None:
            setup = prepare(
                loaded, clean, corrupted, site, clean_answer=answers[0], corrupted_answer=answers[1]
            )
            state.keep_result(SETUP, setup_key, setup)
    except VectorLabError as e:
        st.warning(str(e))  # a choice to make (other prompts or answers), shown where they are typed
        return
    st.markdown(
        f"Clean answer **{setup.clean_answer_piece}** (id {setup.clean_answer}), corrupted answer "
        f"**{setup.corrupted_answer_piece}** (id {setup.corrupted_answer}): "
        f"d_clean = {setup.clean_diff:.3f}, d_corrupted = {setup.corrupted_diff:.3f}."
    )

    T = len(setup.clean_ids)
    columns = [
        f"{p}: {a}" + ("" if a == b else f" / {b}")
        for p, (a, b) in enumerate(zip(setup.clean_pieces, setup.corrupted_pieces, strict=True))
    ]
    st.subheader("One patch")
    c6, c7 = st.columns(2)
    layer = c6.selectbox(
        "Layer", range(info.n_layer), **state.persist("patch_layer", 0, allowed=range(info.n_layer))
    )
    position = c7.selectbox(
        "Position",
        range(T),
        format_func=lambda p: columns[p],
        **state.persist("patch_pos", T - 1, allowed=range(T)),
    )
    key = (setup_key, layer, position)
    shown = state.kept_result(COMPARISON, key)
    try:
        if shown is None:
            with st.spinner("Running the corrupted prompt with the patch…"):
                result = compare(
                    loaded, corrupted, patch(loaded, setup, layer, [position]), target_id=setup.clean_answer
                )
                same = patch_from(loaded, corrupted, corrupted, site, layer, [position])
                identity = compare(loaded, corrupted, same, n_continue=0).unchanged_check
            shown = (result, identity)
            state.keep_result(COMPARISON, key, shown)
    except VectorLabError as e:
        st.error(str(e))
        return
    result, identity = shown
    d = float(result.changed.logits[setup.clean_answer]) - float(
        result.changed.logits[setup.corrupted_answer]
    )
    st.metric(
        "Restored", f"{setup.restored(d):.3f}", help="(d_patched − d_corrupted) / (d_clean − d_corrupted)"
    )
    show_comparison(result, "patch_comparison")
    check_metric(
        "Identity check: patch the corrupted prompt from itself",
        identity,
        value=f"max |Δlogit| {identity.error:.2e}",
    )

    st.subheader("Every layer × every position")
    st.markdown(
        f"{info.n_layer} × {T} = {info.n_layer * T} patched runs, one patch per batch row. Where the answer "
        "lives shows as the cells that restore it."
    )
    try:
        sweep = sweep_section(
            SWEEP,
            setup_key,
            label="Patching",
            button="Patch every cell",
            button_key="patch_sweep_run",
            n_runs=info.n_layer * T,
            run=lambda **kw: patch_sweep(loaded, setup, **kw),
        )
    except VectorLabError as e:
        st.error(str(e))
        return
    if sweep is None:
        return
    show_chart(
        grid_heatmap(
            sweep.restored,
            [f"layer {i}" for i in range(info.n_layer)],
            columns,
            row_title="layer",
            column_title="position: clean / corrupted token",
            value_title="restored",
            title=f"Fraction restored by patching {SITES[site][2]}",
            diverging=True,
        ),
        "patching_sweep",
    )


def _token_id(value: str) -> int | None:
    value = (value or "").strip()
    if not value:
        return None
    if not value.isdigit():
        from core.errors import InputError

        raise InputError(
            f"A token id is a whole number (0 or more), not {value!r}. Leave it empty for the top-1."
        )
    return int(value)
