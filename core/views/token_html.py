"""HTML of the tokens station: the text as coloured BPE pieces with their ids underneath."""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np

from core.inspection.tokens import readable
from core.views.colours import PIECE_COLOURS


def pieces_html(pieces: Sequence[str], ids: Sequence[int] | np.ndarray) -> str:
    """The text as coloured token pieces with their ids underneath, as safe HTML."""
    spans = []
    for i, (piece, token_id) in enumerate(zip(pieces, ids, strict=True)):
        colour = PIECE_COLOURS[i % len(PIECE_COLOURS)]
        spans.append(
            f'<span title="position {i} · id {int(token_id)}" style="display:inline-block;'
            f"background:{colour};color:#111;border-radius:4px;padding:2px 4px;margin:2px;"
            f'font-family:monospace;text-align:center;line-height:1.2">'
            f"{html.escape(readable(piece)) or '&nbsp;'}<br>"
            f"<small style='color:#555'>{int(token_id)}</small></span>"
        )
    return '<div style="line-height:2.2">' + "".join(spans) + "</div>"
