"""Pieces every experiment tab draws: original vs changed side by side, and a sweep that can be cancelled
and continued."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import pandas as pd
import streamlit as st
from streamlit.runtime.scriptrunner_utils.exceptions import ScriptControlException

from core.views.experiment_charts import comparison_chart
from ui import state
from ui.widgets import show_chart

Sweep = TypeVar("Sweep")  # a core sweep result: `complete`, `n_done`


def _side(container, title: str, side, target) -> None:
    container.markdown(f"**{title}**")
    container.dataframe(
        pd.DataFrame(
            {
                "token": [t.piece for t in side.top],
                "id": [t.id for t in side.top],
                "p": [t.prob for t in side.top],
            }
        ),
        hide_index=True,
        column_config={
            "p": st.column_config.ProgressColumn("p", min_value=0.0, max_value=1.0, format="%.4f")
        },
    )
    container.markdown("Greedy continuation:")
    container.code(side.continuation or "(nothing)", language=None, wrap_lines=True)


def show_comparison(comparison, name: str = "comparison") -> None:
    """Original and changed run side by side, with KL, the target token's probability and max |Δlogit|."""
    m1, m2, m3 = st.columns(3)
    m1.metric(
        "KL(original ‖ changed)",
        f"{comparison.kl:.4g} nats",
        help="Σ p·(log p − log q) over the whole vocabulary at the last position: 0 = the same distribution.",
    )
    delta = comparison.changed.target_prob - comparison.original.target_prob
    m2.metric(
        f"p({comparison.target.piece})",
        f"{comparison.changed.target_prob:.4f}",
        delta=f"{delta:+.4f} (was {comparison.original.target_prob:.4f})",
        delta_color="off",
    )
    m3.metric(
        "max |Δlogit|", f"{comparison.max_abs_dlogit:.3g}", help="Largest change of any logit, last position."
    )
    left, right = st.columns(2)
    _side(left, "Original", comparison.original, comparison.target)
    _side(right, f"Changed: {comparison.label}", comparison.changed, comparison.target)
    show_chart(comparison_chart(comparison), name)


def sweep_section(
    name: str,
    key: tuple,
    *,
    label: str,
    button: str,
    button_key: str,
    n_runs: int,
    run: Callable[..., Sweep],
) -> Sweep | None:
    """The "run every cell" button of a sweep, and the sweep kept for `key` (complete or not) to draw.

    `run(on_progress=, should_stop=, resume=)` runs the sweep (`resume`: the stopped one to finish). A
    sweep stopped part-way (Cancel, another widget changed, the tab closed) is kept with its finished
    cells; the page then says how far it got and offers Continue, which runs only the missing cells.
    """
    sweep = state.kept_result(name, key)
    clicked = st.button(button, key=button_key, icon=":material/play_arrow:")
    resume = None
    notice = st.empty()
    if sweep is not None and not sweep.complete:
        with notice.container():
            st.warning(
                f"Stopped after {sweep.n_done} of {n_runs} runs: the blank cells below were not run. "
                "Continue runs only those."
            )
            if st.button("Continue", key=f"{button_key}_continue", icon=":material/play_circle:"):
                resume = None if clicked else sweep
    if clicked or resume is not None:
        sweep = _run(label, name, key, run, resume)
        notice.empty()
    return sweep


def show_progress(bar, label: str, done: int, total: int) -> None:
    """Move the sweep's progress bar: the point where Streamlit stops a run the user interrupted."""
    bar.progress(done / total, text=f"{label}: {done} of {total} runs")


def _run(label: str, name: str, key: tuple, run: Callable[..., Sweep], resume: Sweep | None) -> Sweep:
    box = st.empty()
    with box.container():
        bar = st.progress(0.0, text=f"{label}…")
        st.button("Cancel", key=f"cancel_{label}", icon=":material/stop:")
    # Cancel (or any other widget, or closing the tab) asks Streamlit to stop this run; it raises
    # its StopException / RerunException at the next element update, the progress bar's. That batch is
    # kept: the sweep is told to stop, its finished cells are kept, and the request goes on its way.
    interrupted: list[ScriptControlException] = []

    def on_progress(done: int, total: int) -> None:
        if interrupted:
            return
        try:
            show_progress(bar, label, done, total)
        except ScriptControlException as request:
            interrupted.append(request)

    sweep = run(on_progress=on_progress, should_stop=lambda: bool(interrupted), resume=resume)
    state.keep_result(name, key, sweep)
    if interrupted:
        raise interrupted[0]
    box.empty()
    return sweep
