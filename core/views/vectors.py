"""What the search page draws to compare a query with one hit as vectors: the dense pair as a strip of
d numbers each (and their products, which sum to the cosine) in Altair, and the sparse pair as weighted
terms in HTML, the terms both share highlighted. Terms come from documents and are escaped."""

from __future__ import annotations

import html
from collections.abc import Mapping

import altair as alt
import numpy as np
import pandas as pd

from core.views.vega import memoized_chart

MATCH_COLOUR = "#fde68a"  # a term the query and the chunk share
TERM_COLOUR = "#e5e7eb"  # any other term


@memoized_chart
def dense_strip_chart(query: np.ndarray, chunk: np.ndarray, width: int = 640) -> alt.VConcatChart:
    """Query q [d] and chunk c [d] as two strips of d cells coloured by value (one shared scale), and
    below them the products q_i·c_i on their own scale: for unit vectors they sum to cos(q, c)."""
    q = np.asarray(query, dtype=np.float64)
    c = np.asarray(chunk, dtype=np.float64)
    if q.shape != c.shape or q.ndim != 1:
        raise ValueError(f"query and chunk must be two vectors of one length, got {q.shape} and {c.shape}.")
    dims = np.arange(q.size)
    vectors = pd.DataFrame(
        {
            "dimension": np.concatenate([dims, dims]),
            "vector": ["query q"] * q.size + ["chunk c"] * c.size,
            "value": np.concatenate([q, c]),
        }
    )
    products = pd.DataFrame({"dimension": dims, "vector": "q_i · c_i", "value": q * c})
    limit = float(np.abs(vectors["value"]).max()) or 1.0
    product_limit = float(np.abs(products["value"]).max()) or 1.0
    ticks = alt.Axis(values=list(range(0, q.size, 32)), labelAngle=0)
    x = alt.X("dimension:O", axis=ticks, title="dimension")

    def strip(frame: pd.DataFrame, bound: float, title: str) -> alt.Chart:
        return (
            alt.Chart(frame, title=title, width=width)
            .mark_rect()
            .encode(
                x=x,
                y=alt.Y("vector:N", title=None, sort=["query q", "chunk c"]),
                color=alt.Color(
                    "value:Q",
                    scale=alt.Scale(scheme="redblue", domain=[-bound, bound], reverse=True),
                    legend=alt.Legend(title=None, orient="right"),
                ),
                tooltip=["vector", "dimension", alt.Tooltip("value:Q", format=".4f")],
            )
        )

    return alt.vconcat(
        strip(vectors, limit, f"The two {q.size}-d vectors (red > 0 > blue)"),
        strip(products, product_limit, "Their products q_i · c_i: the sum is q · c"),
    ).resolve_scale(color="independent")


def sparse_terms_html(weights: Mapping[str, float], matching: set[str], max_terms: int = 60) -> str:
    """A sparse vector as chips `term weight`, largest first, shared terms highlighted. Shared terms are
    always shown; others up to `max_terms` in all, with a count of those left out."""
    shown = [t for t in weights if t in matching]
    shown += [t for t in weights if t not in matching][: max(0, max_terms - len(shown))]
    shown.sort(key=lambda t: (-weights[t], t))
    chips = []
    for term in shown:
        colour = MATCH_COLOUR if term in matching else TERM_COLOUR
        weight = "" if weights[term] == 0 else f" <b>{weights[term]:.3f}</b>"
        chips.append(
            f'<span style="background: {colour}; border-radius: 4px; padding: 1px 5px; margin: 2px; '
            f'display: inline-block; font-size: 0.85rem;">{html.escape(term)}{weight}</span>'
        )
    left = len(weights) - len(shown)
    more = f' <span style="color: #6b7280;">… and {left} more terms</span>' if left > 0 else ""
    return f'<div style="line-height: 1.9;">{"".join(chips)}{more}</div>'
