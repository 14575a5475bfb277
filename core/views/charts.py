"""Altair chart builders shared by the pages: heatmaps, bars, labelled maps. Specs are plain data."""

from __future__ import annotations

from collections.abc import Sequence

import altair as alt
import numpy as np
import pandas as pd

from core.views.vega import memoized_chart

# Charts are built from at most this many cells; callers window larger matrices first.
MAX_CELLS = 60_000
# A chart's `height` is its plot area's: only the width is fitted to the container. Without an explicit
# autosize Streamlit fits the whole chart (title, axes, legend) into `height`, which squashes a short
# chart's plot to a few pixels or to nothing.
PLOT_HEIGHT = alt.AutoSizeParams(type="fit-x", contains="padding")


def _labels(labels: Sequence[str] | None, n: int) -> list[str]:
    # Repeated labels (the same token twice) get their position as a prefix so each stays its own
    # axis category; unique labels are shown as they are.
    if labels is None:
        return [str(i) for i in range(n)]
    labels = [str(label) for label in labels]
    if len(set(labels)) == len(labels):
        return labels
    return [f"{i}:{label}" for i, label in enumerate(labels)]


@memoized_chart
def heatmap(
    matrix: np.ndarray,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    title: str = "",
    row_title: str = "row",
    col_title: str = "column",
    value_title: str = "value",
    scheme: str = "redblue",
    domain_mid: float | None = 0.0,
    width: int | str = "container",
    height: int | None = None,
    show_col_labels: bool = True,
) -> alt.Chart:
    """A matrix [R, C] as coloured cells with the value on hover. Refuses more than MAX_CELLS cells."""
    matrix = np.asarray(matrix, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"heatmap needs a 2-D matrix, got shape {matrix.shape}.")
    rows, cols = matrix.shape
    if rows * cols > MAX_CELLS:
        raise ValueError(f"{rows}×{cols} cells is too many to draw; choose a window of at most {MAX_CELLS}.")
    r_labels, c_labels = _labels(row_labels, rows), _labels(col_labels, cols)
    r_idx, c_idx = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    frame = pd.DataFrame(
        {
            row_title: np.asarray(r_labels, dtype=object)[r_idx.ravel()],
            col_title: np.asarray(c_labels, dtype=object)[c_idx.ravel()],
            value_title: matrix.ravel(),
        }
    )
    scale = alt.Scale(scheme=scheme, reverse=scheme == "redblue")
    if domain_mid is not None:
        scale = alt.Scale(scheme=scheme, domainMid=domain_mid, reverse=scheme == "redblue")
    x_axis = alt.Axis(labels=show_col_labels, ticks=show_col_labels, labelAngle=-45, labelLimit=80)
    chart = (
        alt.Chart(frame, title=title)
        .mark_rect()
        .encode(
            x=alt.X(f"{col_title}:O", sort=c_labels, axis=x_axis, title=col_title),
            y=alt.Y(f"{row_title}:O", sort=r_labels, title=row_title, axis=alt.Axis(labelLimit=120)),
            color=alt.Color(f"{value_title}:Q", scale=scale, title=value_title),
            tooltip=[row_title, col_title, alt.Tooltip(f"{value_title}:Q", format=".4f")],
        )
    )
    return chart.properties(width=width, height=height or max(120, min(22 * rows, 700)), autosize=PLOT_HEIGHT)


@memoized_chart
def bars(
    labels: Sequence[str],
    values: Sequence[float],
    title: str = "",
    label_title: str = "token",
    value_title: str = "value",
    highlight: Sequence[bool] | None = None,
    sort_desc: bool = True,
) -> alt.Chart:
    """Horizontal bars, one per label, value on hover; `highlight` greys out the False ones."""
    frame = pd.DataFrame({label_title: _labels(labels, len(labels)), value_title: np.asarray(values, float)})
    frame["kept"] = list(highlight) if highlight is not None else [True] * len(frame)
    order = "-x" if sort_desc else None
    return (
        alt.Chart(frame, title=title)
        .mark_bar()
        .encode(
            y=alt.Y(f"{label_title}:N", sort=order, title=label_title, axis=alt.Axis(labelLimit=160)),
            x=alt.X(f"{value_title}:Q", title=value_title),
            color=alt.condition("datum.kept", alt.value("#2563eb"), alt.value("#cbd5e1")),
            tooltip=[label_title, alt.Tooltip(f"{value_title}:Q", format=".4f"), "kept"],
        )
        .properties(width="container", height=max(80, 24 * len(frame)), autosize=PLOT_HEIGHT)
    )


@memoized_chart
def token_map(points: pd.DataFrame, title: str = "") -> alt.Chart:
    """Labelled scatter of a frame with columns x, y, text, kind, anchor (`inspection.tokens.MapPoint`)."""
    base = alt.Chart(points, title=title).encode(
        x=alt.X("x:Q", title="PC 1"),
        y=alt.Y("y:Q", title="PC 2"),
        tooltip=[
            "text",
            "kind",
            "anchor",
            alt.Tooltip("x:Q", format=".3f"),
            alt.Tooltip("y:Q", format=".3f"),
        ],
    )
    dots = base.mark_circle(size=80).encode(
        color=alt.Color("anchor:N", title="near token"),
        shape=alt.Shape("kind:N", title="kind"),
        opacity=alt.condition("datum.kind == 'sentence'", alt.value(1.0), alt.value(0.55)),
    )
    labels = base.mark_text(align="left", dx=7, fontSize=11).encode(text="text:N")
    bold = labels.transform_filter("datum.kind == 'sentence'").mark_text(
        align="left", dx=7, fontSize=12, fontWeight="bold"
    )
    labels = labels.transform_filter("datum.kind != 'sentence'")
    return (dots + labels + bold).properties(width="container", height=420).interactive()


@memoized_chart
def lines(
    frame: pd.DataFrame,
    x: str,
    y: str,
    colour: str,
    title: str = "",
    x_title: str | None = None,
    y_title: str | None = None,
) -> alt.Chart:
    """Line chart of `y` against `x`, one line per value of `colour`."""
    return (
        alt.Chart(frame, title=title)
        .mark_line(point=True)
        .encode(
            x=alt.X(f"{x}:Q", title=x_title or x),
            y=alt.Y(f"{y}:Q", title=y_title or y),
            color=alt.Color(f"{colour}:N"),
            tooltip=[x, alt.Tooltip(f"{y}:Q", format=".4f"), colour],
        )
        .properties(width="container", height=280)
    )


@memoized_chart
def path_2d(frame: pd.DataFrame, title: str = "") -> alt.Chart:
    """Points (x, y) joined in `position` order, labelled by position: a vector turning on a circle."""
    base = alt.Chart(frame, title=title).encode(
        x=alt.X("x:Q", title="x_i"),
        y=alt.Y("y:Q", title="x_(i+d/2)"),
        order="position:Q",
        tooltip=["position", alt.Tooltip("x:Q", format=".3f"), alt.Tooltip("y:Q", format=".3f")],
    )
    path = base.mark_line(opacity=0.4) + base.mark_circle(size=60).encode(
        color=alt.Color("position:Q", scale=alt.Scale(scheme="viridis"))
    )
    return path.properties(width=420, height=420)


EXPORT_WIDTH = 900  # pixels for charts whose width follows the page ("container")


def _concrete_widths(node):
    if isinstance(node, dict):
        return {
            k: (EXPORT_WIDTH if k == "width" and v == "container" else _concrete_widths(v))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_concrete_widths(v) for v in node]
    return node


def to_svg(chart: alt.TopLevelMixin) -> str:
    """The chart rendered to SVG offline (vl-convert), as a person would save it."""
    import vl_convert

    return vl_convert.vegalite_to_svg(_concrete_widths(chart.to_dict()))


def to_png(chart: alt.TopLevelMixin, scale: float = 2.0) -> bytes:
    """The chart rendered to PNG offline (vl-convert) at `scale`× resolution."""
    import vl_convert

    return vl_convert.vegalite_to_png(_concrete_widths(chart.to_dict()), scale=scale)
