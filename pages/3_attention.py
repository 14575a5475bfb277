"""Station 3: self-attention — one head's map and one token's softmax(QKᵀ/√d)·V step by step first;
every head at once, the vectors, rotary and the q/k/v projections in sections drawn when opened."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from core.inspection.attention import all_heads_check, attention_grid_image, head_patterns, head_steps
from core.inspection.tokens import readable
from core.views import charts
from ui import quiz, state
from ui.sidebar import render_sidebar
from ui.widgets import check_metric, downloads, lazy_section, show_chart, token_picker, token_window

st.title("3 · Self-attention")
st.markdown(
    "**What happens.** Every token's vector is projected three ways: a **query** q (what am I looking "
    "for?), a **key** k (what do I offer?) and a **value** v (what do I pass on?). A head scores its "
    "query against every earlier key, `softmax(q·Kᵀ/√d_head + mask)`, and returns the weighted sum of "
    "the value rows. **Why it matters.** This is the only place where tokens exchange information; "
    "each head learns its own notion of which other tokens are relevant."
)

render_sidebar()
loaded = state.require_model()
trace = state.require_trace(loaded)
info = loaded.info
labels = [readable(p) for p in trace.pieces]
patterns = state.derived(head_patterns, loaded, trace)


# ---------------------------------------------------------------- one head
st.subheader("One head's attention map")
c1, c2 = st.columns(2)
layer = c1.selectbox(
    "Layer", range(info.n_layer), **state.persist("att_layer", 0, allowed=range(info.n_layer))
)
head = c2.selectbox("Head", range(info.n_head), **state.persist("att_head", 0, allowed=range(info.n_head)))
st.info(patterns.hint(layer, head))
window = token_window(trace.n_tokens, key="att_window", size=24)
A = trace.attention_layers[layer][head][window, window].astype(np.float64)
masked = np.where(np.triu(np.ones_like(A, dtype=bool), k=1), np.nan, A)
show_chart(
    charts.heatmap(
        masked,
        labels[window],
        labels[window],
        title=f"Layer {layer}, head {head}: attention weights (blank = masked future)",
        row_title="query token",
        col_title="key token",
        value_title="weight",
        scheme="blues",
        domain_mid=None,
    ),
    "attention_2",
)

# ---------------------------------------------------------------- one token, step by step
st.subheader("One token, step by step")
position = token_picker(trace.pieces, "Query token", key="att_token")
s = head_steps(trace, layer, head, position)
keys_window = slice(max(0, position + 1 - 24), position + 1)  # the visible keys: up to 24 before the query
key_labels = labels[keys_window]
dh = info.d_head
st.markdown(
    f"**1–2.** Take the query `q` of '{labels[position]}' ({dh} numbers) and the keys `K` of every token "
    f"it may see (K/V head {s.kv_head}). **3–6. Scores to weights.** Dot each key with the query, scale "
    "by `1/√d_head` so the scores do not grow with the width, add the mask (−∞ for later tokens — none "
    "of them are in this list), softmax."
)
steps = pd.DataFrame(
    {
        "key token": [f"{i}:{labels[i]}" for i in range(keys_window.start, keys_window.stop)],
        "3. q·k": s.raw_scores[keys_window],
        f"4. × 1/√{dh} = {s.scale:.4f}": s.scaled_scores[keys_window],
        "5. + mask": (s.scaled_scores + s.mask)[keys_window],
        "6. softmax": s.weights[keys_window],
        "model's weight": s.model_weights[keys_window],
    }
)
st.dataframe(steps, hide_index=True, width="stretch")
st.markdown("**7. The weighted sum of value rows** `Σ_j w_j · v_j` is the head's output.")
c1, c2 = st.columns(2)
check_metric("Check: max |hand-computed output − model's head output|", s.output_check, container=c1)
all_heads = state.derived(all_heads_check, loaded, trace)
check_metric("Every layer, head and token", all_heads, container=c2)


def draw_vectors() -> None:
    """Steps 1, 2, 6 and 7 as pictures: q, the keys, the weights, the output by hand and the model's."""
    show_chart(
        charts.heatmap(
            s.q[None, :],
            ["q"],
            None,
            row_title="vector",
            col_title="dimension",
            show_col_labels=False,
            height=100,
        ),
        "attention_3",
    )
    show_chart(
        charts.heatmap(
            s.keys[keys_window],
            key_labels,
            None,
            title=f"The keys K (K/V head {s.kv_head})",
            row_title="key token",
            col_title="dimension",
            show_col_labels=False,
        ),
        "attention_4",
    )
    show_chart(
        charts.bars(
            key_labels,
            s.weights[keys_window],
            title="Attention weights of this query",
            value_title="weight",
            sort_desc=False,
            label_title="key token",
        ),
        "attention_5",
    )
    show_chart(
        charts.heatmap(
            np.stack([s.output, s.model_output]),
            ["by hand", "model"],
            None,
            title="The head's output: Σ_j w_j · v_j",
            row_title="vector",
            col_title="dimension",
            show_col_labels=False,
            height=120,
        ),
        "attention_6",
    )


def draw_downloads() -> None:
    """This head's whole attention map, and this token's q and outputs."""
    st.caption(f"Layer {layer}, head {head}: the attention map over every token.")
    downloads(
        f"attention_L{layer}_H{head}", trace.attention_layers[layer][head], labels, labels, key="att_map"
    )
    st.caption(f"Token {position}: q, the output by hand and the model's output.")
    downloads(
        f"qkv_L{layer}_H{head}_T{position}",
        np.stack([s.q, s.output, s.model_output]),
        ["q", "output (hand)", "output (model)"],
        key="att_vectors",
    )


def draw_every_head() -> None:
    """All layers × heads as one image of small maps, and a table of what each head attends to."""
    grid_col, table_col = st.columns([2, 3])
    grid = attention_grid_image(trace, window, tile=22, gap=3)
    grid_col.image(
        grid,
        width=min(int(grid.shape[1] * 1.6), 560),
        caption=f"Rows: layers 0–{info.n_layer - 1} (top to bottom). Columns: heads 0–{info.n_head - 1}. "
        "Each square is one head's attention map (query ↓, key →, brightest = most attention); "
        "grey = the causal mask.",
    )
    stat = table_col.radio(
        "Colour the layer × head table by",
        ["previous token", "first token", "itself", "entropy (bits)"],
        horizontal=True,
        **state.persist("att_stat", "previous token"),
    )
    matrix = {
        "previous token": patterns.previous,
        "first token": patterns.first,
        "itself": patterns.self_,
        "entropy (bits)": patterns.entropy,
    }[stat]
    entropy = "entropy" in stat
    show_chart(
        charts.heatmap(
            matrix,
            [f"layer {i}" for i in range(info.n_layer)],
            [f"head {h}" for h in range(info.n_head)],
            title="Mean entropy of each head's rows" if entropy else f"Mean attention share on: {stat}",
            row_title="layer",
            col_title="head",
            value_title="bits" if entropy else "share",
            scheme="viridis",
            domain_mid=None,
        ),
        "attention_1",
        container=table_col,
    )


def draw_rotary() -> None:
    """Family detail: q and k before and after rotary, and which query heads share a K/V head."""
    before = trace.q_pre_rotary_layers[layer][head, position]
    after = trace.q_layers[layer][head, position]
    k_before = trace.k_pre_rotary_layers[layer][s.kv_head, position]
    k_after = trace.k_layers[layer][s.kv_head, position]
    show_chart(
        charts.heatmap(
            np.stack([before, after, k_before, k_after]),
            ["q before rotary", "q after rotary", "k before rotary", "k after rotary"],
            None,
            row_title="vector",
            col_title="dimension",
            show_col_labels=False,
            height=160,
        ),
        "attention_7",
    )
    st.caption(
        f"Same length before and after ({np.linalg.norm(before):.3f} vs {np.linalg.norm(after):.3f}): "
        "rotation only turns the pairs, by angles that grow with the position. The token's own key "
        f"(K/V head {s.kv_head}) is turned by exactly the same angles."
    )
    group = info.n_head // info.n_kv_head
    st.markdown(
        f"**Grouped-query attention.** {info.n_head} query heads share {info.n_kv_head} key/value heads: "
        f"every {group} consecutive query heads read the same K and V, which shrinks the KV cache {group}×."
    )
    st.dataframe(
        pd.DataFrame(
            {"query head": range(info.n_head), "K/V head": [trace.kv_head_of(h) for h in range(info.n_head)]}
        ).T,
        width="stretch",
    )


def draw_projections() -> None:
    """Where q, k and v come from in this family, recomputed from the block's input and checked."""
    split = state.qkv_split(loaded, trace, layer)
    shapes = ", ".join(f"`{name}` {shape}" for name, shape in split.modules)
    st.markdown(
        f"{info.name} computes q, k and v with {split.layout}: {shapes}. Each head reads its own "
        f"{info.d_head} columns of q (and of its shared k and v)."
    )
    check_metric(
        "Check: max |projections of norm(x), split into heads − the trace's Q, K, V| (this layer)",
        split.check,
    )


lazy_section("The vectors of these steps: q, K, the weights and the output", "att_exp_vectors", draw_vectors)
lazy_section("Every head at once: all maps, and what each head attends to", "att_exp_heads", draw_every_head)
if trace.rotary is not None:
    lazy_section("Rotary positions and shared keys", "att_exp_rotary", draw_rotary)
lazy_section("Where q, k and v come from (checked on this layer)", "att_exp_qkv", draw_projections)
lazy_section("Download these numbers", "att_exp_download", draw_downloads)

# ---------------------------------------------------------------- predict, then reveal
quiz.render_questions(loaded, trace, station=3)
