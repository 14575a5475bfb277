"""What the search station draws: the chunk map with the query on it (Altair), a document with its
chunks shaded, a hit highlighted in its document, and an answer with its citations linked (HTML).
Everything taken from a document is escaped."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence

import altair as alt
import pandas as pd

from core.retrieval.chunking import Chunk
from core.retrieval.maps import EmbeddingMap
from core.retrieval.search import HitContext
from core.views.vega import memoized_chart


def _short(text: str, width: int = 40) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


@memoized_chart
def search_map_chart(embedding_map: EmbeddingMap, highlight_ids: Sequence[str] = ()) -> alt.Chart:
    """Every chunk coloured by document, the query as a red diamond, retrieved chunks ringed.

    `highlight_ids` are chunk ids, e.g. `[hit.id for hit in result.hits]`."""
    m = embedding_map
    highlight = set(highlight_ids)
    frame = pd.DataFrame(
        {
            "x": m.coords[:, 0],
            "y": m.coords[:, 1],
            "document": m.doc_names,
            "chunk": m.chunk_indices,
            "text": [_short(t, 120) for t in m.texts],
            "retrieved": [cid in highlight for cid in m.ids],
        }
    )
    evr = m.projection.explained_variance_ratio
    x_title, y_title = f"PC 1 ({evr[0]:.0%} of variance)", f"PC 2 ({evr[1]:.0%})"
    chunks = (
        alt.Chart(frame, title="Chunks on a 2-D PCA map")
        .mark_circle(size=60, opacity=0.7)
        .encode(
            x=alt.X("x:Q", title=x_title),
            y=alt.Y("y:Q", title=y_title),
            color=alt.Color("document:N"),
            stroke=alt.condition(alt.datum.retrieved, alt.value("black"), alt.value(None)),
            strokeWidth=alt.condition(alt.datum.retrieved, alt.value(2), alt.value(0)),
            tooltip=["document", "chunk", "text"],
        )
    )
    if m.query_coords is None:
        return chunks.interactive()
    query = pd.DataFrame({"x": [m.query_coords[0]], "y": [m.query_coords[1]], "text": [m.query or ""]})
    star = (
        alt.Chart(query)
        .mark_point(shape="diamond", size=250, filled=True, color="red")
        .encode(x="x:Q", y="y:Q", tooltip=alt.Tooltip("text:N", title="query"))
    )
    return (chunks + star).interactive()


CHUNK_COLOURS = ("#dbeafe", "#dcfce7")  # alternating shades for neighbouring chunks
OVERLAP_COLOUR = "#fde68a"  # text that belongs to two chunks at once
_BADGE_STYLE = (
    "font-size: 0.7rem; font-weight: 600; color: #1e3a8a; background: #e0e7ff; border-radius: 4px; "
    "padding: 0 4px; margin-right: 2px;"
)


def chunks_html(text: str, chunks: Sequence[Chunk], max_chars: int = 20_000) -> str:
    """The document text with each chunk shaded (alternating colours), text shared by two chunks in
    yellow, and a badge `#i · n tok · heading path · p. N` where each chunk starts. Everything from the
    document is escaped.

    Shows the text up to the end of the last given chunk, at most `max_chars` characters."""
    end = min(max((c.char_end for c in chunks), default=0), max_chars)
    starts: dict[int, list[Chunk]] = {}
    for c in chunks:
        if c.char_start < end:
            starts.setdefault(c.char_start, []).append(c)
    points = sorted({0, end} | {min(p, end) for c in chunks for p in (c.char_start, c.char_end)})
    parts = ['<div style="white-space: pre-wrap; line-height: 1.8; font-size: 0.9rem;">']
    for a, b in zip(points, points[1:], strict=False):
        for c in starts.get(a, []):
            where = "".join(
                f" · {html.escape(x)}" for x in (c.section, f"p. {c.page}" if c.page else "") if x
            )
            parts.append(f'<span style="{_BADGE_STYLE}">#{c.index} · {c.n_tokens} tok{where}</span>')
        covering = [c for c in chunks if c.char_start <= a and b <= c.char_end]
        piece = html.escape(text[a:b])
        if not covering:
            parts.append(piece)
            continue
        colour = OVERLAP_COLOUR if len(covering) > 1 else CHUNK_COLOURS[covering[0].index % 2]
        parts.append(f'<span style="background: {colour};">{piece}</span>')
    if end < max((c.char_end for c in chunks), default=0) or (not chunks and text):
        parts.append(" …")
    parts.append("</div>")
    return "".join(parts)


def hit_context_html(context: HitContext, anchor: str | None = None) -> str:
    """The chunk highlighted inside its surrounding text (all of it html-escaped); `anchor` becomes
    the element id that answers link to."""
    grey = 'style="color: #6b7280;"'
    before = ("" if context.at_start else "…") + context.before.lstrip()
    after = context.after.rstrip() + ("" if context.at_end else "…")
    ident = f' id="{html.escape(anchor, quote=True)}"' if anchor else ""
    return (
        f'<div{ident} style="white-space: pre-wrap; line-height: 1.6; font-size: 0.92rem;">'
        f"<span {grey}>{html.escape(before)}</span>"
        f'<mark style="background: #fde68a; padding: 0 2px;">{html.escape(context.text)}</mark>'
        f"<span {grey}>{html.escape(after)}</span></div>"
    )


def answer_html(answer: str, n_sources: int, anchor_prefix: str = "hit-") -> str:
    """The answer html-escaped, with every citation [k] of an existing source linked to `#<prefix>k`."""

    def link(match: re.Match[str]) -> str:
        def one(number: re.Match[str]) -> str:
            k = int(number.group())
            return f'<a href="#{anchor_prefix}{k}">{k}</a>' if 1 <= k <= n_sources else number.group()

        return "[" + re.sub(r"\d+", one, match.group(1)) + "]"

    body = re.sub(r"\[([\d,\s]+)\]", link, html.escape(answer))
    return f'<div style="white-space: pre-wrap; line-height: 1.6;">{body}</div>'
