"""Station 2: how position enters — GPT-2's learned table added to tokens, or rotary q/k rotations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from core.errors import VectorLabError
from core.inspection.positions import (
    block_input_check,
    learned_position_table,
    pair_angles,
    rotary_check,
    rotary_offset_check,
    rotate,
    sinusoidal,
)
from core.inspection.tokens import readable
from core.retrieval.embeddings import cosine_similarity_matrix
from core.views import charts
from ui import quiz, state
from ui.sidebar import render_sidebar
from ui.widgets import check_metric, downloads, lazy_section, show_chart

st.title("2 · Positional encoding")
st.markdown(
    "**What happens.** One attention step weighs the earlier tokens by content alone: reorder them "
    "and it computes the same thing. So position is mixed in before or inside attention. GPT-2 looks "
    "up a learned **position vector** `P[t]` and adds it: `input_t = E[id_t] + P[t]`. Llama-style "
    "models add nothing; they **rotate** each query and key by an angle proportional to its position "
    "(RoPE). **Why it matters.** Word order carries meaning. The causal mask alone leaks some order "
    "(token t sees only tokens ≤ t), but only indirectly, through later layers; positions make "
    "'how far back' explicit, and with rotary positions the attention score between two tokens "
    "depends only on how far apart they are."
)

render_sidebar()
loaded = state.require_model()
trace = state.require_trace(loaded)
info = loaded.info
T, d = trace.token_embeddings.shape
labels = [readable(p) for p in trace.pieces]

block_check = block_input_check(trace)


def learned_similarity() -> None:
    """GPT-2's learned table next to the sinusoidal one: cosine between positions, and the raw rows."""
    most = min(info.max_positions, 256)
    n_pos = st.slider(
        "Positions", 8, most, **state.persist("pos_n", min(64, most), allowed=state.Between(8, most))
    )
    table = learned_position_table(loaded.model, n_pos)
    table_sin = sinusoidal(n_pos, d)
    left, right = st.columns(2)
    for container, matrix, title, name in (
        (left, table, "GPT-2 learned P: cosine(P[i], P[j])", "positions_2"),
        (right, table_sin, "Sinusoidal encoding: cosine(PE[i], PE[j])", "positions_3"),
    ):
        show_chart(
            charts.heatmap(
                cosine_similarity_matrix(matrix),
                None,
                None,
                title=title,
                row_title="position i",
                col_title="position j",
                value_title="cosine",
                show_col_labels=n_pos <= 32,
            ),
            name,
            container=container,
        )
    st.caption(
        "Nearby positions get similar vectors in both: the band along the diagonal. GPT-2 learned its "
        "table from data; the sinusoidal one (`PE[t, 2i] = sin(t / 10000^(2i/d))`, "
        "`PE[t, 2i+1] = cos(…)`) is fixed by formula."
    )
    left, right = st.columns(2)
    n_dims = min(d, 64)
    for container, matrix, title, name in (
        (left, table, f"Learned P (first {n_dims} dims)", "positions_4"),
        (right, table_sin, f"Sinusoidal PE (first {n_dims} dims)", "positions_5"),
    ):
        show_chart(
            charts.heatmap(
                matrix[:, :n_dims],
                None,
                None,
                title=title,
                row_title="position",
                col_title="dimension",
                show_col_labels=False,
            ),
            name,
            container=container,
        )
    st.caption("The position vectors P[t] of the traced text, every dimension:")
    downloads("position_vectors", trace.position_vectors, labels, key="pos_vectors")


def only_the_distance(n_pos: int) -> None:
    """One query pair turning with its position, and q·k unchanged when both positions shift together."""
    rot = trace.rotary
    left, mid, right = st.columns(3)
    n_pairs = rot.d_head // 2
    layer = left.slider(
        "Layer", 0, info.n_layer - 1, **state.persist("rope_layer", 0, allowed=range(info.n_layer))
    )
    head = mid.slider(
        "Query head", 0, info.n_head - 1, **state.persist("rope_head", 0, allowed=range(info.n_head))
    )
    pair = right.slider(
        "Pair i", 0, n_pairs - 1, **state.persist("rope_pair", min(4, n_pairs - 1), allowed=range(n_pairs))
    )
    tok = st.selectbox(
        "Token",
        range(T),
        format_func=lambda i: f"{i}: {labels[i]}",
        **state.persist("rope_tok", T - 1, allowed=range(T)),
    )
    q = trace.q_pre_rotary_layers[layer][head, tok]
    k = trace.k_pre_rotary_layers[layer][trace.kv_head_of(head), 0]
    half = rot.d_head // 2
    turned = [rotate(q, t, rot.inv_freq) for t in range(min(n_pos, 64))]
    circle = pd.DataFrame([{"position": t, "x": v[pair], "y": v[pair + half]} for t, v in enumerate(turned)])
    show_chart(
        charts.path_2d(
            circle, title=f"Pair {pair} of q for '{labels[tok]}' at positions 0–{len(circle) - 1}"
        ),
        "positions_7",
    )
    shifts = [0, 5, 17, 100]
    pairs = [(m + s, n + s) for s in shifts for m, n in [(3, 1)]] + [(10, 0), (20, 0)]
    check = rotary_offset_check(q, k, rot.inv_freq, pairs)
    st.dataframe(
        pd.DataFrame(
            {
                "query position": [p[0] for p in check.pairs],
                "key position": [p[1] for p in check.pairs],
                "offset": check.offsets,
                "rotated q · rotated k": check.dots,
            }
        ),
        hide_index=True,
    )
    check_metric("Check: spread of q·k over pairs with offset 2", check.spread(2))
    st.caption(
        f"q is '{labels[tok]}'s query (layer {layer}, head {head}); k is the first token's key from the "
        f"K/V head it shares (head {trace.kv_head_of(head)}). Moving both by the same amount leaves "
        "q·k unchanged, while changing the distance changes it."
    )
    st.caption("The cos and sin tables of every traced position:")
    downloads("rotary_cos_sin", np.concatenate([rot.cos, rot.sin], axis=1), labels, key="rope_tables")


if trace.position_vectors is not None:
    st.subheader("input = token embedding + position vector")
    window = min(T, 48)
    dims = st.slider(
        "Dimensions shown", 8, d, **state.persist("pos_dims", min(d, 32), allowed=state.Between(8, d))
    )
    show = slice(0, window)
    cols = st.columns(3)
    for col, (name, matrix) in zip(
        cols,
        [
            ("token embedding E[id]", trace.token_embeddings),
            ("+ position vector P[t]", trace.position_vectors),
            ("= first block's input", trace.block_input),
        ],
        strict=True,
    ):
        show_chart(
            charts.heatmap(
                matrix[show, :dims],
                labels[show],
                [str(i) for i in range(dims)],
                title=name,
                row_title="token",
                col_title="dimension",
                show_col_labels=False,
            ),
            f"positions_sum_{name.split()[1]}",
            container=col,
        )
    check_metric("Check: max |(E[id] + P[t]) − block input|", block_check)
    if T > window:
        st.caption(f"Showing the first {window} of {T} tokens.")
    lazy_section("How alike are the position vectors?", "pos_exp_similarity", learned_similarity)
else:
    rot = trace.rotary
    st.subheader("No position vector: the block input is the token embedding")
    check_metric("Check: max |E[id] − block input|", block_check)
    st.markdown(
        "Instead, inside every attention layer each query and key head vector is cut into pairs "
        f"`(x_i, x_(i+{rot.d_head // 2}))` and pair *i* is turned by the angle `t · θ^(−2i/d_head)` "
        f"(θ = {rot.theta:g}). Fast pairs spin many times per token; slow ones barely move."
    )
    n_pos = st.slider("Positions", 8, 256, **state.persist("rope_n", 64, allowed=state.Between(8, 256)))
    angles = pair_angles(np.arange(n_pos), rot.inv_freq)
    show_chart(
        charts.heatmap(
            angles,
            None,
            None,
            title="Rotation angle of each pair at each position (radians mod 2π)",
            row_title="position",
            col_title="pair i",
            value_title="angle",
            scheme="viridis",
            domain_mid=None,
            show_col_labels=False,
        ),
        "positions_6",
    )
    check_metric(
        "Check: max |our RoPE(q before rotation) − the model's q| (all layers, heads, tokens)",
        state.derived(rotary_check, loaded, trace),
    )
    lazy_section("Only the distance counts", "pos_exp_distance", lambda: only_the_distance(n_pos))


# ---------------------------------------------------------------- positions removed
def without_positions() -> None:
    """The same text, and two reorderings of one text, run with the positions taken out."""
    removal = (
        "every position vector `P[t]` is replaced by zeros, so each block reads the token embedding alone"
        if trace.position_vectors is not None
        else "every query and key is rotated as if it stood at position 0 — no rotation at all"
    )
    st.markdown(
        f"Run the same text again with the positions taken out: {removal}. Nothing else changes, and the "
        "causal mask still lets token t see only tokens ≤ t."
    )
    effect = state.position_effect(loaded, trace.text)
    left, right = st.columns(2)
    for container, run, name in ((left, effect.kept, "with positions"), (right, effect.removed, "without")):
        container.dataframe(
            pd.DataFrame(
                {f"next token ({name})": [readable(c.text) for c in run.top], "p": [c.prob for c in run.top]}
            ),
            hide_index=True,
            width="stretch",
        )
    m1, m2 = st.columns(2)
    m1.metric(
        "KL(with ‖ without positions)",
        f"{effect.kl_nats:.3g} nats",
        help="How far the next-token distribution moves when the positions are removed (0 = not at all).",
    )
    m2.metric(
        "Top prediction",
        "unchanged" if effect.kept.top[0].token_id == effect.removed.top[0].token_id else "changed",
    )

    st.markdown(
        "**Word order without positions.** Give two texts with the same tokens in another order and the "
        "same last token, and compare what the model predicts after each."
    )
    left, right = st.columns(2)
    text_a = left.text_input("Text A", **state.persist("order_a", "The dog bites the man. The"))
    text_b = right.text_input("Text B", **state.persist("order_b", "The man bites the dog. The"))
    try:
        order = state.order_effect(loaded, text_a, text_b)
    except VectorLabError as e:
        st.error(str(e))
    else:
        rows = []
        for kept in (True, False):
            for label, run_pair in (("A", order.a), ("B", order.b)):
                run = run_pair.kept if kept else run_pair.removed
                rows.append(
                    {
                        "positions": "kept" if kept else "removed",
                        "text": label,
                        **{
                            f"top {i + 1}": f"{readable(c.text)} ({c.prob:.1%})"
                            for i, c in enumerate(run.top[:3])
                        },
                    }
                )
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
        m1, m2 = st.columns(2)
        m1.metric("KL(A ‖ B), positions kept", f"{order.kl_kept:.3g} nats")
        m2.metric("KL(A ‖ B), positions removed", f"{order.kl_removed:.3g} nats")
        if order.prefix_permuted:
            m1, m2 = st.columns(2)
            m1.metric(
                "Block 0 output at the last token, max |A − B|, positions kept",
                f"{order.first_block_kept.error:.2e}",
            )
            check_metric(
                "Block 0 output at the last token, max |A − B|, positions removed",
                order.first_block_removed,
                container=m2,
            )
            st.caption(
                "Without positions the first block cannot tell A from B at the last token: its attention "
                "sees the earlier tokens as a set, and the two outputs differ by rounding only. The final "
                "predictions still differ, because the causal mask leaks order: in A and B each earlier "
                "token saw a different prefix, and the later blocks read those. A causal decoder is "
                "therefore never fully blind to order — positions make it explicit and easy to use."
            )
        else:
            st.info(
                "B is not A's tokens reordered with the same last token "
                f"({len(order.a.kept.token_ids)} vs {len(order.b.kept.token_ids)} tokens), so only the "
                "predictions are compared."
            )


lazy_section("What if the model had no positions?", "pos_exp_removed", without_positions)

# ---------------------------------------------------------------- predict, then reveal
quiz.render_questions(loaded, trace, station=2)
