"""Station 8: fine-tune the loaded model from the browser and watch the gradients and Adam move it."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import streamlit as st

from core import charts
from core.documents import parse_files
from core.errors import VectorLabError
from core.finetune import TRAIN_PARTS, FineTuneRun, TrainConfig, prepare_data
from core.finetune_arch import bf16_supported
from core.finetune_compare import attention_change, compare_logit_lens, compare_next_token, weight_drift
from core.jobs import FAILED, FINISHED, RUNNING, STOPPED, STOPPING
from core.tokens import readable
from core.training_charts import (
    attention_change_chart,
    drift_chart,
    grad_norm_chart,
    logit_lens_chart,
    loss_chart,
    next_token_chart,
)
from ui import search_state, state
from ui.sidebar import render_sidebar
from ui.widgets import downloads, show_chart

DEFAULT_TRAINING_TEXT = (
    "Vector Lab turns every token into a vector. The vector flows through attention and the MLP, "
    "layer after layer, and the last vector becomes a probability for every next token. "
) * 40

st.title("8 · Training with gradients")
st.markdown(
    "**What happens.** The model reads your text and, at every position, is scored by the cross-entropy "
    "of the real next token. Back-propagation turns that loss into a **gradient** for every weight — a "
    "vector pointing uphill — and **AdamW** steps each weight against its own running average of "
    "gradients: `w ← w − lr · m̂ / (√v̂ + ε)`. **Why it matters.** These gradient vectors are what made "
    "every other vector in the app; here you watch them change the model."
)

render_sidebar()
loaded = state.require_model()
job = state.training_job()
snap = job.snapshot()

# ---------------------------------------------------------------- data
st.subheader("1 · The training text")
source = st.radio(
    "Train on",
    ["pasted text", "uploaded .txt / .md files", "documents indexed for search"],
    horizontal=True,
    key="train_source",
    disabled=snap.active,
)
texts: list[str] = []
if source == "pasted text":
    pasted = st.text_area("Text", DEFAULT_TRAINING_TEXT, height=150, key="train_text", disabled=snap.active)
    texts = [pasted]
elif source == "documents indexed for search":
    location, client = search_state.require_store()
    index = search_state.require_index(client, st.session_state.get(search_state.COLLECTION) or "documents")
    documents = index.list_documents()
    if not documents:
        st.info("Nothing is indexed yet: add documents on the Vector search page, or pick another source.")
        st.stop()
    chosen = st.multiselect(
        "Documents",
        documents,
        default=documents,
        format_func=lambda d: d.name,
        key="train_docs",
        disabled=snap.active,
    )
    texts = [index.document_text(d.content_hash) for d in chosen]
    st.caption(f"From the collection '{index.name}' in {location.describe()}.")
else:
    files = st.file_uploader(
        "Text files", type=["txt", "md"], accept_multiple_files=True, key="train_files", disabled=snap.active
    )
    report = parse_files([(f.name, f.getvalue()) for f in files or []])
    for error in report.errors:
        st.error(f"{error.name}: {error.message}")
    texts = [d.text for d in report.documents]
    if files and not texts:
        st.stop()

# ---------------------------------------------------------------- settings
st.subheader("2 · Settings")
c1, c2, c3, c4 = st.columns(4)
lr = c1.number_input("Learning rate", 1e-7, 1.0, 1e-4, format="%.1e", key="train_lr", disabled=snap.active)
steps = c2.number_input("Steps", 1, 10_000, 30, key="train_steps", disabled=snap.active)
batch_size = c3.number_input("Batch size", 1, 64, 4, key="train_batch", disabled=snap.active)
seq_len = c4.number_input("Sequence length", 8, 1024, 64, step=8, key="train_seq", disabled=snap.active)
c1, c2, c3, c4 = st.columns(4)
part_labels = {"all": "everything", "last_n_blocks": "the last N blocks", "embeddings": "the embeddings only"}
train_part = c1.selectbox(
    "Train", TRAIN_PARTS, format_func=part_labels.get, key="train_part", disabled=snap.active
)
n_last = c2.number_input(
    "N (last blocks)",
    1,
    loaded.info.n_layer,
    min(2, loaded.info.n_layer),
    key="train_n_last",
    disabled=snap.active or train_part != "last_n_blocks",
)
seed = c3.number_input("Seed", 0, 2**31 - 1, 0, key="train_seed", disabled=snap.active)
checkpoint = c4.text_input("Save as checkpoint", "my-finetune", key="train_ckpt", disabled=snap.active)
has_bf16 = bf16_supported()
bf16 = st.toggle(
    "bf16 autocast",
    False,
    key="train_bf16",
    disabled=snap.active or not has_bf16,
    help="Faster where the CPU/GPU has bfloat16 matrix units; slightly less exact."
    if has_bf16
    else "This machine has no bfloat16 matrix units, so bf16 would be slower here: off.",
)

config = None
data = None
try:
    config = TrainConfig(
        lr=float(lr),
        steps=int(steps),
        batch_size=int(batch_size),
        seq_len=int(seq_len),
        train_part=train_part,
        n_last_blocks=int(n_last),
        seed=int(seed),
        bf16=bool(bf16),
    )
    data = prepare_data(texts, loaded.tokenizer, config)
except (ValueError, VectorLabError) as e:
    st.error(str(e))

if data is not None:
    summary = data.summary
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Tokens", f"{summary.n_tokens:,}")
    c2.metric("Training sequences", summary.n_train_sequences)
    c3.metric("Held-out sequences", summary.n_eval_sequences)
    c4.metric("Tokens per step", f"{config.batch_size * config.seq_len:,}")
    st.caption(
        f"The last {summary.n_eval_tokens:,} tokens are held out: the held-out loss is measured on text the "
        "model never trains on. The time estimate appears after the first step, from its measured speed."
    )

# ---------------------------------------------------------------- control
st.subheader("3 · Run")
b1, b2, b3, b4 = st.columns(4)
start = b1.button("Start", type="primary", key="train_start", disabled=snap.active or data is None)
stop = b2.button("Stop", key="train_stop", disabled=snap.status != RUNNING)
resume = b3.button("Resume", key="train_resume", disabled=snap.status != STOPPED)
discard = b4.button("Discard run", key="train_discard", disabled=snap.active or job.run is None)
try:
    if start:
        run = FineTuneRun.from_loaded(loaded, data, config, checkpoint_name=checkpoint.strip() or None)
        job.start(run, label=f"{loaded.info.name}, {data.summary.n_tokens:,} tokens")
    elif stop:
        job.stop()
    elif resume:
        job.resume()
    elif discard:
        job.discard()
except (ValueError, VectorLabError) as e:
    st.error(str(e))
else:
    if start or stop or resume or discard:
        st.rerun()  # redraw the buttons and the live view for the job's new state


@st.fragment(run_every=1.0 if snap.active else None)
def live() -> None:
    """Redrawn every second while the job runs, without rerunning the whole page."""
    s = job.snapshot()
    if snap.active and not s.active:
        st.rerun()  # the run just ended: redraw the whole page (buttons, gradients, before/after)
    if job.run is None:
        st.info("No run yet: pick the text and settings above, then press Start.")
        return
    run = job.run
    eta = s.last.eta_s if s.last is not None else math.nan
    eta_text = "" if math.isnan(eta) else f" · about {eta:,.0f} s left (measured)"
    label = {
        RUNNING: "Training",
        STOPPING: "Stopping after this step",
        STOPPED: "Stopped — press Resume",
        FINISHED: "Finished",
        FAILED: "Failed",
    }.get(s.status, s.status)
    st.progress(s.fraction, text=f"{label}: step {s.step} of {s.steps}{eta_text} — {job.label}")
    if s.error:
        st.error(s.error)
    if s.status == FINISHED and s.result is not None and s.result.checkpoint is not None:
        st.success(
            f"Saved checkpoint '{s.result.checkpoint.name}' at {s.result.checkpoint.path}. "
            "It is now in the model picker, so every other page can inspect it."
        )
    if not s.history:
        return
    last = s.last
    c1, c2, c3, c4 = st.columns(4)
    c1.metric(
        "Loss",
        f"{last.loss:.4f}",
        delta=f"{last.loss - s.history[0].loss:+.4f} since step 1",
        delta_color="inverse",
    )
    c2.metric("Held-out loss", "—" if run.last_eval_loss is None else f"{run.last_eval_loss:.4f}")
    c3.metric("Gradient norm", f"{last.grad_norm:.3f}", help="Global L2 norm before clipping.")
    c4.metric("Tokens / s", f"{last.tokens_per_s:,.0f}")
    log_scale = st.toggle("Log scale", False, key="train_log")
    show_chart(loss_chart(list(s.history), log_scale=log_scale), "training_loss")
    if last.grad_norms:
        show_chart(grad_norm_chart(last), "gradient_norms")
        over_time = np.array([[h.grad_norms.get(g, 0.0) for g in run.layer_names] for h in s.history])
        show_chart(
            charts.heatmap(
                over_time.T,
                run.layer_names,
                [str(h.step) for h in s.history],
                title="Gradient norm of every layer at every step",
                row_title="layer",
                col_title="step",
                value_title="norm",
                scheme="viridis",
                domain_mid=None,
                show_col_labels=len(s.history) <= 40,
            ),
            "gradient_norms_over_time",
        )


live()

# ---------------------------------------------------------------- inside the update
run = job.run
if run is not None and run.step > 0 and not job.snapshot().active:
    st.subheader("4 · One gradient vector, and what Adam does with it")
    batch_ids = sorted(set(run.last_batch.flatten().tolist())) if run.last_batch is not None else []
    strings, _, _ = state.vocabulary(loaded)
    c1, c2 = st.columns(2)
    token_id = c1.selectbox(
        "Token (from the last batch)",
        batch_ids[:500],
        format_func=lambda i: f"{readable(strings[i])} (id {i})",
        key="train_token",
    )
    emb_name = [
        n for n, _ in run.model.named_parameters() if n.endswith(("wte.weight", "embed_tokens.weight"))
    ][0]
    grad = run.token_embedding_grad(int(token_id))
    adam = run.adam_state(emb_name, row=int(token_id))
    c2.metric("‖gradient of this row‖", f"{np.linalg.norm(grad):.3e}")
    rows = [grad]
    names = ["gradient g"]
    if adam is not None:
        rows += [adam.exp_avg, np.sqrt(adam.exp_avg_sq), -adam.step_size]
        names += ["m (mean of g)", "√v (RMS of g)", "update −lr·m̂/(√v̂+ε)"]
        st.markdown(
            f"Adam's step {adam.step}: lr = {adam.lr:.1e}, β₁ = {adam.beta1}, β₂ = {adam.beta2}, "
            f"ε = {adam.eps:.0e}. "
            "Each weight moves by about lr whatever the gradient's size: Adam divides by the gradient's "
            "own running RMS."
        )
    else:
        st.caption("This row is frozen (or not stepped yet): Adam keeps no state for it.")
    show_chart(
        charts.heatmap(
            np.stack(rows),
            names,
            None,
            title=f"Embedding row of '{readable(strings[token_id])}'",
            row_title="vector",
            col_title="dimension",
            show_col_labels=False,
            height=40 * len(rows) + 40,
        ),
        "gradient_and_adam",
    )
    downloads("gradient_and_adam", np.stack(rows), names, key="train_adam")

    st.markdown("**Adam's state for any trained parameter**")
    c1, c2 = st.columns([3, 1])
    param_name = c1.selectbox("Parameter", run.trainable_names, key="train_param")
    shape = dict(run.model.named_parameters())[param_name].shape
    row = c2.number_input("Row", 0, shape[0] - 1, 0, key="train_param_row") if len(shape) == 2 else None
    state_of = run.adam_state(param_name, row=None if row is None else int(row))
    if state_of is None:
        st.caption("Adam has no state for this parameter yet.")
    else:
        width = min(state_of.exp_avg.size, 256)
        show_chart(
            charts.heatmap(
                np.stack(
                    [
                        state_of.exp_avg.ravel()[:width],
                        np.sqrt(state_of.exp_avg_sq.ravel()[:width]),
                        -state_of.step_size.ravel()[:width],
                    ]
                ),
                ["m", "√v", "update"],
                None,
                title=f"{param_name}{'' if row is None else f' row {row}'} "
                f"(first {width} of {state_of.exp_avg.size} values, shape {tuple(shape)})",
                row_title="vector",
                col_title="index",
                show_col_labels=False,
                height=140,
            ),
            "adam_state",
        )
        c1, c2, c3 = st.columns(3)
        c1.metric("mean |m|", f"{np.abs(state_of.exp_avg).mean():.2e}")
        c2.metric("mean √v", f"{np.sqrt(state_of.exp_avg_sq).mean():.2e}")
        c3.metric("mean |update|", f"{np.abs(state_of.step_size).mean():.2e}", help="≈ lr when m̂/√v̂ ≈ ±1")

    st.subheader("5 · Before and after")
    prompt = st.text_input("Prompt", state.current_text(), key="train_prompt")
    if prompt.strip():
        try:
            with st.spinner("Comparing the base and the fine-tuned model…"):
                before, after = loaded.model, run.model
                cmp = compare_next_token(before, after, loaded.tokenizer, prompt)
                change = attention_change(before, after, loaded.tokenizer, prompt)
                lens = compare_logit_lens(before, after, loaded.tokenizer, prompt)
                drift = weight_drift(before, after)
        except VectorLabError as e:
            st.error(str(e))
        else:
            c1, c2 = st.columns(2)
            c1.metric("KL(after ‖ before)", f"{cmp.kl_after_before:.4f} nats")
            c2.metric("KL(before ‖ after)", f"{cmp.kl_before_after:.4f} nats")
            show_chart(next_token_chart(cmp), "next_token_before_after")
            show_chart(attention_change_chart(change), "attention_change")
            show_chart(logit_lens_chart(lens), "logit_lens_before_after")
            show_chart(drift_chart(drift), "weight_drift")
            st.dataframe(
                pd.DataFrame({"layer": drift.groups, "‖ΔW‖/‖W‖": drift.relative, "‖ΔW‖": drift.delta_norm}),
                hide_index=True,
            )
