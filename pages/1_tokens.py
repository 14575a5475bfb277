"""Station 1: the text as BPE pieces and ids, their embedding rows, nearest tokens and a 2-D map."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.inspection.tokens import readable, tokenize_plain
from core.tolerance import check_close
from core.views import charts
from core.views.token_html import pieces_html
from ui import quiz, state
from ui.sidebar import render_sidebar
from ui.widgets import downloads, lazy_section, show_chart

ROWS_SHOWN = 16  # heatmap rows at a time: each cell is drawn by the browser on every visit

st.title("1 · Tokens & token embeddings")
st.markdown(
    "**What happens.** The tokenizer cuts the text into byte-pair-encoding (BPE) pieces and gives each "
    "an id. The id picks one row of the embedding matrix **E** (vocabulary × width): `x = E[id]`. "
    "**Why it matters.** That row is all the model knows about the token when it starts; tokens used "
    "alike end up with rows pointing the same way, so cosine similarity finds related tokens."
)

render_sidebar()
loaded = state.require_model()
trace = state.require_trace(loaded)
info = loaded.info
strings, _, embeddings = state.vocabulary(loaded)

# ---------------------------------------------------------------- pieces and ids
st.subheader("The pieces")
c1, c2, c3 = st.columns(3)
c1.metric("Characters", len(trace.text))
c2.metric("Tokens", trace.n_tokens)
c3.metric("Characters per token", f"{len(trace.text) / max(trace.n_tokens, 1):.2f}")
st.html(pieces_html(trace.pieces, trace.token_ids))
st.caption("Hover a piece for its position; '␣' is a leading space, which BPE keeps inside the piece.")

gpt2 = tokenize_plain(state.gpt2_tokenizer(), trace.text, "GPT-2")
mine = tokenize_plain(loaded.tokenizer, trace.text, info.name)
if gpt2.ids != mine.ids:
    st.markdown(f"**GPT-2's tokenizer on the same text** — {len(gpt2.ids)} tokens vs {len(mine.ids)}:")
    st.html(pieces_html(gpt2.pieces, gpt2.ids))
    st.caption("Different vocabularies cut the same text differently, so their ids mean different things.")

# ---------------------------------------------------------------- embedding rows
st.subheader("Their embedding rows")
T, d = trace.token_embeddings.shape
left, right = st.columns(2)
max_rows = min(T, ROWS_SHOWN)
start = (
    left.number_input(
        f"First token ({ROWS_SHOWN} rows at a time)",
        0,
        T - 1,
        **state.persist("tok_rows_start", 0, allowed=range(T)),
    )
    if T > max_rows
    else 0
)
n_rows = min(max_rows, T - start)
max_dims = min(d, charts.MAX_CELLS // max(n_rows, 1))  # a wider model would pass the heatmap's cell cap
dims = right.slider(
    "Dimensions shown",
    8,
    max_dims,
    **state.persist("tok_dims", min(max_dims, 64), allowed=state.Between(8, max_dims)),
)
rows = trace.token_embeddings[start : start + n_rows, :dims]
labels = [readable(p) for p in trace.pieces[start : start + n_rows]]
show_chart(
    charts.heatmap(
        rows,
        labels,
        [str(i) for i in range(dims)],
        title=f"E[id] for each token (first {dims} of {d} dims)",
        row_title="token",
        col_title="dimension",
        show_col_labels=dims <= 64,
    ),
    "tokens_1",
)
check = check_close(trace.token_embeddings, embeddings[trace.token_ids], reduction_length=0)  # a lookup
st.caption(
    f"Check: max |trace's token vectors − E[ids]| = {check.error:.2e}, {check.summary()} "
    "(the model really looks up these rows)."
)
downloads("token_embeddings", trace.token_embeddings, [f"{i}:{p}" for i, p in enumerate(trace.pieces)])

# ---------------------------------------------------------------- neighbours
st.subheader("Nearest tokens by cosine similarity")
st.markdown(f"`cos(a, b) = a·b / (‖a‖ ‖b‖)` against every row of E, all {len(strings):,} of them.")
left, right = st.columns([2, 1])
position = left.selectbox(
    "Token",
    range(T),
    format_func=lambda i: f"{i}: {readable(trace.pieces[i])}",
    **state.persist("tok_choice", min(3, T - 1), allowed=range(T)),
)
k = right.slider("Neighbours", 3, 30, **state.persist("tok_k", 10, allowed=state.Between(3, 30)))
token_id = int(trace.token_ids[position])
neighbours = state.nearest_tokens(loaded, token_id, k)
show_chart(
    charts.bars(
        [n.text for n in neighbours],
        [n.cosine for n in neighbours],
        title=f"Closest rows to '{strings[token_id]}' (id {token_id})",
        value_title="cosine",
    ),
    "tokens_2",
)

# ---------------------------------------------------------------- 2-D map
MAP_SECTION = "tok_exp_map"  # the map's expander: drawn (and its PCA computed) only while open


def draw_map() -> None:
    per_token = st.slider(
        "Neighbours per token on the map",
        0,
        10,
        **state.persist("tok_map_k", 4, allowed=state.Between(0, 10)),
    )
    ids_for_map = list(dict.fromkeys(int(t) for t in trace.token_ids))[:40]
    points = state.token_map(loaded, ids_for_map, per_token)
    show_chart(
        charts.token_map(
            pd.DataFrame([p.__dict__ for p in points]),
            title="First two principal components of the rows (bold: tokens of your text)",
        ),
        "tokens_3",
    )
    st.caption(
        f"PCA keeps the two directions along which these {len(points)} rows vary most; "
        "points close here are often close in the full space too, but not always."
        + (
            " Only the first 40 distinct tokens are mapped."
            if len(set(trace.token_ids.tolist())) > 40
            else ""
        )
    )


lazy_section("A 2-D map of the sentence among its neighbours", MAP_SECTION, draw_map)

# ---------------------------------------------------------------- predict, then reveal
quiz.render_questions(loaded, trace, station=1)
