"""Charts for the "What if?" station: original vs changed next-token probabilities, and the
layer × head / layer × position heatmaps of ablation and patching sweeps."""

from __future__ import annotations

from collections.abc import Sequence

import altair as alt
import numpy as np
import pandas as pd

from core.views.vega import memoized_chart

ORIGINAL = "original"
CHANGED = "changed"
RUN_COLOURS = {ORIGINAL: "#94a3b8", CHANGED: "#2563eb"}


def comparison_frame(comparison) -> pd.DataFrame:
    """One row per (token, run) for the union of both runs' top tokens: token, run, p.

    A token in one run's top list but not the other's gets its probability from the logits of the other
    run, so every bar is a real number.
    """
    import torch

    rows = []
    ids: list[int] = []
    pieces: dict[int, str] = {}
    for entry in (*comparison.original.top, *comparison.changed.top):
        if entry.id not in pieces:
            ids.append(entry.id)
            pieces[entry.id] = entry.piece
    for run, side in ((ORIGINAL, comparison.original), (CHANGED, comparison.changed)):
        probs = torch.softmax(torch.tensor(side.logits, dtype=torch.float64), dim=-1)
        for rank, token in enumerate(ids):
            rows.append(
                {"token": f"{pieces[token]} ({token})", "order": rank, "run": run, "p": float(probs[token])}
            )
    return pd.DataFrame(rows, columns=["token", "order", "run", "p"])


@memoized_chart
def comparison_chart(comparison, title: str = "Next-token probabilities") -> alt.Chart:
    """Grouped bars: each candidate token's probability in the original and the changed run."""
    frame = comparison_frame(comparison)
    order = list(dict.fromkeys(frame.sort_values("order")["token"]))
    return (
        alt.Chart(frame, title=title)
        .mark_bar()
        .encode(
            y=alt.Y("token:N", sort=order, title=None),
            yOffset=alt.YOffset("run:N", sort=[ORIGINAL, CHANGED]),
            x=alt.X("p:Q", title="probability", scale=alt.Scale(domain=[0, 1])),
            color=alt.Color(
                "run:N",
                scale=alt.Scale(domain=list(RUN_COLOURS), range=list(RUN_COLOURS.values())),
                title=None,
            ),
            tooltip=["token", "run", alt.Tooltip("p:Q", format=".4f")],
        )
        .properties(height=alt.Step(9))
    )


def grid_frame(values: np.ndarray, row_labels: Sequence[str], column_labels: Sequence[str]) -> pd.DataFrame:
    """Long table of a [rows, columns] array: row, column, value (NaN cells: not run, kept as null)."""
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (len(row_labels), len(column_labels)):
        raise ValueError(
            f"values {values.shape} do not match {len(row_labels)} × {len(column_labels)} labels"
        )
    rows = [
        {"row": r, "column": c, "value": None if np.isnan(values[i, j]) else float(values[i, j])}
        for i, r in enumerate(row_labels)
        for j, c in enumerate(column_labels)
    ]
    return pd.DataFrame(rows, columns=["row", "column", "value"])


@memoized_chart
def grid_heatmap(
    values: np.ndarray,
    row_labels: Sequence[str],
    column_labels: Sequence[str],
    *,
    row_title: str,
    column_title: str,
    value_title: str,
    title: str = "",
    diverging: bool = False,
) -> alt.Chart:
    """Heatmap of a sweep result, first row at the top. `diverging`: a red–blue scale centred on 0 (for a
    restored fraction that can overshoot or go negative); else a sequential one starting at 0."""
    frame = grid_frame(values, row_labels, column_labels)
    if diverging:
        finite = np.abs(np.asarray(values, dtype=np.float64))
        top = float(np.nanmax(finite)) if np.isfinite(finite).any() else 1.0
        top = max(top, 1.0)
        scale = alt.Scale(scheme="redblue", domain=[-top, top], reverse=True)
    else:
        scale = alt.Scale(scheme="blues", domainMin=0)
    return (
        alt.Chart(frame, title=title)
        .mark_rect()
        .encode(
            x=alt.X("column:N", sort=list(column_labels), title=column_title),
            y=alt.Y("row:N", sort=list(row_labels), title=row_title),
            color=alt.Color("value:Q", scale=scale, title=value_title),
            tooltip=["row", "column", alt.Tooltip("value:Q", format=".4f", title=value_title)],
        )
        .properties(height=alt.Step(14))
    )
