"""Pieces every experiment tab draws: original vs changed side by side, and a sweep's progress bar."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pandas as pd
import streamlit as st

from core.views.experiment_charts import comparison_chart
from ui.widgets import show_chart


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


@contextmanager
def sweep_progress(label: str) -> Iterator:
    """A progress bar and a Cancel button while a sweep runs; yields the `on_progress(done, total)` callback.

    Cancel reruns the page, which stops the sweep at its next progress report; nothing half-done is kept.
    """
    box = st.empty()
    with box.container():
        bar = st.progress(0.0, text=f"{label}…")
        st.button("Cancel", key=f"cancel_{label}", icon=":material/stop:")

    def on_progress(done: int, total: int) -> None:
        bar.progress(done / total, text=f"{label}: {done} of {total} runs")

    try:
        yield on_progress
    finally:
        box.empty()
