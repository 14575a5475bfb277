"""Altair charts for the training station: loss curves with the learning rate, per-layer gradient
norms, weight drift, and the before/after views. Pure functions from results to chart specs."""

from __future__ import annotations

from collections.abc import Sequence

import altair as alt
import numpy as np
import pandas as pd

from core.training.compare import AttentionChange, LogitLensComparison, NextTokenComparison, WeightDrift
from core.training.jobs import Curve, JobSnapshot
from core.training.results import TrainStep
from core.views.charts import heatmap
from core.views.vega import memoized_chart

TRAIN_COLOR = "#1f77b4"
EVAL_COLOR = "#ff7f0e"
LR_COLOR = "#7f7f7f"


def loss_frame(history: Sequence[TrainStep]) -> pd.DataFrame:
    """Long table of the curves: one row per (step, series) with series "train", "held-out"."""
    rows = [{"step": s.step, "series": "train", "loss": s.loss} for s in history]
    rows += [
        {"step": s.step, "series": "held-out", "loss": s.eval_loss}
        for s in history
        if s.eval_loss is not None
    ]
    return pd.DataFrame(rows, columns=["step", "series", "loss"])


@memoized_chart
def loss_chart(
    history: Sequence[TrainStep], log_scale: bool = False, show_lr: bool = True, height: int = 260
) -> alt.Chart | alt.LayerChart:
    """Training and held-out loss per step (optionally log-scaled), with the learning rate on a
    second axis."""
    lr = pd.DataFrame({"step": [s.step for s in history], "lr": [s.lr for s in history]})
    return _loss_layers(loss_frame(history), lr if show_lr and history else None, log_scale, height)


@memoized_chart
def live_loss_chart(
    loss: Curve, held_out: Curve, log_scale: bool = False, height: int = 260
) -> alt.Chart | alt.LayerChart:
    """`loss_chart` from a running job's curves (`core.training.jobs.Curve`, at most a few hundred points
    each, a point being the mean over the steps it covers): training and held-out loss, lr."""
    frame = pd.DataFrame(
        {
            "step": np.concatenate([loss.steps, held_out.steps]),
            "series": ["train"] * len(loss) + ["held-out"] * len(held_out),
            "loss": np.concatenate([loss.series("loss"), held_out.series("held-out loss")]),
        }
    )
    lr = pd.DataFrame({"step": loss.steps, "lr": loss.series("lr")}) if len(loss) else None
    return _loss_layers(frame, lr, log_scale, height)


def _loss_layers(
    frame: pd.DataFrame, lr: pd.DataFrame | None, log_scale: bool, height: int
) -> alt.Chart | alt.LayerChart:
    y_scale = alt.Scale(type="log") if log_scale else alt.Scale(zero=False)
    color = alt.Color(
        "series:N",
        scale=alt.Scale(domain=["train", "held-out"], range=[TRAIN_COLOR, EVAL_COLOR]),
        title=None,
    )
    base = alt.Chart(frame).encode(
        x=alt.X("step:Q", title="step"),
        y=alt.Y("loss:Q", title="loss (nats)" + (", log scale" if log_scale else ""), scale=y_scale),
        color=color,
        tooltip=["step:Q", "series:N", alt.Tooltip("loss:Q", format=".4f")],
    )
    curves = base.mark_line() + base.mark_point(size=20, filled=True)
    if lr is None:
        return curves.properties(height=height)
    lr_line = (
        alt.Chart(lr)
        .mark_line(strokeDash=[4, 3], color=LR_COLOR)
        .encode(
            x="step:Q",
            y=alt.Y("lr:Q", title="learning rate", axis=alt.Axis(orient="right", format=".1e")),
            tooltip=["step:Q", alt.Tooltip("lr:Q", format=".2e")],
        )
    )
    return alt.layer(curves, lr_line).resolve_scale(y="independent").properties(height=height)


@memoized_chart
def grad_norm_chart(step: TrainStep, height: int = 240) -> alt.Chart:
    """Bars of one step's gradient norm per layer group, bottom (embeddings) to top (head)."""
    frame = pd.DataFrame({"layer": list(step.grad_norms), "grad_norm": list(step.grad_norms.values())})
    return (
        alt.Chart(frame, title=f"gradient norm per layer, step {step.step}")
        .mark_bar()
        .encode(
            x=alt.X("layer:N", sort=list(step.grad_norms), title=None),
            y=alt.Y("grad_norm:Q", title="‖gradient‖ (before clipping)"),
            tooltip=["layer:N", alt.Tooltip("grad_norm:Q", format=".4g")],
        )
        .properties(height=height)
    )


@memoized_chart
def drift_chart(drift: WeightDrift, height: int = 240) -> alt.Chart:
    """Bars of ‖ΔW‖/‖W‖ per layer group."""
    frame = pd.DataFrame({"layer": drift.groups, "relative_change": drift.relative})
    return (
        alt.Chart(frame, title="how far each layer's weights moved")
        .mark_bar()
        .encode(
            x=alt.X("layer:N", sort=drift.groups, title=None),
            y=alt.Y("relative_change:Q", title="‖ΔW‖ / ‖W‖", axis=alt.Axis(format="%")),
            tooltip=["layer:N", alt.Tooltip("relative_change:Q", format=".3%")],
        )
        .properties(height=height)
    )


@memoized_chart
def next_token_chart(comparison: NextTokenComparison, height: int = 260) -> alt.Chart:
    """Grouped bars: each candidate token's probability before and after fine-tuning."""
    order = [repr(t.token) for t in comparison.top]
    rows = []
    for t in comparison.top:
        rows.append({"token": repr(t.token), "model": "before", "p": t.p_before})
        rows.append({"token": repr(t.token), "model": "after", "p": t.p_after})
    return (
        alt.Chart(
            pd.DataFrame(rows), title=f"next token · KL(after‖before) = {comparison.kl_after_before:.3f} nats"
        )
        .mark_bar()
        .encode(
            y=alt.Y("token:N", sort=order, title=None),
            x=alt.X("p:Q", title="probability", axis=alt.Axis(format="%")),
            yOffset=alt.YOffset("model:N", sort=["before", "after"]),
            color=alt.Color(
                "model:N", sort=["before", "after"], scale=alt.Scale(range=[LR_COLOR, TRAIN_COLOR])
            ),
            tooltip=["token:N", "model:N", alt.Tooltip("p:Q", format=".2%")],
        )
        .properties(height=height)
    )


@memoized_chart
def attention_change_chart(change: AttentionChange, height: int = 200) -> alt.Chart:
    """Heatmap of mean |ΔA| per layer (rows) and head (columns)."""
    n_layer, n_head = change.mean_abs_delta.shape
    layer, head = np.meshgrid(np.arange(n_layer), np.arange(n_head), indexing="ij")
    frame = pd.DataFrame(
        {
            "layer": layer.ravel(),
            "head": head.ravel(),
            "mean_abs_delta": change.mean_abs_delta.ravel(),
        }
    )
    return (
        alt.Chart(frame, title="mean |Δ attention| per head")
        .mark_rect()
        .encode(
            x=alt.X("head:O"),
            y=alt.Y("layer:O"),
            color=alt.Color("mean_abs_delta:Q", title="mean |ΔA|", scale=alt.Scale(scheme="oranges")),
            tooltip=["layer:O", "head:O", alt.Tooltip("mean_abs_delta:Q", format=".4f")],
        )
        .properties(height=height)
    )


@memoized_chart
def logit_lens_chart(comparison: LogitLensComparison, height: int = 240) -> alt.Chart:
    """Probability of the target token layer by layer, before vs after (top token in the tooltip)."""
    rows = []
    for model, lens in (("before", comparison.before), ("after", comparison.after)):
        values = lens.target_probs if lens.target_probs is not None else lens.top_probs
        for i, layer in enumerate(lens.layers):
            rows.append(
                {"layer": layer, "model": model, "p": float(values[i]), "top": repr(lens.top_tokens[i])}
            )
    target = comparison.after.target_token
    title = (
        f"logit lens: p({target!r}) per layer" if target is not None else "logit lens: top-token probability"
    )
    return (
        alt.Chart(pd.DataFrame(rows), title=title)
        .mark_line(point=True)
        .encode(
            x=alt.X("layer:N", sort=comparison.after.layers, title=None),
            y=alt.Y("p:Q", title="probability", axis=alt.Axis(format="%")),
            color=alt.Color(
                "model:N", sort=["before", "after"], scale=alt.Scale(range=[LR_COLOR, TRAIN_COLOR])
            ),
            tooltip=[
                "layer:N",
                "model:N",
                alt.Tooltip("p:Q", format=".2%"),
                alt.Tooltip("top:N", title="top token"),
            ],
        )
        .properties(height=height)
    )


@memoized_chart
def grad_norm_heatmap(curve: Curve, max_columns: int = 100, height: int | None = None) -> alt.Chart:
    """Every layer's gradient norm over the run: layers as rows, steps as columns (at most
    `max_columns`, neighbouring points averaged), from a running job's curve."""
    shown = curve.coarsen(max_columns)
    per = shown.steps_per_point
    return heatmap(
        shown.values.T,  # [layer, point]
        list(shown.names),
        [str(s) for s in shown.steps],
        title="Gradient norm of every layer at every step"
        + ("" if per == 1 else f" (each column: the mean of {per} steps)"),
        row_title="layer",
        col_title="step",
        value_title="norm",
        scheme="viridis",
        domain_mid=None,
        height=height,
        show_col_labels=len(shown) <= 40,
    )


def live_charts(snapshot: JobSnapshot, log_scale: bool = False) -> dict[str, alt.TopLevelMixin]:
    """The training page's live charts of a job snapshot, by download name: the loss curves, the
    last step's gradient norm per layer, and every layer's gradient norm over the run."""
    charts = {"training_loss": live_loss_chart(snapshot.loss, snapshot.eval, log_scale=log_scale)}
    if snapshot.last is not None and snapshot.last.grad_norms:
        charts["gradient_norms"] = grad_norm_chart(snapshot.last)
        charts["gradient_norms_over_time"] = grad_norm_heatmap(snapshot.grad_norms)
    return charts
