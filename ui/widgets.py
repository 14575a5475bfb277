"""Small Streamlit widgets the pages share: download buttons and token pickers."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import streamlit as st

from core.inspection.tokens import readable
from core.views.charts import to_png, to_svg
from core.views.export import to_csv_bytes, to_npz_bytes
from core.views.vega import to_vega_lite
from ui.state import Between, persist

MAX_WINDOW = 32  # tokens drawn at once in per-token charts


def downloads(
    name: str,
    array: np.ndarray,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    key: str | None = None,
) -> None:
    """CSV and NPZ download buttons for one array; the files are built only when clicked."""
    left, right, _ = st.columns([1, 1, 4])
    key = key or name
    if np.asarray(array).ndim <= 2:
        left.download_button(
            "CSV",
            lambda: to_csv_bytes(array, row_labels, col_labels),
            f"{name}.csv",
            "text/csv",
            key=f"dl_csv_{key}",
            icon=":material/download:",
            on_click="ignore",
        )
    right.download_button(
        "NPZ",
        lambda: to_npz_bytes(**{name: array}),
        f"{name}.npz",
        "application/octet-stream",
        key=f"dl_npz_{key}",
        icon=":material/download:",
        on_click="ignore",
    )


def token_window(n_tokens: int, key: str, size: int = MAX_WINDOW) -> slice:
    """A window of at most `size` tokens; a slider appears only when the text is longer."""
    if n_tokens <= size:
        return slice(0, n_tokens)
    start = st.slider(
        f"Token window (showing {size} of {n_tokens})",
        0,
        n_tokens - size,
        help="Long texts are shown a window at a time so charts stay readable.",
        **persist(key, n_tokens - size, allowed=Between(0, n_tokens - size)),
    )
    return slice(start, start + size)


def token_picker(
    pieces: Sequence[str], label: str, key: str, default: int | None = None, container=st
) -> int:
    """A selectbox of token positions, remembered across pages while the text has that many tokens."""
    n = len(pieces)
    return container.selectbox(
        label,
        range(n),
        format_func=lambda i: f"{i}: {readable(pieces[i])}",
        **persist(key, n - 1 if default is None else min(default, n - 1), allowed=range(n)),
    )


def show_chart(chart, name: str, container=st) -> None:
    """Draw an Altair chart with SVG and PNG download buttons (rendered only when clicked).

    The chart goes out as its Vega-Lite spec, converted once per chart (`core.views.vega`): the
    builders hand back the same chart for the same numbers, so a rerun re-sends it without building
    or validating it again."""
    container.vega_lite_chart(to_vega_lite(chart), width="stretch")
    left, right, _ = container.columns([1, 1, 6])
    left.download_button(
        "SVG",
        lambda: to_svg(chart),
        f"{name}.svg",
        "image/svg+xml",
        key=f"svg_{name}",
        icon=":material/image:",
        on_click="ignore",
        type="tertiary",
    )
    right.download_button(
        "PNG",
        lambda: to_png(chart),
        f"{name}.png",
        "image/png",
        key=f"png_{name}",
        icon=":material/image:",
        on_click="ignore",
        type="tertiary",
    )


def lazy_section(label: str, key: str, draw: Callable[[], None]) -> None:
    """An expander whose content is drawn only once the reader opens it: opening it reruns the page,
    so a station switch draws (and computes) only what is in view. Streamlit forgets the open state
    when the reader leaves the page, so sections come back closed."""
    section = st.expander(label, key=key, on_change="rerun")
    if section.open:
        with section:
            draw()


def check_metric(label: str, check, container=st, value: str | None = None) -> None:
    """A numerical check as a metric: the difference found, and green when float rounding explains it
    (`check` is a core.tolerance.CheckResult), red when it does not."""
    container.metric(
        label,
        value if value is not None else f"{check.error:.2e}",
        delta=check.summary(),
        delta_color="green" if check.passed else "red",
        delta_arrow="off",
        help=f"{check}. Rounding alone allows c · eps · √n · the size of the numbers (README: Tolerances).",
    )
