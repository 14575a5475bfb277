"""Station 4: the residual stream through every block, its sum checked, first; how each block turns it,
the logit lens and a normalisation layer in sections drawn when opened."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from core.inspection.layers import layer_labels as lens_layer_labels
from core.inspection.layers import lens_top_columns, norm_effect, residual_stats
from core.inspection.tokens import readable
from core.views import charts
from ui import quiz, state
from ui.sidebar import render_sidebar
from ui.widgets import check_metric, downloads, lazy_section, show_chart, token_picker, token_window

st.title("4 · Transformer layers")
st.markdown(
    "**What happens.** Each block reads the running vector (the **residual stream**), computes an "
    "attention update and an MLP update, and *adds* both: `x_(ℓ+1) = x_ℓ + attn_ℓ(x_ℓ) + mlp_ℓ(x_ℓ + "
    "attn_ℓ)`. **Why it matters.** Nothing is overwritten, only added to — so you can read the stream at "
    "any depth through the final norm and unembedding (the **logit lens**) and watch the prediction form."
)

render_sidebar()
loaded = state.require_model()
trace = state.require_trace(loaded)
info = loaded.info
labels = [readable(p) for p in trace.pieces]
stats = state.derived(residual_stats, loaded, trace)
window = token_window(trace.n_tokens, key="layers_window")
layer_labels = lens_layer_labels(info.n_layer)
block_labels = [f"block {i}" for i in range(info.n_layer)]


# ---------------------------------------------------------------- the stream
st.subheader("How big is the vector after each block?")
show_chart(
    charts.heatmap(
        stats.norms[:, window],
        layer_labels,
        labels[window],
        title="‖x‖ after each block",
        row_title="layer",
        col_title="token",
        value_title="norm",
        scheme="viridis",
        domain_mid=None,
    ),
    "layers_1",
)
check_metric("Check: max |x_ℓ + attention + MLP − x_(ℓ+1)|", stats.sum_check)


def draw_updates() -> None:
    """How far each block turns the vector, and the size of what its attention and MLP add."""
    show_chart(
        charts.heatmap(
            stats.cos_prev[:, window],
            layer_labels[1:],
            labels[window],
            title="cosine(after block, before block): 1 = unchanged direction",
            row_title="layer",
            col_title="token",
            value_title="cosine",
            scheme="viridis",
            domain_mid=None,
        ),
        "layers_2",
    )
    left, right = st.columns(2)
    for container, norms, title, scheme, name in (
        (left, stats.attn_norms, "‖attention update‖", "oranges", "layers_3"),
        (right, stats.mlp_norms, "‖MLP update‖", "purples", "layers_4"),
    ):
        show_chart(
            charts.heatmap(
                norms[:, window],
                block_labels,
                labels[window],
                title=title,
                row_title="layer",
                col_title="token",
                value_title="norm",
                scheme=scheme,
                domain_mid=None,
            ),
            name,
            container=container,
        )
    st.caption("The whole residual stream, every layer and token: [layer, token, d_model].")
    downloads("residual_stream", trace.residual, key="layers_residual")


def draw_lens() -> None:
    """The logit lens on the last tokens of the window: the rank of the actual next token per layer,
    and one token's top predictions at every depth."""
    st.markdown(
        "Apply the model's own final norm and unembedding to the stream after every block: "
        "`p_ℓ = softmax(W_U · norm(x_ℓ))`. The last row is exactly the model's output. The rank of the "
        "actual next token counts the tokens whose logit is strictly larger (tokens tied with it share its "
        "rank), so it stays exact far below where its probability underflows to 0."
    )
    n_lens = min(trace.n_tokens, 16)
    lens_end = window.stop
    lens_positions = list(range(max(window.start, lens_end - n_lens), lens_end))
    lens = state.logit_lens(loaded, trace, lens_positions)
    strings, _, _ = state.vocabulary(loaded)
    rank = lens.target_rank.astype(np.float64)
    has_next = lens.target_ids >= 0
    rank_view = np.log10(1 + np.where(rank >= 0, rank, np.nan))[:, has_next]
    pos_labels = [
        f"{labels[p]} → {strings[lens.target_ids[i]]}" for i, p in enumerate(lens.positions) if has_next[i]
    ]
    if has_next.any():
        show_chart(
            charts.heatmap(
                rank_view,
                layer_labels,
                pos_labels,
                title="Rank of the actual next token at each layer (log10(1 + rank); 0 = top prediction)",
                row_title="layer",
                col_title="token → next token",
                value_title="log10(1+rank)",
                scheme="viridis",
                domain_mid=None,
            ),
            "layers_5",
        )
    c1, c2 = st.columns([2, 1])
    pick = c1.selectbox(
        "Read the lens at token",
        range(len(lens.positions)),
        format_func=lambda i: f"{lens.positions[i]}: {labels[lens.positions[i]]}",
        **state.persist("lens_token", len(lens.positions) - 1, allowed=range(len(lens.positions))),
    )
    check_metric("Check: last layer vs the model's output", lens.final_check, container=c2)
    table = pd.DataFrame({"layer": layer_labels, **lens_top_columns(lens, strings, pick)})
    if lens.target_ids[pick] >= 0:
        table["p(actual next)"] = lens.target_prob[:, pick]
        table["ln p(actual next)"] = lens.target_logprob[:, pick]  # stays finite where p underflows to 0
        table["rank"] = lens.target_rank[:, pick]
    st.dataframe(table, hide_index=True, width="stretch", height=min(38 * len(table) + 40, 600))
    downloads("logit_lens_top_ids", lens.top_ids[:, pick, :], layer_labels, key="lens_dl")


def draw_norm() -> None:
    """One block's first normalisation applied by hand to one token's vector, checked against the module."""
    c1, c2 = st.columns(2)
    norm_layer = c1.slider(
        "Block",
        0,
        info.n_layer - 1,
        **state.persist("norm_layer", min(info.n_layer - 1, info.n_layer // 2), allowed=range(info.n_layer)),
    )
    norm_token = token_picker(trace.pieces, "Token", key="norm_token", container=c2)
    effect = norm_effect(loaded, trace, norm_layer, norm_token)
    formula = (
        "`LayerNorm(x) = γ · (x − mean(x)) / √(var(x) + ε) + β`"
        if effect.kind == "LayerNorm"
        else "`RMSNorm(x) = γ · x / √(mean(x²) + ε)`"
    )
    st.markdown(f"Block {norm_layer} first applies **{effect.kind}**: {formula}.")
    show_chart(
        charts.heatmap(
            np.stack([effect.before, effect.normalised, effect.after]),
            ["x (residual)", "normalised", "× γ (+ β) = output"],
            None,
            row_title="vector",
            col_title="dimension",
            show_col_labels=False,
            height=150,
        ),
        "layers_6",
    )
    stats_table = pd.DataFrame(
        {
            "": ["before", "after"],
            "mean": [effect.mean_before, effect.mean_after],
            "variance": [effect.var_before, effect.var_after],
            "RMS": [effect.rms_before, effect.rms_after],
        }
    )
    st.dataframe(stats_table, hide_index=True)
    check_metric("Check: max |formula − the model's norm module|", effect.formula_check)


lazy_section("How much each block turns the vector, and what it adds", "layers_exp_updates", draw_updates)
lazy_section("Logit lens: what would each layer predict?", "layers_exp_lens", draw_lens)
lazy_section("What a normalisation layer does to one vector", "layers_exp_norm", draw_norm)

# ---------------------------------------------------------------- predict, then reveal
quiz.render_questions(loaded, trace, station=4)
