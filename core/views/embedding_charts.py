"""Altair charts for the Embeddings station: similarity heatmap, labelled 2-D scatter coloured by
cluster, and two encoders scoring the same sentence pairs. Pure specs; pages only render them (the
search station's chunk map is in core.views.search)."""

from __future__ import annotations

from collections.abc import Sequence

import altair as alt
import numpy as np
import pandas as pd

from core.errors import InputError
from core.retrieval.embeddings import PairScore
from core.views.vega import memoized_chart


def _short(text: str, width: int = 40) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


@memoized_chart
def similarity_heatmap(
    matrix: np.ndarray, labels: Sequence[str], title: str = "Cosine similarity"
) -> alt.Chart:
    """[N, N] similarity matrix as a heatmap with the value written in each cell."""
    matrix = np.asarray(matrix)
    n = len(labels)
    if matrix.shape != (n, n):
        raise InputError(f"The similarity matrix is {matrix.shape} but there are {n} labels.")
    names = [f"{i + 1}. {_short(label, 30)}" for i, label in enumerate(labels)]
    frame = pd.DataFrame(
        [
            {"row": names[i], "col": names[j], "similarity": float(matrix[i, j])}
            for i in range(n)
            for j in range(n)
        ]
    )
    base = alt.Chart(frame, title=title).encode(
        x=alt.X("col:N", sort=names, title=None, axis=alt.Axis(labelAngle=-40)),
        y=alt.Y("row:N", sort=names, title=None),
    )
    cells = base.mark_rect().encode(
        color=alt.Color("similarity:Q", scale=alt.Scale(scheme="viridis", domain=[-1, 1])),
        tooltip=["row", "col", alt.Tooltip("similarity:Q", format=".3f")],
    )
    text = base.mark_text(fontSize=11).encode(
        text=alt.Text("similarity:Q", format=".2f"),
        color=alt.condition(alt.datum.similarity > 0.5, alt.value("black"), alt.value("white")),
    )
    return (cells + text).properties(width=max(200, 40 * n), height=max(200, 40 * n))


@memoized_chart
def embedding_scatter(
    coords: np.ndarray,
    labels: Sequence[str],
    groups: Sequence[int | str] | None = None,
    group_title: str = "cluster",
    title: str = "Sentences on a 2-D PCA map",
) -> alt.Chart:
    """Points [N, 2] labelled with their text, coloured by `groups` (e.g. k-means cluster ids)."""
    coords = np.asarray(coords)
    if coords.shape != (len(labels), 2):
        raise InputError(f"Expected {len(labels)} points of 2 coordinates, got an array of {coords.shape}.")
    if groups is not None and len(groups) != len(labels):
        raise InputError(f"Got {len(groups)} group ids for {len(labels)} points.")
    frame = pd.DataFrame(
        {
            "x": coords[:, 0],
            "y": coords[:, 1],
            "text": list(labels),
            "label": [_short(t, 32) for t in labels],
            group_title: [str(g) for g in groups] if groups is not None else ["all"] * len(labels),
            # Labels of points in the right half go to their left, so no label runs off the chart.
            "right_half": coords[:, 0] > (coords[:, 0].min() + coords[:, 0].max()) / 2 if len(coords) else [],
        }
    )
    base = alt.Chart(frame, title=title).encode(x=alt.X("x:Q", title="PC 1"), y=alt.Y("y:Q", title="PC 2"))
    points = base.mark_circle(size=90, opacity=0.85).encode(
        color=alt.Color(f"{group_title}:N", title=group_title), tooltip=["text", f"{group_title}:N"]
    )
    names = base.mark_text(
        align=alt.expr("datum.right_half ? 'right' : 'left'"),
        dx=alt.expr("datum.right_half ? -7 : 7"),
        dy=-4,
        fontSize=11,
    ).encode(text="label:N")
    return (points + names).properties(height=420).interactive()


@memoized_chart
def pair_comparison_chart(
    scores: Sequence[PairScore], title: str = "The same pairs scored by each encoder"
) -> alt.Chart:
    """One group of bars per sentence pair, one bar per encoder: cosine similarity of the pair."""
    if not scores:
        raise InputError("There are no sentence pairs to chart.")
    names = [f"{i + 1}. {_short(s.first, 28)} | {_short(s.second, 28)}" for i, s in enumerate(scores)]
    frame = pd.DataFrame(
        [
            {"pair": name, "encoder": encoder, "cosine": value, "first": s.first, "second": s.second}
            for name, s in zip(names, scores, strict=True)
            for encoder, value in s.scores.items()
        ]
    )
    low = min(0.0, float(frame["cosine"].min()))  # cosine can be negative; keep 0 in view
    return (
        alt.Chart(frame, title=title)
        .mark_bar()
        .encode(
            y=alt.Y("pair:N", sort=names, title=None, axis=alt.Axis(labelLimit=420)),
            yOffset=alt.YOffset("encoder:N"),
            x=alt.X("cosine:Q", title="cosine similarity", scale=alt.Scale(domain=[low, 1.0])),
            color=alt.Color("encoder:N", title="encoder", legend=alt.Legend(orient="bottom", labelLimit=400)),
            tooltip=["first", "second", "encoder", alt.Tooltip("cosine:Q", format=".3f")],
        )
    )
