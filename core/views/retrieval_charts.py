"""The chunking lab's chart: recall@1, recall@3 and MRR per search mode, one panel per chunk size."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import altair as alt
import pandas as pd

from core.views.vega import memoized_chart

METRICS = ("recall@1", "recall@3", "MRR")


@memoized_chart
def retrieval_eval_chart(rows: Sequence[dict[str, Any]]) -> alt.FacetChart:
    """Grouped bars from `EvalResult.row()` dicts: x = metric, colour = mode, a column per chunk size."""
    long = pd.DataFrame(
        [
            {"mode": r["mode"], "chunk tokens": r["chunk tokens"], "metric": m, "value": float(r[m])}
            for r in rows
            for m in METRICS
        ]
    )
    return (
        alt.Chart(long)
        .mark_bar()
        .encode(
            x=alt.X("metric:N", sort=list(METRICS), title=None),
            xOffset=alt.XOffset("mode:N", sort=["dense", "sparse", "hybrid"]),
            y=alt.Y("value:Q", scale=alt.Scale(domain=[0, 1]), title="share of questions / MRR"),
            color=alt.Color("mode:N", sort=["dense", "sparse", "hybrid"]),
            tooltip=["mode:N", "chunk tokens:Q", "metric:N", alt.Tooltip("value:Q", format=".3f")],
        )
        .properties(width=180, height=220)
        .facet(column=alt.Column("chunk tokens:O", title="chunk size (tokens)"))
    )
