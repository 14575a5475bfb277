"""Charts of one token's journey: its vectors as compact strips and its residual stream layer by layer."""

from __future__ import annotations

from collections.abc import Sequence

import altair as alt
import numpy as np
import pandas as pd

from core.views.charts import PLOT_HEIGHT, heatmap
from core.views.vega import memoized_chart

STRIP_HEIGHT = 26  # pixels per vector row


@memoized_chart
def vector_strips(vectors: dict[str, np.ndarray], title: str = "", value_title: str = "value") -> alt.Chart:
    """Vectors of the same width as one compact heatmap, one row each (name → [n])."""
    if not vectors:
        raise ValueError("vector_strips needs at least one vector.")
    widths = {len(np.ravel(v)) for v in vectors.values()}
    if len(widths) != 1:
        raise ValueError(f"vector_strips needs vectors of one width, got {sorted(widths)}.")
    matrix = np.stack([np.ravel(v) for v in vectors.values()])
    return heatmap(
        matrix,
        list(vectors),
        None,
        title=title,
        row_title="vector",
        col_title="dimension",
        value_title=value_title,
        height=max(STRIP_HEIGHT * len(vectors), 40),
        show_col_labels=False,
    )


@memoized_chart
def residual_journey(
    layer_names: Sequence[str],
    norms: np.ndarray,
    attn_norms: np.ndarray,
    mlp_norms: np.ndarray,
    cos_prev: np.ndarray,
    title: str = "",
) -> tuple[alt.Chart, alt.Chart]:
    """One token's stream as two charts: ‖x‖ at every depth (line) over the attention and MLP updates
    that each block adds (bars); and the cosine of each depth to the one before.

    norms: [L+1]; attn_norms, mlp_norms, cos_prev: [L] (block ℓ leads from depth ℓ to ℓ+1).
    """
    n_layer = len(attn_norms)
    if len(layer_names) != n_layer + 1 or len(norms) != n_layer + 1:
        raise ValueError("residual_journey needs L+1 depths and L blocks.")
    order = list(layer_names)
    depth = pd.DataFrame({"depth": order, "‖x‖": np.asarray(norms, float)})
    updates = pd.DataFrame(
        {
            "depth": order[1:] * 2,
            "update": ["attention"] * n_layer + ["MLP"] * n_layer,
            "norm": np.concatenate([attn_norms, mlp_norms]).astype(float),
        }
    )
    x = alt.X("depth:N", sort=order, title="depth", axis=alt.Axis(labelAngle=-45, labelLimit=100))
    bars = (
        alt.Chart(updates)
        .mark_bar(opacity=0.7)
        .encode(
            x=x,
            xOffset="update:N",
            y=alt.Y("norm:Q", title="norm"),
            color=alt.Color("update:N", scale=alt.Scale(range=["#f97316", "#8b5cf6"]), title="update"),
            tooltip=["depth", "update", alt.Tooltip("norm:Q", format=".4f")],
        )
    )
    line = (
        alt.Chart(depth)
        .mark_line(point=True, color="#2563eb")
        .encode(x=x, y=alt.Y("‖x‖:Q"), tooltip=["depth", alt.Tooltip("‖x‖:Q", format=".4f")])
    )
    sizes = (bars + line).properties(
        width="container", height=260, title=title or "‖x‖ and each block's updates", autosize=PLOT_HEIGHT
    )
    turns = (
        alt.Chart(pd.DataFrame({"depth": order[1:], "cosine": np.asarray(cos_prev, float)}))
        .mark_line(point=True, color="#059669")
        .encode(
            x=x,
            y=alt.Y("cosine:Q", title="cosine to the previous depth", scale=alt.Scale(zero=False)),
            tooltip=["depth", alt.Tooltip("cosine:Q", format=".4f")],
        )
        .properties(
            width="container",
            height=160,
            title="How much each block turns it (1 = not at all)",
            autosize=PLOT_HEIGHT,
        )
    )
    return sizes, turns
