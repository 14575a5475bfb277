"""Station 5: the output softmax — the next-token distribution, how sampling reshapes it, generation."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.errors import VectorLabError
from core.inspection.generation import generate_steps, surprisal
from core.inspection.sampling import SamplingConfig
from core.tolerance import EPS64, check_close
from core.views.output_charts import (
    distribution_chart,
    entropy_chart,
    generated_html,
    probability_legend_html,
    surprisal_chart,
)
from ui import quiz, state
from ui.sidebar import render_sidebar
from ui.widgets import check_metric, downloads, lazy_section, show_chart

st.title("5 · Output softmax")
st.markdown(
    "**What happens.** The last vector goes through the final norm and the unembedding matrix, giving "
    "one score (logit) per vocabulary entry; `softmax(logits / T)` turns them into probabilities, and "
    "sampling picks a token. **Why it matters.** Everything the model computed ends in this one "
    "distribution — temperature, top-k and top-p only reshape it, and generation repeats it token by token."
)

render_sidebar()
loaded = state.require_model()
trace = state.require_trace(loaded)
n_vocab = loaded.info.vocab_size

# ---------------------------------------------------------------- controls
st.subheader("The next-token distribution")
c1, c2, c3, c4 = st.columns(4)
temperature = c1.number_input(
    "Temperature",
    0.0,
    100.0,
    step=0.1,
    help="0 = always the most likely token (greedy).",
    **state.persist("out_temperature", 1.0, allowed=state.Between(0.0, 100.0)),
)
top_k = c2.number_input(
    "Top-k (0 = off)",
    0,
    n_vocab,
    step=1,
    **state.persist("out_top_k", 0, allowed=range(n_vocab + 1)),
)
top_p = c3.slider(
    "Top-p (1 = off)",
    0.0,
    1.0,
    step=0.01,
    **state.persist("out_top_p", 1.0, allowed=state.Between(0.0, 1.0)),
    help="Keep the most likely tokens until their probability reaches top-p (always at least one). "
    "Where tokens of exactly equal probability straddle the cut, the higher token ids are kept, as in "
    "Hugging Face's TopPLogitsWarper.",
)
n_show = c4.slider("Tokens shown", 5, 40, **state.persist("out_n", 15, allowed=state.Between(5, 40)))
try:
    config = SamplingConfig(temperature=float(temperature), top_k=int(top_k), top_p=float(top_p))
except VectorLabError as e:
    st.error(str(e))
    st.stop()

dist, entries = state.next_token(loaded, trace, config, n_show)
show_chart(
    distribution_chart(entries, title=f"After '{trace.pieces[-1]}': model vs reshaped", show_tempered=True),
    "output_1",
)
m1, m2, m3, m4 = st.columns(4)
m1.metric("Tokens kept", f"{dist.n_kept:,}", help=f"Out of the {dist.vocab_size:,} in the vocabulary.")
m2.metric("Entropy (model)", f"{dist.entropy_before.bits:.2f} bits")
m3.metric("Entropy (reshaped)", f"{dist.entropy_after.bits:.2f} bits")
# Σ p is summed in float64 over the whole vocabulary: it is 1 up to that sum's rounding.
check_metric(
    "Check: Σ p",
    check_close(dist.final.sum(), 1.0, dist.vocab_size, eps=EPS64),
    m4,
    f"{dist.final.sum():.6f}",
)
if config.is_greedy:
    st.caption("Temperature 0: the distribution collapses onto the single most likely token.")
elif dist.n_kept < dist.vocab_size:
    st.caption(
        "Grey bars were cut by top-k / top-p; the survivors are renormalised to sum to 1, so each kept "
        "token's final probability is its tempered probability divided by the kept mass."
    )
# Secondary material sits in sections drawn only once opened: each one opened reruns the page.
lazy_section(
    "Download these probabilities",
    "out_exp_download",
    lambda: downloads(
        "next_token_probabilities",
        pd.DataFrame([e.__dict__ for e in entries]).drop(columns=["text"]).to_numpy(dtype=float),
        [e.text for e in entries],
        ["token_id", "p_original", "p_tempered", "p_final", "kept"],
        key="out_dist",
    ),
)


def draw_step(result) -> None:
    """One generated step's distribution, picked with a slider."""
    step_index = (
        st.slider(
            "Inspect step", 0, result.n_new - 1, **state.persist("gen_step", 0, allowed=range(result.n_new))
        )
        if result.n_new > 1
        else 0
    )
    step = result.steps[step_index]
    st.markdown(
        f"Step {step.step}: chose **{step.text!r}** with p = {step.prob:.3f} "
        f"(the model's own p = {step.prob_model:.3f}; {step.n_kept:,} tokens were in the running)."
    )
    show_chart(
        distribution_chart(list(step.candidates), title=f"Step {step.step}'s distribution"), "output_3"
    )


# ---------------------------------------------------------------- generation
st.subheader("Generate, one step at a time")
c1, c2, c3 = st.columns(3)
n_new = c1.slider("New tokens", 1, 64, **state.persist("gen_n", 12, allowed=state.Between(1, 64)))
decodings = ["greedy", "sample with the settings above"]
mode = c2.radio("Decoding", decodings, **state.persist("gen_mode", "greedy", allowed=decodings))
seed = c3.number_input("Seed", 0, 2**31 - 1, **state.persist("gen_seed", 0, allowed=range(2**31)))
gen_config = SamplingConfig(
    temperature=config.temperature,
    top_k=config.top_k,
    top_p=config.top_p,
    seed=int(seed),
    greedy=mode == "greedy",
)
# A generation belongs to one model and one set of inputs; any other shows nothing of it.
gen_key = (state.model_key(loaded), trace.text, int(n_new), gen_config)
if st.button("Generate", type="primary", key="gen_go"):
    bar = st.progress(0.0, text="Generating…")

    def on_step(step) -> None:
        bar.progress((step.step + 1) / n_new, text=f"Token {step.step + 1} of {n_new}: {step.text!r}")

    try:
        state.keep_result(
            state.GENERATION, gen_key, generate_steps(loaded, trace.text, n_new, gen_config, on_step=on_step)
        )
    except VectorLabError as e:
        st.error(str(e))
    bar.empty()

result = state.kept_result(state.GENERATION, gen_key)
if result is not None:
    st.html(generated_html(result, by="model") + probability_legend_html())
    st.caption(
        f"{result.n_new} tokens in {result.seconds:.2f} s ({result.tokens_per_second:.1f} tokens/s)"
        + (" — stopped at end-of-sequence." if result.stopped_at_eos else ".")
    )
    show_chart(entropy_chart(result, title="Entropy of each step's distribution"), "output_2")
    lazy_section("Inspect one step's distribution", "out_exp_step", lambda: draw_step(result))
elif state.result_is_stale(state.GENERATION, gen_key):
    st.caption("The model, the text or the settings changed since the last generation; press Generate again.")


# ---------------------------------------------------------------- surprisal
def draw_surprisal() -> None:
    s = surprisal(trace)
    st.markdown(s.message)
    if s.perplexity is not None:
        c1, c2 = st.columns(2)
        c1.metric("Mean surprisal", f"{s.mean_bits:.2f} bits/token")
        c2.metric("Perplexity", f"{s.perplexity:.2f}")
        show_chart(
            surprisal_chart(s, title="Surprisal of each token, −log₂ p(token | earlier tokens)"),
            "output_4",
        )
        downloads("surprisal_bits", s.bits, list(s.pieces), key="out_surprisal")


lazy_section("How surprised was the model by your text?", "out_exp_surprisal", draw_surprisal)

# ---------------------------------------------------------------- predict, then reveal
quiz.render_questions(loaded, trace, station=5)
