"""Station 8: fine-tune the loaded model from the browser and watch the gradients and Adam move it."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import streamlit as st

from core.errors import VectorLabError
from core.inspection.tokens import readable
from core.retrieval.documents import parse_files
from core.training.compare import compare_models
from core.training.config import TrainConfig
from core.training.data import prepare_data
from core.training.estimate import estimate_run
from core.training.jobs import FAILED, FINISHED, RUNNING, STOPPED, STOPPING
from core.training.loop import FineTuneRun
from core.training.parts import TRAIN_PARTS, bf16_supported
from core.views import charts
from core.views.training_charts import (
    attention_change_chart,
    drift_chart,
    live_charts,
    logit_lens_chart,
    next_token_chart,
)
from ui import search_state, state
from ui.sidebar import render_sidebar
from ui.widgets import downloads, show_chart

DEFAULT_TRAINING_TEXT = (
    "Vector Lab turns every token into a vector. The vector flows through attention and the MLP, "
    "layer after layer, and the last vector becomes a probability for every next token. "
) * 40
LIVE_REFRESH_S = 1.0  # while a run goes: the progress bar and the numbers are redrawn this often
CHART_REFRESH_S = 5.0  # and the charts this often (each redraw re-renders them in the browser)

st.title("8 · Training with gradients")
st.markdown(
    "**What happens.** The model reads your text and, at every position, is scored by the cross-entropy "
    "of the real next token. Back-propagation turns that loss into a **gradient** for every weight — a "
    "vector pointing uphill — and **AdamW** steps each weight against its own running average of "
    "gradients: `w ← w − lr · m̂ / (√v̂ + ε)`. **Why it matters.** These gradient vectors are what made "
    "every other vector in the app; here you watch them change the model."
)

render_sidebar()
state.require_data_dir()  # checkpoints are saved there
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
steps = c2.number_input("Steps", 1, 10_000, 50, key="train_steps", disabled=snap.active)
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
except VectorLabError as e:
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
        "model never trains on."
    )

# ---------------------------------------------------------------- control
st.subheader("3 · Run")
if data is not None and not snap.active:
    try:
        estimate = estimate_run(state.step_timing(loaded, config), config, data)
    except VectorLabError as e:
        st.error(str(e))
    else:
        t, total = estimate.timing, estimate.total_s
        st.markdown(
            f"**Estimated time: about {total / 60:.1f} min**"
            if total >= 90
            else f"**Estimated time: about {total:.0f} s**"
        )
        scaled = "" if t.rows == config.batch_size else f" (× {config.batch_size / t.rows:g} a step)"
        st.caption(
            f"Timed on this model just now: forward and backward of {t.rows} × {config.seq_len} tokens "
            f"{t.forward_backward_s:.2f} s{scaled}, the AdamW update of {t.n_trainable:,} weights "
            f"{t.update_s:.2f} s: {estimate.step_s:.1f} s a step, for {config.steps} steps, plus "
            f"{estimate.n_evals} held-out evaluations of {estimate.eval_s:.1f} s. Saving the checkpoint "
            "comes on top. Once the run goes, the time left follows its own speed."
        )
b1, b2, b3, b4 = st.columns(4)
start = b1.button("Start", type="primary", key="train_start", disabled=snap.active or data is None)
stop = b2.button("Stop", key="train_stop", disabled=snap.status != RUNNING)
resume = b3.button("Resume", key="train_resume", disabled=snap.status != STOPPED)
discard = b4.button("Discard run", key="train_discard", disabled=snap.active or not snap.has_run)
try:
    if start:
        run = FineTuneRun.from_loaded(loaded, data, config, checkpoint_name=checkpoint.strip() or None)
        label = f"{loaded.info.name}, {data.summary.n_tokens:,} tokens"
        job.start(run, label=label, base_key=state.model_key(loaded))
    elif stop:
        job.stop()
    elif resume:
        job.resume()
    elif discard:
        job.discard()
except VectorLabError as e:
    st.error(str(e))
else:
    if start or stop or resume or discard:
        st.rerun()  # redraw the buttons and the live view for the job's new state


@st.fragment(run_every=LIVE_REFRESH_S if snap.active else None)
def live_status() -> None:
    """Progress and the latest numbers, redrawn every second while the job runs, without rerunning
    the whole page. Like the charts below, it reads only the job's snapshot (published by the
    training thread after each step), never the run, its model or its tensors."""
    s = job.snapshot()
    if snap.active and not s.active:
        st.rerun()  # the run just ended: redraw the whole page (buttons, gradients, before/after)
    if not s.has_run:
        st.info("No run yet: pick the text and settings above, then press Start.")
        return
    eta = s.last.eta_s if s.last is not None else math.nan
    eta_text = "" if math.isnan(eta) else f" · about {eta:,.0f} s left (measured)"
    label = {
        RUNNING: "Training",
        STOPPING: "Stopping after this step",
        STOPPED: "Stopped — press Resume",
        FINISHED: "Finished",
        FAILED: "Failed",
    }.get(s.status, s.status)
    st.progress(s.fraction, text=f"{label}: step {s.step} of {s.steps}{eta_text} — {s.label}")
    if s.error:
        st.error(s.error)
    if s.status == FINISHED and s.result is not None and s.result.checkpoint is not None:
        st.success(
            f"Saved checkpoint '{s.result.checkpoint.name}' at {s.result.checkpoint.path}. "
            "It is now in the model picker, so every other page can inspect it."
        )
    last = s.last
    if last is None:
        return
    c1, c2, c3, c4 = st.columns(4)
    c1.metric(
        "Loss",
        f"{last.loss:.4f}",
        delta=f"{last.loss - s.first_loss:+.4f} since step 1",
        delta_color="inverse",
    )
    c2.metric("Held-out loss", "—" if s.eval_loss is None else f"{s.eval_loss:.4f}")
    c3.metric("Gradient norm", f"{last.grad_norm:.3f}", help="Global L2 norm before clipping.")
    c4.metric("Tokens / s", f"{last.tokens_per_s:,.0f}")


@st.fragment(run_every=CHART_REFRESH_S if snap.active else None)
def live_charts_view() -> None:
    """The loss curves and the gradient norms, redrawn every few seconds while the job runs."""
    s = job.snapshot()
    if s.last is None:
        return
    log_scale = st.toggle("Log scale", False, key="train_log")
    if s.active:  # specs built once a step and shared by every viewer; downloads once it stops
        for spec in state.live_chart_specs(s, log_scale).values():
            st.vega_lite_chart(spec, width="stretch")
    else:
        for name, chart in live_charts(s, log_scale).items():
            show_chart(chart, name)
    if s.loss.steps_per_point > 1:
        st.caption(f"Each point of the curves is the mean of {s.loss.steps_per_point} consecutive steps.")


live_status()
live_charts_view()

# ---------------------------------------------------------------- a diverged run
run = job.run
if run is not None and run.status == "diverged" and not job.snapshot().active:
    st.warning(
        "A diverged run's model is not saved on its own: it would replace a good checkpoint with a "
        "broken one. Save it anyway to inspect what went wrong on the other pages."
    )
    if st.button("Save the diverged model anyway", key="train_save_anyway"):
        try:
            name = run.checkpoint_name or checkpoint.strip() or None
            saved = run.save_checkpoint(name, allow_diverged=True)
        except VectorLabError as e:
            st.error(str(e))
        else:
            st.success(
                f"Saved the diverged model as checkpoint '{saved.name}' at {saved.path}; it is in the "
                "model picker from the next page load."
            )

# ---------------------------------------------------------------- inside the update
from_this_model = run is not None and job.base_key == state.model_key(loaded)
if run is not None and run.step > 0 and not from_this_model:
    st.info(
        f"The last run ({job.label}) started from other weights than the sidebar's model has now; its "
        "gradients and the before/after comparison are shown beside the model it started from."
    )
if run is not None and run.step > 0 and not job.snapshot().active:
    st.subheader("4 · One gradient vector, and what Adam does with it")
    batch_ids = sorted(set(run.last_batch.flatten().tolist())) if run.last_batch is not None else []

    def token_text(i: int) -> str:
        """A token of the run's own vocabulary (the sidebar may hold another model by now)."""
        return readable(run.tokenizer.decode([int(i)]))

    c1, c2 = st.columns(2)
    token_id = c1.selectbox(
        "Token (from the last batch)",
        batch_ids[:500],
        format_func=lambda i: f"{token_text(i)} (id {i})",
        key="train_token",
    )
    grad = run.token_embedding_grad(int(token_id))
    adam = run.adam_state(run.token_embedding_name, row=int(token_id))
    c2.metric("‖gradient of this row‖", f"{np.linalg.norm(grad):.3e}")
    rows = [grad]
    names = ["gradient g"]
    if adam is not None:
        adam_names, adam_rows = adam.display_rows()
        rows += list(adam_rows)
        names += adam_names
        decay = f", λ = {adam.weight_decay:g}" if adam.weight_decay else ""
        st.markdown(
            f"Adam's step {adam.step}: lr = {adam.lr:.1e}, β₁ = {adam.beta1}, β₂ = {adam.beta2}, "
            f"ε = {adam.eps:.0e}{decay}. torch keeps m and v as running means that start at 0, so they "
            "are shown bias-corrected, m̂ = m/(1−β₁ᵗ) and √v̂ = √(v/(1−β₂ᵗ)): the mean and RMS of the "
            "gradients so far. The last row is the change the step really made to the weights, "
            "computed from the two above it. Each weight moves by about lr whatever the gradient's "
            "size: Adam divides by the gradient's own running RMS."
        )
    else:
        st.caption("This row is frozen (or not stepped yet): Adam keeps no state for it.")
    show_chart(
        charts.heatmap(
            np.stack(rows),
            names,
            None,
            title=f"Embedding row of '{token_text(token_id)}'",
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
        state_names, state_rows = state_of.display_rows()
        show_chart(
            charts.heatmap(
                state_rows.reshape(3, -1)[:, :width],
                state_names,
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
        c1.metric("mean |m̂|", f"{np.abs(state_of.m_hat).mean():.2e}", help="bias-corrected: m/(1−β₁ᵗ)")
        c2.metric("mean √v̂", f"{state_of.v_hat_sqrt.mean():.2e}", help="bias-corrected: √(v/(1−β₂ᵗ))")
        c3.metric(
            "mean |update|",
            f"{np.abs(state_of.update).mean():.2e}",
            help="The weights' real change in the last step; ≈ lr where m̂/√v̂ ≈ ±1.",
        )

    st.subheader("5 · Before and after")
    base = run.base_info
    saved = run.last_checkpoint
    where = (
        f"saved as checkpoint '{saved.name}' ({saved.path})"
        if saved is not None and saved.steps == run.step
        else "in memory only, not saved"
    )
    st.caption(
        f"Before: **{base.name}**, the model this run started from ({base.source}, `{base.identity}`). "
        f"After: **this run's model at step {run.step}**, {where}."
    )
    prompt = st.text_input("Prompt", state.current_text(), key="train_prompt")
    if run.base is None:
        st.info("This run did not keep the model it started from, so there is nothing to compare it with.")
    elif prompt.strip():
        try:
            with st.spinner("Comparing the base and the fine-tuned model…"):
                compared = compare_models(run.base, run.model, run.tokenizer, prompt)
        except VectorLabError as e:
            st.error(str(e))
        else:
            cmp, drift = compared.next_token, compared.drift
            c1, c2 = st.columns(2)
            c1.metric("KL(after ‖ before)", f"{cmp.kl_after_before:.4f} nats")
            c2.metric("KL(before ‖ after)", f"{cmp.kl_before_after:.4f} nats")
            show_chart(next_token_chart(cmp), "next_token_before_after")
            show_chart(attention_change_chart(compared.attention), "attention_change")
            show_chart(logit_lens_chart(compared.lens), "logit_lens_before_after")
            show_chart(drift_chart(drift), "weight_drift")
            st.dataframe(
                pd.DataFrame({"layer": drift.groups, "‖ΔW‖/‖W‖": drift.relative, "‖ΔW‖": drift.delta_norm}),
                hide_index=True,
            )
