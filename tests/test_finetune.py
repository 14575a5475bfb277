"""Fine-tuning: settings, the held-out split, freezing, AdamW state, stop/resume, checkpoints,
divergence, before/after views, charts and the command line, on tiny seeded GPT-2 and Llama models."""

from __future__ import annotations

import copy
import json
import math
import os
import re
import select
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tiny_models import tiny_gpt2_model, tiny_llama_model

import core.training.checkpoints as ckpt
from core.errors import InputError, SettingsError
from core.model.families import model_parts
from core.model.loading import gpt2_tokenizer
from core.training.checkpoints import check_name, list_checkpoints, load_checkpoint
from core.training.cli import main
from core.training.compare import (
    attention_change,
    compare_logit_lens,
    compare_models,
    compare_next_token,
    logit_lens,
    next_token_probs,
    weight_drift,
)
from core.training.config import TrainConfig
from core.training.data import prepare_data
from core.training.divergence import TrainingDivergedError
from core.training.loop import FineTuneRun
from core.training.parts import apply_freezing, layer_groups
from core.views.training_charts import (
    attention_change_chart,
    drift_chart,
    grad_norm_chart,
    logit_lens_chart,
    loss_chart,
    next_token_chart,
)

ROOT = Path(__file__).resolve().parent.parent
SENTENCE = "The quick brown fox jumps over the lazy dog. "
TEXT = SENTENCE * 30  # ~300 tokens
HELD_OUT = "Colourless green ideas sleep furiously while purple elephants dance. " * 4
# A small, fast setting: 16-token sequences, 2 per step, a 10% held-out tail.
FAST = dict(lr=1e-2, steps=4, batch_size=2, seq_len=16, eval_every=2)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tok():
    return gpt2_tokenizer()


@pytest.fixture(scope="module")
def _gpt2_master(tok):
    return tiny_gpt2_model(len(tok))  # tied: lm_head.weight is transformer.wte.weight


@pytest.fixture(scope="module")
def _llama_master(tok):
    return tiny_llama_model(len(tok), tie_word_embeddings=False)  # untied: both head layouts covered


@pytest.fixture
def gpt2(_gpt2_master):
    """A private copy: a test trains it without touching the others'."""
    return copy.deepcopy(_gpt2_master)


@pytest.fixture
def llama(_llama_master):
    return copy.deepcopy(_llama_master)


@pytest.fixture(params=["gpt2", "llama"])
def model(request, _gpt2_master, _llama_master):
    return copy.deepcopy(_gpt2_master if request.param == "gpt2" else _llama_master)


@pytest.fixture(scope="module")
def tiny_dir(_gpt2_master, tok, tmp_path_factory):
    """The tiny GPT-2 saved as a model folder named "tiny-gpt2" (for the command line)."""
    path = tmp_path_factory.mktemp("models") / "tiny-gpt2"
    _gpt2_master.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture
def ckroot(tmp_path):
    return tmp_path / "checkpoints"


def _run(model, tok, text=TEXT, root=None, name=None, **settings):
    config = TrainConfig(**{**FAST, **settings})
    data = prepare_data(text, tok, config)
    return FineTuneRun(
        model, tok, data, config, base_model="tiny", checkpoint_name=name, checkpoint_root=root
    )


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _logits(model, ids):
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


def _loaded(model, tok):
    """What `core.model.loading.load_model` hands out, for a model built in memory."""
    info = SimpleNamespace(name="tiny GPT-2", spec="tiny-spec", source="/models/tiny", identity="dir:1234")
    return SimpleNamespace(model=model, tokenizer=tok, info=info)


# --------------------------------------------------------------------------- settings


def test_default_settings_are_valid():
    config = TrainConfig()
    assert config.train_part == "all" and 0 < config.lr <= 1e-3 and config.steps > 0


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"lr": 1e3},
            "lr=1000.0 is out of range: use a learning rate above 0 and at most 1 "
            "(fine-tuning works best between 1e-5 and 1e-3; the default is 1e-4)",
        ),
        (
            {"lr": 0},
            "lr=0 is out of range: use a learning rate above 0 and at most 1 "
            "(fine-tuning works best between 1e-5 and 1e-3; the default is 1e-4)",
        ),
        (
            {"steps": 0},
            "steps=0 must be a whole number from 1 to 100000 (it is how many optimizer updates to run)",
        ),
        (
            {"steps": 2.5},
            "steps=2.5 must be a whole number from 1 to 100000 (it is how many optimizer updates to run)",
        ),
        ({"batch_size": 0}, "batch_size=0 must be a whole number from 1 to 1024 (sequences per step)"),
        (
            {"seq_len": 1},
            "seq_len=1 must be a whole number from 2 to 8192 "
            "(each token is predicted from the ones before it, so 2 is the least)",
        ),
        ({"train_part": "head"}, "train_part='head' is not one of 'all', 'last_n_blocks', 'embeddings'"),
        (
            {"n_last_blocks": 0},
            "n_last_blocks=0 must be a whole number from 1 to 1000 (how many of the top blocks train)",
        ),
        (
            {"eval_fraction": 0.9},
            "eval_fraction=0.9 must be between 0 and 0.5: it is the share of the text held out for "
            "evaluation (0 turns held-out evaluation off)",
        ),
        ({"grad_clip": -1.0}, "grad_clip=-1.0 must be 0 (no clipping) or a positive norm like 1.0"),
        ({"weight_decay": 1.5}, "weight_decay=1.5 must be at least 0 and below 1 (0.0 or 0.01 are usual)"),
        (
            {"steps": 5, "warmup_steps": 5},
            "warmup_steps=5 must be smaller than steps=5, "
            "or the run would end before reaching the full learning rate",
        ),
        ({"lr_schedule": "step"}, "lr_schedule='step' is not one of 'constant', 'linear', 'cosine'"),
        (
            {"checkpoint_every": -1},
            "checkpoint_every=-1 must be a whole number from 0 to 100000 (0 saves only at the end)",
        ),
        (
            {"diverge_nats": -1.0},
            "diverge_nats=-1.0 must be a positive number of nats like 3.0, or 0 to never stop a run "
            "for a rising loss",
        ),
        (
            {"diverge_window": 0},
            "diverge_window=0 must be a whole number from 1 to 1000 (steps averaged before comparing "
            "with the starting loss)",
        ),
    ],
)
def test_bad_settings_say_how_to_fix_them(settings, message):
    with pytest.raises(SettingsError, match=f"^{re.escape(message)}$"):
        TrainConfig(**settings)


def test_learning_rate_schedule():
    config = TrainConfig(lr=1.0, steps=10, warmup_steps=2, lr_schedule="cosine")
    lrs = [config.lr_at(s) for s in range(1, 11)]
    assert lrs[:3] == [0.5, 1.0, 1.0]  # warm-up, then cosine from the top
    assert all(a > b for a, b in zip(lrs[2:], lrs[3:], strict=False)) and lrs[-1] > 0
    assert TrainConfig(lr=0.1, steps=4, lr_schedule="linear").lr_at(3) == pytest.approx(0.05)
    assert {TrainConfig(lr=0.1, steps=4).lr_at(s) for s in range(1, 5)} == {0.1}


# --------------------------------------------------------------------------- data


def test_held_out_is_the_tail_and_never_overlaps_training(tok):
    config = TrainConfig(seq_len=16, eval_fraction=0.2)
    data = prepare_data([TEXT, HELD_OUT], tok, config)
    s = data.summary
    ids = data.token_ids
    assert s.n_documents == 2 and s.n_tokens == len(ids)
    assert s.n_eval_tokens == round(0.2 * s.n_tokens) and s.n_train_tokens + s.n_eval_tokens == s.n_tokens
    assert data.train.shape == (s.n_train_sequences, 16) and data.eval.shape == (s.n_eval_sequences, 16)
    assert s.n_train_sequences == s.n_train_tokens // 16 and s.n_eval_sequences == s.n_eval_tokens // 16
    assert s.n_unused_tokens == s.n_tokens - 16 * (s.n_train_sequences + s.n_eval_sequences)
    # Training rows are consecutive slices of the text before the split; held-out rows after it.
    assert torch.equal(data.train.flatten(), ids[: s.n_train_sequences * 16])
    assert torch.equal(
        data.eval.flatten(), ids[data.split_index : data.split_index + s.n_eval_sequences * 16]
    )
    assert data.split_index == s.n_train_tokens
    # Documents are joined with an end-of-text token; the held-out tail is the second document's text.
    assert tok.eos_token_id in ids.tolist()
    assert "elephants" in tok.decode(data.eval.flatten())
    assert "elephants" not in tok.decode(data.train.flatten())


def test_no_held_out_when_eval_fraction_is_zero(tok):
    data = prepare_data(TEXT, tok, TrainConfig(seq_len=16, eval_fraction=0))
    assert data.eval.shape == (0, 16) and data.summary.n_eval_tokens == 0


@pytest.mark.parametrize(
    ("texts", "settings", "message"),
    [
        ("", {}, "There is no text to train on: paste some text or add a file that contains text."),
        (["  ", "\n"], {}, "There is no text to train on: paste some text or add a file that contains text."),
        (
            SENTENCE,
            {"seq_len": 64},
            "The text is too short to train on: it has 11 tokens (10 for training after holding out 1 "
            "for evaluation), less than one sequence of seq_len=64. Add more text or lower seq_len.",
        ),
        (
            SENTENCE * 3,
            {"seq_len": 16},
            "The held-out part is too short: eval_fraction=0.1 of 31 tokens is 3 tokens, less than one "
            "sequence of seq_len=16. Add more text, lower seq_len, raise eval_fraction, or set "
            "eval_fraction to 0 to train without held-out loss.",
        ),
    ],
)
def test_text_that_cannot_be_used(tok, texts, settings, message):
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        prepare_data(texts, tok, TrainConfig(**settings))


# --------------------------------------------------------------------------- training


def test_loss_falls_on_a_repeated_sentence(model, tok):
    history = []
    run = _run(model, tok, steps=5)
    result = run.run(on_step=history.append)
    losses = [s.loss for s in history]
    assert result.status == "finished" and result.step == 5 and [s.step for s in history] == [1, 2, 3, 4, 5]
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses
    assert all(math.isfinite(s.tokens_per_s) and s.tokens_per_s > 0 for s in history)
    assert history[-1].tokens_seen == 5 * 2 * 16 and history[-1].eta_s == 0.0
    assert math.isfinite(history[0].eta_s) and history[0].eta_s > 0  # estimated from the first step
    # Gradient norms: one per layer group, and they add up (in squares) to the global norm.
    step = history[0]
    assert list(step.grad_norms) == ["embeddings", "block 0", "block 1", "final norm/head"]
    assert math.sqrt(sum(v**2 for v in step.grad_norms.values())) == pytest.approx(step.grad_norm, rel=1e-4)


def test_eval_loss_is_measured_on_held_out_sequences_only(gpt2, tok):
    history = []
    run = _run(gpt2, tok, text=TEXT + HELD_OUT, eval_fraction=0.25)
    run.run(on_step=history.append)
    assert [s.eval_loss is not None for s in history] == [False, True, False, True]

    def mean_loss(rows):
        with torch.no_grad():
            return float(gpt2.eval()(input_ids=rows, labels=rows).loss)

    held_out, train = run.data.eval, run.data.train
    assert history[-1].eval_loss == pytest.approx(mean_loss(held_out), rel=1e-5)
    assert history[-1].eval_loss > mean_loss(train) + 1.0  # unseen text: far worse than training text


@pytest.mark.parametrize("train_part", ["last_n_blocks", "embeddings"])
def test_frozen_parameters_do_not_move(model, tok, train_part):
    before = _params(model)
    head = model.lm_head.weight.detach().clone()
    run = _run(model, tok, train_part=train_part, n_last_blocks=1, steps=2, weight_decay=0.1)
    history = []
    run.run(on_step=history.append)
    parts = model_parts(model)
    trainable = set(run.trainable_names)
    for name, p in model.named_parameters():
        if name in trainable:
            assert not torch.equal(p, before[name]), f"{name} should have trained"
        else:
            assert torch.equal(p, before[name]), f"{name} is frozen but moved"
            assert p.grad is None and run.adam_state(name) is None
    groups = history[-1].grad_norms
    if train_part == "last_n_blocks":
        assert groups["embeddings"] == 0.0 and groups["block 0"] == 0.0 and groups["block 1"] > 0
        # A tied head is the frozen embedding matrix; an untied one trains with the top block.
        assert ("lm_head.weight" in trainable) == (not parts.tied)
        assert not np.any(run.token_embedding_grad(464))
    else:
        assert groups["embeddings"] > 0 and groups["block 0"] == groups["block 1"] == 0.0
        # With tied weights the head moves with the embeddings; an untied head stays.
        assert (not torch.equal(model.lm_head.weight, head)) == parts.tied


def test_tied_embeddings_are_reported_once(gpt2, llama):
    assert model_parts(gpt2).tied and not model_parts(llama).tied
    gpt2_groups = layer_groups(gpt2)
    assert "transformer.wte.weight" in gpt2_groups["embeddings"]
    assert not any("lm_head" in n for names in gpt2_groups.values() for n in names)  # alias, not a 2nd matrix
    assert "lm_head.weight" in layer_groups(llama)["final norm/head"]
    with pytest.raises(
        InputError, match=re.escape("n_last_blocks=3 does not fit this model: it has 2 blocks")
    ):
        apply_freezing(gpt2, "last_n_blocks", 3)
    with pytest.raises(
        SettingsError, match=re.escape("train_part='head' is not one of 'all', 'last_n_blocks', 'embeddings'")
    ):
        apply_freezing(gpt2, "head")


def test_the_run_names_its_token_embedding_table(gpt2, llama, tok):
    """The page asks the run which parameter is the token table instead of knowing each family's names."""
    for model, expected in ((gpt2, "transformer.wte.weight"), (llama, "model.embed_tokens.weight")):
        run = _run(model, tok, steps=1)
        assert run.token_embedding_name == expected
        assert dict(model.named_parameters())[expected] is model_parts(model).token_embedding.weight


def test_adam_state_matches_torch_adamw(gpt2, tok):
    token = tok.encode(" fox")[0]
    name = "transformer.wte.weight"
    seen = []

    def record(step):
        row = gpt2.transformer.wte.weight[token].detach().clone()
        seen.append((step, run.token_embedding_grad(token), row, run.adam_state(name, row=token)))

    run = _run(gpt2, tok, lr=1e-3, steps=3, weight_decay=0.01, grad_clip=0.5)
    start = gpt2.transformer.wte.weight[token].detach().clone()
    run.run(on_step=record)

    b1, b2 = 0.9, 0.999
    m = v = np.zeros(32)
    previous = start.numpy()
    for t, (step, grad, row, state) in enumerate(seen, start=1):
        assert state.step == t and state.lr == step.lr == 1e-3 and (state.beta1, state.beta2) == (b1, b2)
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad**2
        np.testing.assert_allclose(state.exp_avg, m, rtol=1e-5, atol=1e-10)
        np.testing.assert_allclose(state.exp_avg_sq, v, rtol=1e-5, atol=1e-14)
        # The weights moved by exactly the reported step size, after decoupled weight decay.
        expected = previous * (1 - state.lr * state.weight_decay) - state.step_size
        np.testing.assert_allclose(row.numpy(), expected, rtol=0, atol=1e-7)
        previous = row.numpy()
    # And the arrays are AdamW's own state.
    own = run.optimizer.state[gpt2.transformer.wte.weight]
    np.testing.assert_array_equal(seen[-1][3].exp_avg, own["exp_avg"][token].numpy())
    np.testing.assert_array_equal(seen[-1][3].exp_avg_sq, own["exp_avg_sq"][token].numpy())
    # The tied head is the same matrix, so its name reads the same state.
    np.testing.assert_array_equal(run.adam_state("lm_head.weight", row=token).exp_avg, seen[-1][3].exp_avg)
    assert seen[0][0].clipped  # the first gradients are larger than 0.5: what AdamW saw was clipped
    with pytest.raises(InputError, match="no parameter called 'nope'"):
        run.adam_state("nope")
    with pytest.raises(InputError, match=re.escape("token id 50257 is outside the vocabulary (0 … 50256).")):
        run.token_embedding_grad(50257)


def test_adam_rows_shown_are_bias_corrected_and_give_the_real_update(gpt2, tok):
    """The rows the page shows as m̂ and √v̂ are what their labels say, and the update computed from
    them is the change torch's AdamW really made to the weights (decoupled weight decay included)."""
    token = tok.encode(" fox")[0]
    name = "transformer.wte.weight"
    weights = [gpt2.transformer.wte.weight[token].detach().double().numpy().copy()]
    grads, states = [], []

    def record(step):
        weights.append(gpt2.transformer.wte.weight[token].detach().double().numpy().copy())
        grads.append(run.token_embedding_grad(token).astype(np.float64))
        states.append(run.adam_state(name, row=token))

    run = _run(gpt2, tok, lr=1e-3, steps=3, weight_decay=0.1)
    run.run(on_step=record)

    eps32 = float(np.finfo(np.float32).eps)
    for t, state in enumerate(states, start=1):
        labels, rows = state.display_rows()
        assert labels == [
            "m̂ = m/(1−β₁ᵗ): bias-corrected mean of g",
            "√v̂ = √(v/(1−β₂ᵗ)): bias-corrected RMS of g",
            "update Δw = −lr·m̂/(√v̂+ε) − lr·λ·w",
        ]
        m_hat, rms, update = rows.astype(np.float64)  # [3, d_model] as shown
        seen = np.stack(grads[:t])  # [t, d_model] the gradients AdamW has used so far
        # m̂ and √v̂ are weighted averages of the gradients seen (weights summing to 1), so each lies
        # within the range of its own gradients: the raw buffers m and √v do not (they start at 0).
        slack = 4 * eps32 * np.abs(seen).max(axis=0)
        assert np.all(m_hat >= seen.min(axis=0) - slack) and np.all(m_hat <= seen.max(axis=0) + slack)
        assert np.all(rms >= np.abs(seen).min(axis=0) - slack)
        assert np.all(rms <= np.abs(seen).max(axis=0) + slack)
        np.testing.assert_allclose(m_hat, state.exp_avg / (1 - state.beta1**t), rtol=4 * eps32)
        np.testing.assert_allclose(rms, np.sqrt(state.exp_avg_sq / (1 - state.beta2**t)), rtol=4 * eps32)

        # The update from the rows shown, w ← w·(1 − lr·λ) − lr·m̂/(√v̂+ε), is the update shown …
        w_before, w_after = weights[t - 1], weights[t]
        from_rows = -state.lr * m_hat / (rms + state.eps) - state.lr * state.weight_decay * w_before
        # … and the weights' real change. float32 rounding of the weights, of the rows shown and of
        # torch's own arithmetic: a few eps of the weight and of the update.
        tol = 4 * eps32 * (np.abs(w_before) + np.abs(update))
        assert np.all(np.abs(from_rows - update) <= tol)
        assert np.all(np.abs((w_after - w_before) - update) <= tol)
        assert np.abs(update).max() > 100 * tol.max()  # the check is far finer than the update itself
    # Without weight decay the label has no decay term.
    plain = _run(copy.deepcopy(gpt2), tok, lr=1e-3, steps=1)
    plain.run()
    assert plain.adam_state(name, row=token).display_rows()[0][2] == "update Δw = −lr·m̂/(√v̂+ε)"


def test_stop_and_resume_equals_an_uninterrupted_run(_gpt2_master, tok):
    # 13 sequences, 4 a batch: 4 batches an epoch, so the run stops mid-epoch and resumes across one.
    # Dropout is on: the RNG must be resumed too.
    settings = dict(steps=6, seq_len=8, batch_size=4, dropout=True, eval_every=3)
    text = SENTENCE * 12
    whole = _run(copy.deepcopy(_gpt2_master), tok, text=text, **settings)
    whole.run()

    model = copy.deepcopy(_gpt2_master)
    parted = _run(model, tok, text=text, **settings)
    first = parted.run(should_stop=lambda: parted.step >= 3)
    assert first.status == "stopped" and first.step == 3 and parted.status == "stopped"
    outside = torch.get_rng_state()
    torch.rand(1000)  # the rest of the app keeps using the global RNG in between
    expected_outside = torch.get_rng_state()
    second = parted.run()
    assert second.status == "finished" and second.step == 6
    assert torch.equal(torch.get_rng_state(), expected_outside)  # training did not disturb it
    assert not torch.equal(outside, expected_outside)
    assert parted.epoch == 1 and parted.data.summary.n_train_sequences == 13

    assert [s.loss for s in parted.history] == [s.loss for s in whole.history]
    assert [s.eval_loss for s in parted.history] == [s.eval_loss for s in whole.history]
    for (name, a), b in zip(model.named_parameters(), whole.model.parameters(), strict=True):
        assert torch.equal(a, b), name
    again = parted.run()  # nothing left to do: no step is taken
    assert (again.status, again.step, len(parted.history)) == ("finished", 6, 6)


# --------------------------------------------------------------------------- checkpoints


def test_checkpoint_reloads_with_the_same_logits(model, tok, ckroot):
    run = _run(model, tok, steps=2, root=ckroot, name="tiny-ft")
    result = run.run()
    assert result.checkpoint is not None and result.checkpoint.steps == 2
    path = ckroot / "tiny-ft"
    assert (path / "model.safetensors").exists() and (path / "tokenizer.json").exists()

    [info] = list_checkpoints(ckroot)
    assert (info.name, info.path, info.base_model, info.steps) == ("tiny-ft", path, "tiny", 2)
    assert info.final_loss == pytest.approx(run.history[-1].loss) and info.created

    loaded = load_checkpoint("tiny-ft", root=ckroot)
    ids = torch.tensor([tok.encode("The quick brown fox")])
    torch.testing.assert_close(_logits(loaded.model, ids), _logits(model, ids), rtol=0, atol=1e-6)
    assert loaded.tokenizer.encode("The quick brown fox") == ids[0].tolist()
    assert [h["loss"] for h in loaded.history] == [s.loss for s in run.history]
    assert loaded.settings["config"]["steps"] == 2 and loaded.settings["data"]["seq_len"] == 16


def test_a_crash_mid_save_keeps_the_previous_checkpoint(gpt2, tok, ckroot, monkeypatch):
    run = _run(gpt2, tok, steps=4, root=ckroot)
    run.run(should_stop=lambda: run.step >= 2)
    run.save_checkpoint("safe")
    ids = torch.tensor([tok.encode("The lazy dog")])
    saved_logits = _logits(gpt2, ids)
    run.run()  # on to step 4: the weights change

    def crash(path, payload):  # the model and tokenizer are written; then the process "dies"
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "_write_json", crash)
    with pytest.raises(OSError, match="disk full"):
        run.save_checkpoint("safe")
    monkeypatch.undo()

    assert [p.name for p in ckroot.iterdir()] == ["safe"]  # no half-written directory left behind
    [info] = list_checkpoints(ckroot)
    assert info.steps == 2
    torch.testing.assert_close(_logits(load_checkpoint("safe", root=ckroot).model, ids), saved_logits)

    # A hard kill leaves a scratch directory: it is never listed and the next save clears it.
    (ckroot / ".safe.tmp-dead").mkdir()
    (ckroot / ".safe.tmp-dead" / "config.json").write_text("{}")
    assert [c.name for c in list_checkpoints(ckroot)] == ["safe"]
    assert run.save_checkpoint("safe").steps == 4
    assert [p.name for p in ckroot.iterdir()] == ["safe"]


def test_a_crash_between_the_renames_restores_the_previous_checkpoint(gpt2, tok, ckroot, monkeypatch):
    run = _run(gpt2, tok, steps=2, root=ckroot, name="swap")
    run.run()
    real_replace = os.replace

    def moving_the_new_one_in_fails(src, dst):
        if Path(src).name.startswith(".swap.tmp-"):
            raise OSError("power cut")
        real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", moving_the_new_one_in_fails)
    with pytest.raises(OSError, match="power cut"):
        run.save_checkpoint()
    monkeypatch.undo()
    assert [c.steps for c in list_checkpoints(ckroot)] == [2]
    # A crash with no chance to clean up: the old one is retired, the new one not in place yet.
    os.replace(ckroot / "swap", ckroot / ".swap.old-12345678")
    assert [(c.name, c.steps) for c in list_checkpoints(ckroot)] == [("swap", 2)]


# A child process that saves checkpoint "fox" and is killed with SIGKILL at one point of the save.
# argv: phase, checkpoints folder, model folder. It prints the phase's marker, then hangs until killed.
_SAVE_AND_HANG = """
import os, shutil, sys, time
from pathlib import Path
from transformers import AutoModelForCausalLM
import core.training.checkpoints as ckpt
from core.model.loading import gpt2_tokenizer

phase, root, model_dir = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
model = AutoModelForCausalLM.from_pretrained(model_dir)

def hang(marker):
    print(marker, flush=True)
    time.sleep(600)

if phase == "writing":  # the new checkpoint is half written into its scratch folder
    write_json = ckpt._write_json
    def slow_write(path, payload):
        write_json(path, payload)
        hang("WRITING")
    ckpt._write_json = slow_write
elif phase == "renaming":  # the old checkpoint has stepped aside; the new one is not in place yet
    replace = os.replace
    def slow_replace(src, dst):
        replace(src, dst)
        if Path(src) == root / "fox":
            hang("RETIRED")
    ckpt.os.replace = slow_replace
elif phase == "retiring":  # the new one is in place; the old one is half deleted
    rmtree = shutil.rmtree
    def slow_rmtree(path, *args, **kwargs):
        path = Path(path)
        if path.name.startswith(".fox.") and ".tmp-" not in path.name:
            (path / "tokenizer.json").unlink()
            hang("DELETING")
        rmtree(path, *args, **kwargs)
    ckpt.shutil.rmtree = slow_rmtree
ckpt.save_checkpoint(
    model, gpt2_tokenizer(), "fox", {"base_model": "tiny", "steps": 2, "final_loss": 1.0}, [], root=root
)
print("SAVED", flush=True)
"""


@pytest.mark.parametrize(
    ("phase", "marker", "survivor"),
    [("writing", "WRITING", "old"), ("renaming", "RETIRED", "old"), ("retiring", "DELETING", "new")],
)
def test_leftovers_of_a_killed_save_are_cleaned_up(
    _gpt2_master, tok, ckroot, tmp_path, caplog, phase, marker, survivor
):
    old = _gpt2_master
    ckpt.save_checkpoint(old, tok, "fox", {"base_model": "tiny", "steps": 1, "final_loss": 2.0}, [], ckroot)
    new = copy.deepcopy(old)
    with torch.no_grad():
        for p in new.parameters():
            p.add_(0.01)
    new.save_pretrained(tmp_path / "new")

    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-c", _SAVE_AND_HANG, phase, str(ckroot), str(tmp_path / "new")]
    errors = tmp_path / "child.err"  # a file, not a pipe: a full pipe would stall the child
    with errors.open("wb") as stderr:
        child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=stderr)
    try:
        ready, _, _ = select.select([child.stdout], [], [], 120)
        said = child.stdout.readline().decode().strip() if ready else "(nothing within 120 s)"
        assert said == marker, errors.read_text() if said == "" else said
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    leftovers = sorted(p.name for p in ckroot.iterdir() if p.name.startswith(".fox."))
    assert leftovers, "the kill should have left a scratch folder behind"

    with caplog.at_level("INFO", logger="core.training.checkpoints"):
        [info] = list_checkpoints(ckroot)  # the first listing cleans up
    assert sorted(p.name for p in ckroot.iterdir()) == ["fox"]
    for name in leftovers:
        assert name in caplog.text  # every removal (or restore) is logged by name
    assert info.steps == (2 if survivor == "new" else 1)
    ids = torch.tensor([tok.encode("The lazy dog")])
    expected = _logits(new if survivor == "new" else old, ids)
    torch.testing.assert_close(_logits(load_checkpoint("fox", root=ckroot).model, ids), expected)


def test_listing_during_a_save_leaves_the_save_alone(gpt2, tok, ckroot, monkeypatch):
    """The page lists checkpoints while the training thread saves: the cleanup must not take the
    save's scratch folders for leftovers."""
    ckpt.save_checkpoint(gpt2, tok, "fox", {"base_model": "tiny", "steps": 1}, [], ckroot)
    retired, go_on = threading.Event(), threading.Event()
    replace = os.replace

    def pausing_replace(src, dst):
        replace(src, dst)
        if Path(src) == ckroot / "fox":
            retired.set()
            go_on.wait(60)

    monkeypatch.setattr(ckpt.os, "replace", pausing_replace)
    saved = []
    saver = threading.Thread(
        target=lambda: saved.append(
            ckpt.save_checkpoint(gpt2, tok, "fox", {"base_model": "tiny", "steps": 2}, [], ckroot)
        )
    )
    saver.start()
    try:
        assert retired.wait(60)
        scratch = sorted(p.name for p in ckroot.iterdir())
        assert list_checkpoints(ckroot) == []  # mid-swap: neither folder is a listed checkpoint …
        assert sorted(p.name for p in ckroot.iterdir()) == scratch  # … and neither was touched
    finally:
        go_on.set()
        saver.join(60)
    assert [s.steps for s in saved] == [2]
    assert [p.name for p in ckroot.iterdir()] == ["fox"] and list_checkpoints(ckroot)[0].steps == 2


def test_from_loaded_trains_a_copy_and_checkpoints_can_be_deleted(_gpt2_master, tok, ckroot):
    original = _params(_gpt2_master)
    loaded = _loaded(_gpt2_master, tok)
    config = TrainConfig(**{**FAST, "steps": 1})
    run = FineTuneRun.from_loaded(
        loaded, prepare_data(TEXT, tok, config), config, checkpoint_name="copy", checkpoint_root=ckroot
    )
    run.run()
    assert run.model is not _gpt2_master and not _gpt2_master.training
    assert all(torch.equal(p, original[n]) for n, p in _gpt2_master.named_parameters())
    assert [(c.name, c.base_model) for c in list_checkpoints(ckroot)] == [("copy", "tiny GPT-2")]
    ckpt.delete_checkpoint("copy", root=ckroot)
    assert list_checkpoints(ckroot) == [] and list(ckroot.iterdir()) == []
    with pytest.raises(InputError, match=re.escape("There is no checkpoint called 'copy'.")):
        ckpt.delete_checkpoint("copy", root=ckroot)


def test_bad_checkpoint_names_and_missing_checkpoints(gpt2, tok, ckroot):
    with pytest.raises(InputError, match=re.escape("Checkpoint name '../x' cannot be used")):
        _run(gpt2, tok, root=ckroot, name="../x")
    # "$" in a pattern also matches before a final newline; a name must match as a whole.
    with pytest.raises(InputError, match=re.escape("Checkpoint name 'notes\\n' cannot be used")):
        check_name("notes\n")
    assert check_name("notes") == "notes"
    with pytest.raises(Exception, match=re.escape("No complete checkpoint at")):
        load_checkpoint("missing", root=ckroot)


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(gpt2, tok, ckroot, monkeypatch):
    run = _run(gpt2, tok, steps=8, root=ckroot, name="boom", checkpoint_every=2)
    real_loss = FineTuneRun._compute_loss

    def loss_goes_nan_at_step_5(self, batch):
        loss = real_loss(self, batch)
        return loss * float("nan") if self.step == 4 else loss

    monkeypatch.setattr(FineTuneRun, "_compute_loss", loss_goes_nan_at_step_5)
    history = []
    with pytest.raises(TrainingDivergedError) as caught:
        run.run(on_step=history.append)
    path = ckroot / "boom"
    assert str(caught.value) == (
        "Training diverged at step 5: the training loss became nan. That update was not applied, so "
        f"the model is as it was after step 4. The last good checkpoint (step 4) is kept at {path}. "
        "Lower the learning rate (this step used 0.01) and start a new run."
    )
    assert caught.value.step == 5 and caught.value.checkpoint.steps == 4
    assert run.status == "diverged" and run.step == 4 and len(history) == 4
    [info] = list_checkpoints(ckroot)
    assert info.steps == 4 and info.final_loss == history[-1].loss
    kept = load_checkpoint("boom", root=ckroot)
    assert [h["step"] for h in kept.history] == [1, 2, 3, 4]  # the save came after step 4's record
    reloaded = kept.model
    for (name, a), b in zip(reloaded.named_parameters(), gpt2.parameters(), strict=True):
        assert torch.equal(a, b), name  # the bad step changed nothing
    with pytest.raises(InputError, match="This run diverged and cannot continue"):
        run.run()


class _InfiniteGradient(torch.autograd.Function):
    """Identity on the way forward (a finite loss), infinity on the way back."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


def test_infinite_gradients_also_stop_the_run(gpt2, tok):
    run = _run(gpt2, tok)
    real_loss = FineTuneRun._compute_loss
    run._compute_loss = lambda batch: (
        _InfiniteGradient.apply(real_loss(run, batch)) if run.step == 1 else real_loss(run, batch)
    )
    run.run(should_stop=lambda: run.step >= 1)
    after_one = _params(gpt2)
    with pytest.raises(
        TrainingDivergedError, match=re.escape("Training diverged at step 2: the gradient norm became")
    ):
        run.run()
    assert run.step == 1 and all(torch.equal(p, after_one[n]) for n, p in gpt2.named_parameters())


def _save_good_checkpoint(master, tok, root, name="fox"):
    good = _run(copy.deepcopy(master), tok, steps=2, root=root, name=name)
    good.run()
    files = {p.name: p.stat().st_mtime_ns for p in (root / name).iterdir()}
    return good, files


def _window_means(losses, window):
    """Mean of the last `window` losses at every step (fewer at the start)."""
    return [float(np.mean(losses[max(0, k + 1 - window) : k + 1])) for k in range(len(losses))]


def test_a_diverging_run_is_stopped_and_never_replaces_a_good_checkpoint(_gpt2_master, tok, ckroot):
    good, files = _save_good_checkpoint(_gpt2_master, tok, ckroot)
    ids = torch.tensor([tok.encode("The quick brown fox")])
    good_logits = _logits(good.model, ids)

    # lr 1.0 takes the tiny GPT-2's loss from ln(50257) ≈ 10.8 to tens of nats without a NaN.
    base = copy.deepcopy(_gpt2_master)
    wild = _run(copy.deepcopy(_gpt2_master), tok, lr=1.0, steps=30, root=ckroot, name="fox")
    history = []
    with pytest.raises(TrainingDivergedError) as caught:
        wild.run(on_step=history.append)
    losses = [s.loss for s in history]
    assert all(math.isfinite(x) for x in losses)  # no NaN: only the loss rule can catch this run
    cfg = wild.config
    # The starting loss: the untouched model's mean loss on sequences spread over the whole text.
    rows = wild.start_rows
    assert rows.shape == (cfg.diverge_window * cfg.batch_size, cfg.seq_len)
    assert torch.equal(rows[0], wild.data.train[0]) and torch.equal(rows[-1], wild.data.train[-1])
    with torch.no_grad():
        expected_start = float(base.eval()(input_ids=rows, labels=rows).loss)
    assert wild.start_loss == pytest.approx(expected_start, rel=1e-5)
    means = _window_means(losses, cfg.diverge_window)
    start, step = wild.start_loss, len(losses)
    # Stopped at the first step where the rule holds, and for that reason.
    assert [m > start + cfg.diverge_nats for m in means] == [False] * (step - 1) + [True]
    assert str(caught.value) == (
        f"Training diverged at step {step}: the mean training loss of the last "
        f"{min(step, cfg.diverge_window)} steps is {means[-1]:.2f} nats, more than "
        f"{cfg.diverge_nats:g} nats above the starting loss {start:.2f}. The run was stopped and this "
        "model was not saved. The checkpoint 'fox' already on disk was left as it was. Lower the "
        "learning rate (this step used 1) and start a new run."
    )
    assert caught.value.step == step and caught.value.checkpoint is None
    assert wild.status == "diverged" and wild.step == step < cfg.steps

    # The good checkpoint under that name is untouched, file for file.
    assert {p.name: p.stat().st_mtime_ns for p in (ckroot / "fox").iterdir()} == files
    [info] = list_checkpoints(ckroot)
    assert info.steps == 2
    torch.testing.assert_close(_logits(load_checkpoint("fox", root=ckroot).model, ids), good_logits)
    with pytest.raises(InputError, match="This run diverged and cannot continue"):
        wild.run()

    # Saving it needs asking.
    with pytest.raises(
        InputError,
        match=re.escape(
            f"This run diverged at step {step}: its model is not saved unless you ask for it (save anyway)."
        ),
    ):
        wild.save_checkpoint()
    saved = wild.save_checkpoint(allow_diverged=True)
    assert saved.steps == step
    assert load_checkpoint("fox", root=ckroot).settings["diverged"] is True


def test_a_model_ruined_by_its_last_update_is_not_saved(_gpt2_master, tok, ckroot):
    """The loss of a step is measured before its update, so the last update is checked before the
    save: with the saved model's loss as one more point, the same rule must hold."""
    good, files = _save_good_checkpoint(_gpt2_master, tok, ckroot)
    wild = _run(copy.deepcopy(_gpt2_master), tok, lr=1.0, steps=1, root=ckroot, name="fox")
    with pytest.raises(TrainingDivergedError) as caught:
        wild.run()
    [only] = wild.history
    with torch.no_grad():
        batch = wild.last_batch
        after = float(wild.model.eval()(input_ids=batch, labels=batch).loss)
    assert caught.value.probe_loss == pytest.approx(after, rel=1e-5)
    mean = (only.loss + caught.value.probe_loss) / 2
    assert mean > wild.start_loss + 3 >= only.loss  # the step's own loss was fine; its update was not
    assert str(caught.value) == (
        f"Training diverged at step 1: after its update the model's loss on that step's batch is "
        f"{caught.value.probe_loss:.2f} nats, which brings the mean of the last 2 losses to "
        f"{mean:.2f} nats, more than 3 nats above the starting loss {wild.start_loss:.2f}. The run "
        "was stopped and this model was not saved. The checkpoint 'fox' already on disk was left as it "
        "was. Lower the learning rate (this step used 1) and start a new run."
    )
    assert wild.status == "diverged" and wild.step == 1
    assert {p.name: p.stat().st_mtime_ns for p in (ckroot / "fox").iterdir()} == files


@pytest.mark.parametrize("lr", [1e-2, 0.3])
def test_a_normal_run_is_not_flagged(model, tok, ckroot, lr):
    """Steady learning (1e-2) and a bumpy but converging run (0.3) both finish and save."""
    run = _run(model, tok, lr=lr, steps=12, root=ckroot, name="fine", checkpoint_every=6)
    result = run.run()
    assert (result.status, result.step, run.status) == ("finished", 12, "finished")
    assert [c.steps for c in list_checkpoints(ckroot)] == [12]
    assert load_checkpoint("fine", root=ckroot).settings["diverged"] is False


# --------------------------------------------------------------------------- before / after


def test_before_after_compares_the_runs_own_base_whatever_is_loaded(_gpt2_master, tok, ckroot):
    """After the user opens the new checkpoint, "before" is still the model the run started from."""
    original = _params(_gpt2_master)
    config = TrainConfig(**{**FAST, "steps": 3})
    run = FineTuneRun.from_loaded(
        _loaded(_gpt2_master, tok),
        prepare_data(TEXT, tok, config),
        config,
        checkpoint_name="ft",
        checkpoint_root=ckroot,
    )
    run.run()
    assert run.base is _gpt2_master  # kept with the run, untouched by training
    assert all(torch.equal(p, original[n]) for n, p in run.base.named_parameters())
    base = {"name": "tiny GPT-2", "spec": "tiny-spec", "source": "/models/tiny", "identity": "dir:1234"}
    assert (run.base_info.name, run.base_info.spec, run.base_info.source) == (
        base["name"],
        base["spec"],
        base["source"],
    )
    now_loaded = load_checkpoint("ft", root=ckroot)  # what the sidebar holds after opening it
    assert now_loaded.settings["base"] == base  # the checkpoint says what it was trained from

    prompt = "The quick brown"
    result = compare_models(run.base, now_loaded.model, run.tokenizer, prompt)
    direct = compare_next_token(_gpt2_master, run.model, tok, prompt)
    assert result.next_token.kl_after_before > 0
    assert result.next_token.kl_after_before == pytest.approx(direct.kl_after_before, rel=1e-4)
    assert np.all(result.drift.relative > 0) and result.attention.mean_abs_delta.max() > 0
    assert result.lens.before.top_tokens == logit_lens(_gpt2_master, tok, prompt).top_tokens


def test_before_after_views(_gpt2_master, tok):
    before = _gpt2_master
    after = copy.deepcopy(before)
    _run(after, tok, train_part="last_n_blocks", n_last_blocks=1, steps=3).run()
    prompt = "The quick brown"

    same = compare_next_token(before, before, tok, prompt)
    assert same.kl_after_before == pytest.approx(0, abs=1e-12)
    cmp = compare_next_token(before, after, tok, prompt, top_k=5)
    assert cmp.p_before.sum() == pytest.approx(1) and cmp.p_after.sum() == pytest.approx(1)
    assert cmp.kl_after_before > 0 and cmp.kl_before_after > 0
    assert 5 <= len(cmp.top) <= 10 and cmp.top[0].p_after == pytest.approx(cmp.p_after.max())
    assert cmp.top[0].token == " fox"  # it learned the sentence

    change = attention_change(before, after, tok, prompt)
    T = len(tok.encode(prompt))
    assert change.before.shape == change.after.shape == (2, 2, T, T) and change.tokens[0] == "The"
    assert np.allclose(change.after.sum(-1), 1) and np.all(np.triu(change.after, k=1) == 0)
    assert change.mean_abs_delta.shape == (2, 2)
    assert np.all(change.mean_abs_delta[0] == 0) and np.all(change.mean_abs_delta[1] > 0)  # block 0 frozen

    lens = logit_lens(after, tok, prompt, target=" fox")
    assert lens.layers == ["input", "after block 0", "after block 1"] and lens.target_token == " fox"
    probs = next_token_probs(after, tok, prompt)
    assert lens.target_probs[-1] == pytest.approx(probs[lens.target_token_id], rel=1e-5)  # last = the output
    assert lens.top_probs[-1] == pytest.approx(probs.max(), rel=1e-5)
    both = compare_logit_lens(before, after, tok, prompt, target=" fox")
    assert both.after.target_probs[-1] > both.before.target_probs[-1]

    drift = weight_drift(before, after)
    assert drift.groups == ["embeddings", "block 0", "block 1", "final norm/head"]
    assert drift.relative[0] == drift.relative[1] == 0.0 and drift.relative[2] > 0 and drift.relative[3] > 0

    with pytest.raises(InputError, match="Type a prompt"):
        compare_next_token(before, after, tok, "  ")


def test_logit_lens_on_llama_ends_at_the_model_output(llama, tok):
    attn = llama.config._attn_implementation
    lens = logit_lens(llama, tok, "Hello there", target=7)
    probs = next_token_probs(llama, tok, "Hello there")
    assert len(lens.layers) == 3 and lens.target_probs[-1] == pytest.approx(probs[7], rel=1e-5)
    assert attention_change(llama, llama, tok, "Hello there").before.shape[:2] == (2, 4)
    assert llama.config._attn_implementation == attn  # eager only while the maps were read


# --------------------------------------------------------------------------- charts


def test_chart_specs(_gpt2_master, tok):
    after = copy.deepcopy(_gpt2_master)
    run = _run(after, tok)
    run.run()
    spec = loss_chart(run.history, log_scale=True).to_dict()
    assert len(spec["layer"]) == 2 and spec["resolve"]["scale"]["y"] == "independent"
    curves = spec["layer"][0]["layer"][0]
    assert curves["encoding"]["y"]["scale"]["type"] == "log"
    values = next(iter(spec["datasets"].values()))
    assert {v["series"] for v in values} == {"train", "held-out"} and len(values) == 4 + 2
    assert "layer" not in loss_chart(run.history, show_lr=False).to_dict()["layer"][0]

    bars = grad_norm_chart(run.history[-1]).to_dict()
    assert [v["layer"] for v in next(iter(bars["datasets"].values()))] == list(run.history[-1].grad_norms)
    drift = drift_chart(weight_drift(_gpt2_master, after)).to_dict()
    assert drift["mark"]["type"] == "bar" and drift["encoding"]["y"]["field"] == "relative_change"
    prompt = "The quick brown"
    cmp = compare_next_token(_gpt2_master, after, tok, prompt)
    bars = next(iter(next_token_chart(cmp).to_dict()["datasets"].values()))
    assert [(b["token"], b["model"]) for b in bars] == [
        (repr(t.token), model) for t in cmp.top for model in ("before", "after")
    ]
    assert [b["p"] for b in bars] == pytest.approx([p for t in cmp.top for p in (t.p_before, t.p_after)])
    heat = attention_change_chart(attention_change(_gpt2_master, after, tok, prompt)).to_dict()
    assert heat["mark"]["type"] == "rect" and len(next(iter(heat["datasets"].values()))) == 4
    lens = compare_logit_lens(_gpt2_master, after, tok, prompt, " fox")
    points = next(iter(logit_lens_chart(lens).to_dict()["datasets"].values()))
    for model, one in (("before", lens.before), ("after", lens.after)):
        mine = [pt for pt in points if pt["model"] == model]
        assert [pt["layer"] for pt in mine] == one.layers
        assert [pt["p"] for pt in mine] == pytest.approx(one.target_probs.tolist())


# --------------------------------------------------------------------------- command line


def test_cli_rejects_bad_settings(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--model", "x", "--text-file", "f", "--out", "o", "--lr", "1000"])
    assert exit_.value.code == 2
    assert "lr=1000.0 is out of range" in capsys.readouterr().err


def test_cli_reports_unreadable_text(tmp_path, caplog):
    code = main(["--model", str(tmp_path), "--text-file", str(tmp_path / "none.txt"), "--out", "o"])
    assert code == 1 and "Cannot read" in caplog.text


def test_cli_trains_and_saves_a_checkpoint(tiny_dir, tmp_path):
    model_dir = tiny_dir
    text_file = tmp_path / "fox.txt"
    text_file.write_text(TEXT, encoding="utf-8")
    data_dir = tmp_path / "data"
    env = {**os.environ, "VECTORLAB_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable,
        "-m",
        "core.training.cli",
        "--model",
        str(model_dir),
        "--text-file",
        str(text_file),
    ]
    command += ["--steps", "3", "--batch-size", "2", "--seq-len", "16", "--lr", "0.01", "--out", "cli-fox"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "step 3/3" in done.stderr
    [info] = list_checkpoints(data_dir / "checkpoints")
    assert (info.name, info.steps, info.base_model) == ("cli-fox", 3, "tiny-gpt2")
    history = json.loads((info.path / "history.json").read_text())
    assert [h["step"] for h in history] == [1, 2, 3] and history[-1]["loss"] < history[0]["loss"]


def test_cli_stops_a_diverging_run_and_saves_it_only_when_asked(tiny_dir, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("VECTORLAB_DATA_DIR", str(tmp_path / "data"))
    text_file = tmp_path / "fox.txt"
    text_file.write_text(TEXT, encoding="utf-8")
    command = ["--model", str(tiny_dir), "--text-file", str(text_file), "--out", "wild", "--cpu"]
    command += ["--steps", "30", "--batch-size", "2", "--seq-len", "16", "--lr", "1.0"]
    with caplog.at_level("INFO"):
        assert main(command) == 1
    assert "error: Training diverged at step" in caplog.text
    assert "Pass --save-diverged to save it anyway." in caplog.text
    assert list_checkpoints(tmp_path / "data" / "checkpoints") == []
    caplog.clear()
    with caplog.at_level("INFO"):
        assert main([*command, "--save-diverged"]) == 1  # still a failed run, but its model is kept
    [info] = list_checkpoints(tmp_path / "data" / "checkpoints")
    assert f"saved the diverged model anyway: {info.path}" in caplog.text
    assert load_checkpoint(info.path).settings["diverged"] is True
