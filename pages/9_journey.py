"""Station 9: one token followed end to end through one trace — embedding row, position, q/k/v and where
it attends, the residual stream, the logit lens, the final distribution, and its text's nearest chunks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st
from streamlit.errors import StreamlitAPIException

from core.errors import VectorLabError
from core.inspection.journey import attention_stop, embedding_stop, final_stop, residual_stop
from core.inspection.layers import layer_labels, lens_top_columns
from core.inspection.tokens import readable
from core.tolerance import check_within, float32_tolerance
from core.views import charts
from core.views.journey_charts import residual_journey, vector_strips
from ui import search_state, state
from ui.sidebar import render_sidebar
from ui.stations import STATIONS
from ui.widgets import check_metric, show_chart, token_picker

st.title("9 · One token's journey")
st.markdown(
    "**What happens.** Pick one token of your text and follow it through the model on one screen: the row "
    "of the embedding matrix it starts as, how its position enters, its query, key and value and the "
    "tokens it attends to, its vector after every block, what each depth would predict, and the final "
    "distribution. **Why it matters.** Each station shows one place for every token; here every number "
    "belongs to the same token, from the same forward pass, so you can see one vector become a prediction."
)

render_sidebar()
loaded = state.require_model()
trace = state.require_trace(loaded)
info = loaded.info
strings, _, embeddings = state.vocabulary(loaded)
labels = [readable(p) for p in trace.pieces]


def explained_in(number: int) -> None:
    """A link to the station that explains this step (plain text when opened without app.py)."""
    station = next(s for s in STATIONS if s.number == number)
    label = f"Explained in station {number}: {station.title}"
    try:
        st.page_link(station.page, label=label, icon=station.icon)
    except StreamlitAPIException:  # opened on its own, without app.py's navigation
        st.caption(label)


position = token_picker(trace.pieces, "Follow the token", key="journey_token")
stop = embedding_stop(trace, position, embeddings[trace.token_ids[position]])

# ---------------------------------------------------------------- 1. piece and id
st.subheader("1 · A piece of text becomes an id")
c1, c2, c3 = st.columns(3)
c1.metric("Piece", f"'{labels[position]}'")
c2.metric("Token id", f"{stop.token_id:,}")
c3.metric("Position t", f"{position} of {trace.n_tokens}")
explained_in(1)

# ---------------------------------------------------------------- 2. embedding row
st.subheader("2 · The id picks a row of the embedding matrix: x = E[id]")
show_chart(
    vector_strips({"E[id]": stop.embedding}, title=f"E[{stop.token_id}] ({len(stop.embedding)} numbers)"),
    "journey_embedding",
)
c1, c2 = st.columns(2)
c1.metric("‖E[id]‖", f"{stop.embedding_norm:.4f}")
check_metric("Check: max |the model's row − E[id] read from the weights|", stop.lookup_check, c2)
explained_in(1)

# ---------------------------------------------------------------- 3. position
if stop.position_vector is not None:
    st.subheader("3 · Its position vector is added: block input = E[id] + P[t]")
    show_chart(
        vector_strips(
            {"E[id]": stop.embedding, "+ P[t]": stop.position_vector, "= block input": stop.block_input},
            title=f"Token {position}: embedding, position vector and their sum",
        ),
        "journey_position",
    )
    c1, c2 = st.columns(2)
    c1.metric("‖P[t]‖", f"{float(np.linalg.norm(stop.position_vector)):.4f}")
    check_metric("Check: max |(E[id] + P[t]) − block input|", stop.input_check, c2)
else:
    st.subheader("3 · No position vector: its queries and keys will be rotated by t · θ_i")
    show_chart(
        vector_strips(
            {f"angle at t = {position}": stop.angles},
            title="Rotation angle of each q/k pair at this position (radians mod 2π)",
            value_title="angle",
        ),
        "journey_angles",
    )
    st.caption("Pair i turns by t · θ^(−2i/d_head): the first pairs spin fast, the last ones barely move.")
    check_metric("Check: max |E[id] − block input| (nothing is added)", stop.input_check)
explained_in(2)

# ---------------------------------------------------------------- 4. attention
st.subheader("4 · Its query, key and value, and where it looks")
c1, c2 = st.columns(2)
layer = c1.slider(
    "Layer", 0, info.n_layer - 1, **state.persist("journey_layer", 0, allowed=range(info.n_layer))
)
head = c2.slider("Head", 0, info.n_head - 1, **state.persist("journey_head", 0, allowed=range(info.n_head)))
att = attention_stop(trace, position, layer, head)
show_chart(
    vector_strips(
        {"q": att.q, "k": att.k, "v": att.v},
        title=f"Layer {layer}, head {head} (K/V head {att.steps.kv_head}): the token's q, k and v",
    ),
    "journey_qkv",
)
left, right = st.columns([3, 2])
show_chart(
    charts.bars(
        [f"{a.position}: {readable(a.piece)}" for a in att.top],
        [a.weight for a in att.top],
        title=f"Where '{labels[position]}' looks: softmax(q·Kᵀ/√d_head + mask)",
        value_title="attention weight",
    ),
    "journey_attended",
    container=left,
)
right.metric("‖q‖ · ‖k‖ · ‖v‖", " · ".join(f"{np.linalg.norm(x):.2f}" for x in (att.q, att.k, att.v)))
check_metric("Check: our softmax row − the model's weights", att.steps.weights_check, right)
check_metric("Check: our Σ w·v − the model's head output", att.steps.output_check, right)
if att.rotary_check is not None:
    check_metric(f"Check: our RoPE(q) at t = {position} − the model's q", att.rotary_check, right)
explained_in(3)

# ---------------------------------------------------------------- 5. residual stream
st.subheader("5 · Its vector after every block: x_(ℓ+1) = x_ℓ + attention + MLP")
res = residual_stop(trace, position)
depths = layer_labels(info.n_layer)
sizes, turns = residual_journey(depths, res.norms, res.attn_norms, res.mlp_norms, res.cos_prev)
show_chart(sizes, "journey_residual")
show_chart(turns, "journey_turns")
st.dataframe(
    pd.DataFrame(
        {
            "depth": depths,
            "‖x‖": res.norms,
            "cosine to previous": [None, *res.cos_prev],
            "‖attention update‖": [None, *res.attn_norms],
            "‖MLP update‖": [None, *res.mlp_norms],
        }
    ),
    hide_index=True,
    width="stretch",
)
check_metric("Check: max |x_ℓ + attention + MLP − x_(ℓ+1)| for this token", res.sum_check)
explained_in(4)

# ---------------------------------------------------------------- 6. logit lens
st.subheader("6 · What each depth would predict: softmax(W_U · norm(x_ℓ))")
lens = state.logit_lens(loaded, trace, [position])
lens_table = pd.DataFrame({"depth": depths, **lens_top_columns(lens, strings, 0)})
if lens.target_ids[0] >= 0:
    lens_table[f"rank of '{strings[lens.target_ids[0]]}' (real next)"] = lens.target_rank[:, 0]
st.dataframe(lens_table, hide_index=True, width="stretch")
check_metric("Check: the last depth's reading − the model's own output", lens.final_check)
explained_in(4)

# ---------------------------------------------------------------- 7. final distribution
st.subheader("7 · The model's next-token distribution after this token")
final = final_stop(loaded, trace, position)
show_chart(
    charts.bars(
        [strings[i] for i in final.top_ids],
        final.top_probs,
        title=f"Most likely tokens after '{labels[position]}'",
        value_title="probability",
        highlight=[final.next_id is None or int(i) == final.next_id for i in final.top_ids],
    ),
    "journey_final",
)
if final.next_id is not None:
    st.caption(
        f"The text continues with '{strings[final.next_id]}', which the model gave p = {final.next_prob:.4f}"
        + (" (blue bar)." if final.next_id in final.top_ids else f", outside its top {len(final.top_ids)}.")
    )
else:
    st.caption("This is the last token: these are the model's guesses for the text's continuation.")
check_metric("Check: softmax(W_U · norm(x_L)) here − the model's probabilities", final.check)
explained_in(5)

# ---------------------------------------------------------------- 8. nearest chunks
st.subheader("8 · Its text as one sentence vector: the nearest chunks in your index")
search_state.init_search_state()
collection = st.session_state[search_state.COLLECTION]
location, client = search_state.require_store()
sizes_by_name = {c.name: c.count() for c in client.list_collections()}
if sizes_by_name.get(collection, 0) == 0:
    st.info(
        f"Nothing is indexed in the collection '{collection}' yet, so there are no chunks to compare this "
        "text with. Add documents in station 7, then come back."
    )
else:
    embedder = search_state.require_embedder()
    index = search_state.require_index(client, collection)
    try:
        result = index.search(trace.text, k=3)
    except VectorLabError as e:
        st.info(str(e))
    else:
        st.markdown(
            f"The whole text this token belongs to, embedded by {embedder.name} as one "
            f"{embedder.dimension}-d vector, against the {sizes_by_name[collection]} chunks of "
            f"'{collection}'."
        )
        st.dataframe(
            pd.DataFrame(
                {
                    "rank": [h.rank for h in result.hits],
                    "document": [h.doc_name for h in result.hits],
                    "chunk": [h.chunk_index for h in result.hits],
                    "cosine": [h.cosine for h in result.hits],
                    "text": [h.text[:160] for h in result.hits],
                }
            ),
            hide_index=True,
            width="stretch",
        )
        # Chroma's cosine (1 − its stored distance) against q·c computed here: the vectors are unit
        # length, and the store's float32 dot runs over the embedding's width.
        check_metric(
            "Check: Chroma's cosine − q·c computed here",
            check_within(
                [h.cosine for h in result.hits],
                [h.dot for h in result.hits],
                float32_tolerance(1.0, reduction_length=embedder.dimension),
            ),
        )
explained_in(7)
