"""Charts and HTML for the output-softmax station: a reshaped distribution (cut tokens greyed),
per-token surprisal, entropy per generated step, and generated text coloured by probability."""

from __future__ import annotations

import html
from collections.abc import Sequence

import altair as alt
import pandas as pd

from core.inspection.generation import GenerationResult, Surprisal
from core.inspection.sampling import TokenChoice
from core.inspection.tokens import readable
from core.views.colours import probability_colour, probability_gradient
from core.views.vega import memoized_chart

# Stage names as they appear in legends, and their colours.
STAGE_MODEL = "model (T = 1)"
STAGE_TEMPERED = "after temperature"
STAGE_FINAL = "final (drawn from)"
STAGE_COLOURS = {STAGE_MODEL: "#94a3b8", STAGE_TEMPERED: "#f59e0b", STAGE_FINAL: "#2563eb"}
CUT_COLOUR = "#e2e8f0"  # a token top-k / top-p removed
MAX_BARS = 60  # tokens drawn at once in the distribution chart


def distribution_frame(entries: Sequence[TokenChoice], show_tempered: bool = False) -> pd.DataFrame:
    """Long table: one row per (token, stage) with columns token, rank, token_id, stage, p, kept."""
    rows = []
    for rank, e in enumerate(entries):
        label = f"{rank + 1}:{readable(e.text)}"  # rank-prefixed so equal texts stay distinct categories
        stages = [(STAGE_MODEL, e.p_original)]
        if show_tempered:
            stages.append((STAGE_TEMPERED, e.p_tempered))
        stages.append((STAGE_FINAL, e.p_final))
        for stage, p in stages:
            rows.append(
                {
                    "token": label,
                    "rank": rank + 1,
                    "token_id": e.token_id,
                    "stage": stage,
                    "p": p,
                    "kept": e.kept,
                }
            )
    return pd.DataFrame(rows, columns=["token", "rank", "token_id", "stage", "p", "kept"])


@memoized_chart
def distribution_chart(
    entries: Sequence[TokenChoice], title: str = "", show_tempered: bool = False
) -> alt.Chart:
    """Grouped horizontal bars, most likely token first: the model's probability next to the final one.

    Tokens that top-k / top-p cut are drawn in light grey (their final probability is 0).
    """
    if len(entries) > MAX_BARS:
        raise ValueError(f"{len(entries)} tokens is too many to draw; pass at most {MAX_BARS}.")
    frame = distribution_frame(entries, show_tempered)
    stages = [STAGE_MODEL] + ([STAGE_TEMPERED] if show_tempered else []) + [STAGE_FINAL]
    colour = alt.Color(
        "stage:N",
        scale=alt.Scale(domain=stages, range=[STAGE_COLOURS[s] for s in stages]),
        sort=stages,
        title=None,
    )
    order = list(dict.fromkeys(frame["token"]))
    return (
        alt.Chart(frame, title=title)
        .mark_bar()
        .encode(
            y=alt.Y("token:N", sort=order, title="token", axis=alt.Axis(labelLimit=160)),
            yOffset=alt.YOffset("stage:N", sort=stages),
            x=alt.X("p:Q", title="probability", scale=alt.Scale(domain=[0, 1])),
            color=alt.when(alt.datum.kept).then(colour).otherwise(alt.value(CUT_COLOUR)),
            tooltip=["token:N", "token_id:Q", "stage:N", alt.Tooltip("p:Q", format=".4f"), "kept:N"],
        )
        .properties(width="container", height=max(100, len(entries) * (12 * len(stages) + 6)))
    )


def surprisal_frame(s: Surprisal) -> pd.DataFrame:
    """One row per scored token: position, token, p, bits."""
    labels = [f"{int(pos)}:{readable(piece)}" for pos, piece in zip(s.positions, s.pieces, strict=True)]
    return pd.DataFrame(
        {"position": s.positions, "token": labels, "p": s.probs, "bits": s.bits},
        columns=["position", "token", "p", "bits"],
    )


@memoized_chart
def surprisal_chart(s: Surprisal, title: str = "") -> alt.Chart | alt.LayerChart:
    """Surprisal in bits of every token given the ones before it, with the mean as a dashed rule."""
    frame = surprisal_frame(s)
    bars = (
        alt.Chart(frame, title=title)
        .mark_bar()
        .encode(
            x=alt.X("token:N", sort=list(frame["token"]), title="token", axis=alt.Axis(labelAngle=-45)),
            y=alt.Y("bits:Q", title="surprisal (bits) = −log₂ p"),
            color=alt.Color("bits:Q", scale=alt.Scale(scheme="orangered"), legend=None),
            tooltip=[
                "position:Q",
                "token:N",
                alt.Tooltip("p:Q", format=".4f"),
                alt.Tooltip("bits:Q", format=".2f"),
            ],
        )
    )
    if s.mean_bits is None:
        return bars.properties(width="container", height=260)
    rule = (
        alt.Chart(pd.DataFrame({"mean_bits": [s.mean_bits]}))
        .mark_rule(strokeDash=[5, 4], color="#334155")
        .encode(y="mean_bits:Q", tooltip=[alt.Tooltip("mean_bits:Q", format=".2f")])
    )
    return (bars + rule).properties(width="container", height=260)


def entropy_frame(result: GenerationResult) -> pd.DataFrame:
    """Long table of entropy per generated step: step, series ("model", "final"), bits."""
    rows = []
    for s in result.steps:
        rows.append({"step": s.step, "series": "model (T = 1)", "bits": s.entropy_before.bits})
        rows.append({"step": s.step, "series": "final (drawn from)", "bits": s.entropy_after.bits})
    return pd.DataFrame(rows, columns=["step", "series", "bits"])


@memoized_chart
def entropy_chart(result: GenerationResult, title: str = "") -> alt.Chart:
    """Entropy in bits of the model's and the final distribution at every generated step."""
    frame = entropy_frame(result)
    return (
        alt.Chart(frame, title=title)
        .mark_line(point=True)
        .encode(
            x=alt.X("step:Q", title="generated token"),
            y=alt.Y("bits:Q", title="entropy (bits)"),
            color=alt.Color(
                "series:N",
                scale=alt.Scale(
                    domain=["model (T = 1)", "final (drawn from)"],
                    range=[STAGE_COLOURS[STAGE_MODEL], STAGE_COLOURS[STAGE_FINAL]],
                ),
                title=None,
            ),
            tooltip=["step:Q", "series:N", alt.Tooltip("bits:Q", format=".3f")],
        )
        .properties(width="container", height=240)
    )


def generated_html(result: GenerationResult, by: str = "model", show_prompt: bool = True) -> str:
    """The prompt (grey) and the continuation with each token's background coloured by its probability.

    `by="model"` colours by p under the model's own distribution (informative even when greedy);
    `by="final"` by p under the distribution the token was drawn from. Hover shows the numbers and the
    top alternatives. All text is escaped, so the string is safe to render as HTML.
    """
    if by not in ("model", "final"):
        raise ValueError('by must be "model" or "final".')
    parts = ['<div style="white-space:pre-wrap;line-height:1.9;font-family:monospace">']
    if show_prompt:
        parts.append(f'<span style="color:#64748b">{html.escape(result.prompt)}</span>')
    for s in result.steps:
        if not s.text:  # the bytes of an unfinished character: shown with the next token
            continue
        p = s.prob_model if by == "model" else s.prob
        alternatives = ", ".join(f"{c.text} {c.p_original:.3f}" for c in s.candidates[:5])
        tip = (
            f"step {s.step} · id {s.token_id} · p(model) {s.prob_model:.4f} · p(final) {s.prob:.4f} · "
            f"entropy {s.entropy_before.bits:.2f} bits · top: {alternatives}"
        )
        parts.append(
            f'<span title="{html.escape(tip, quote=True)}" style="background:{probability_colour(p)};'
            f'color:#111;border-radius:3px;padding:1px 0">{html.escape(s.text)}</span>'
        )
    parts.append("</div>")
    return "".join(parts)


def probability_legend_html() -> str:
    """A small key for `generated_html`'s colours."""
    return (
        '<div style="display:flex;align-items:center;gap:6px;font-size:0.8em;color:#475569">'
        "<span>p = 0</span>"
        f'<span style="display:inline-block;width:140px;height:10px;border-radius:3px;'
        f'background:{probability_gradient()}"></span><span>p = 1</span></div>'
    )
