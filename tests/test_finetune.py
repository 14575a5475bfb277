"""Fine-tuning: settings, the held-out split, freezing, AdamW state, stop/resume, checkpoints,
divergence, before/after views, charts and the command line, on tiny seeded GPT-2 and Llama models."""

from __future__ import annotations

import copy
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import tiny_gpt2_model, tiny_llama_model

import core.finetune_checkpoints as ckpt
from core.errors import InputError
from core.finetune import (
    FineTuneRun,
    TrainConfig,
    TrainingDivergedError,
    main,
    prepare_data,
)
from core.finetune_arch import apply_freezing, layer_groups, model_parts
from core.finetune_checkpoints import list_checkpoints, load_checkpoint
from core.finetune_compare import (
    attention_change,
    compare_logit_lens,
    compare_next_token,
    logit_lens,
    next_token_probs,
    weight_drift,
)
from core.models import gpt2_tokenizer
from core.training_charts import (
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
    ],
)
def test_bad_settings_say_how_to_fix_them(settings, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
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
    assert parted.run().status == "finished"  # nothing left to do


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


def test_from_loaded_trains_a_copy_and_checkpoints_can_be_deleted(_gpt2_master, tok, ckroot):
    from types import SimpleNamespace

    original = _params(_gpt2_master)
    loaded = SimpleNamespace(model=_gpt2_master, tokenizer=tok, info=SimpleNamespace(name="tiny GPT-2"))
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


# --------------------------------------------------------------------------- before / after


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
    assert lens.layers == ["embeddings", "block 0", "block 1"] and lens.target_token == " fox"
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
    next_token_chart(compare_next_token(_gpt2_master, after, tok, prompt)).to_dict()
    heat = attention_change_chart(attention_change(_gpt2_master, after, tok, prompt)).to_dict()
    assert heat["mark"]["type"] == "rect" and len(next(iter(heat["datasets"].values()))) == 4
    logit_lens_chart(compare_logit_lens(_gpt2_master, after, tok, prompt, " fox")).to_dict()


# --------------------------------------------------------------------------- command line


def test_cli_rejects_bad_settings(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--model", "x", "--text-file", "f", "--out", "o", "--lr", "1000"])
    assert exit_.value.code == 2
    assert "lr=1000.0 is out of range" in capsys.readouterr().err


def test_cli_reports_unreadable_text(tmp_path, caplog):
    code = main(["--model", str(tmp_path), "--text-file", str(tmp_path / "none.txt"), "--out", "o"])
    assert code == 1 and "Cannot read" in caplog.text


def test_cli_trains_and_saves_a_checkpoint(_gpt2_master, tok, tmp_path):
    model_dir = tmp_path / "tiny-gpt2"
    _gpt2_master.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    text_file = tmp_path / "fox.txt"
    text_file.write_text(TEXT, encoding="utf-8")
    data_dir = tmp_path / "data"
    env = {**os.environ, "VECTORLAB_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable,
        "-m",
        "core.finetune",
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
