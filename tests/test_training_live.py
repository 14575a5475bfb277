"""Watching a run: the job's snapshot stays small however long the run, its curves are exact means of
the steps, the training page reads nothing but the snapshot while a run goes, and the time estimate
shown before Start is built from the real model without changing it."""

from __future__ import annotations

import copy
import pickle
import threading

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest
from test_pages import ROOT, TIMEOUT, assert_clean, metrics

from core.training.config import TrainConfig
from core.training.data import prepare_data
from core.training.estimate import estimate_run, time_step
from core.training.jobs import EVAL_SERIES, LOSS_SERIES, RUNNING, TrainingJob
from core.training.loop import FineTuneRun
from core.training.parts import apply_freezing
from ui import state

TEXT = "Gradients flow backwards through every layer, and Adam turns them into steps. " * 30
EPS64 = np.finfo(np.float64).eps


def _run(loaded, steps: int, **settings) -> FineTuneRun:
    config = TrainConfig(steps=steps, batch_size=2, seq_len=16, eval_every=3, seed=0, **settings)
    return FineTuneRun.from_loaded(loaded, prepare_data(TEXT, loaded.tokenizer, config), config)


def _finished(job: TrainingJob, run: FineTuneRun):
    job.start(run, label="test")
    assert job.wait(120)
    snap = job.snapshot()
    assert snap.status == "finished", snap.error
    return snap


def _check_means(curve, steps: np.ndarray, series: np.ndarray) -> None:
    """Every point is the mean of `series` [n_steps, k] over the steps it covers, in step order."""
    ends = np.searchsorted(steps, curve.steps) + 1  # one past each point's last step
    starts = ends - curve.counts
    assert starts[0] == 0 and (starts[1:] == ends[:-1]).all()  # consecutive, nothing skipped
    for (start, end), got in zip(zip(starts, ends, strict=True), curve.values, strict=True):
        want = series[start:end].mean(axis=0)
        scale = np.abs(series[start:end]).max(axis=0)
        np.testing.assert_allclose(got, want, rtol=0, atol=float(scale.max()) * (end - start) * EPS64)


def test_snapshot_stays_small_however_long_the_run(_tiny_gpt2_master):
    cap = 4
    short = _finished(TrainingJob(max_points=cap), _run(_tiny_gpt2_master, steps=cap))
    job = TrainingJob(max_points=cap)
    long = _finished(job, _run(_tiny_gpt2_master, steps=8 * cap + 3))
    history = job.run.history
    assert len(history) == 8 * cap + 3 and len(short.loss) == cap

    # Nothing in the snapshot grows with the run: the long run's pickles no bigger than the short one's.
    assert len(pickle.dumps(long)) <= len(pickle.dumps(short))
    for curve in (long.loss, long.eval, long.grad_norms):
        k = len(curve.names)
        assert len(curve) <= cap
        assert curve.nbytes <= cap * (8 + 8 + 8 * k)  # last step, count and k means per point
        assert not curve.values.flags.writeable and not curve.steps.flags.writeable
    assert long.loss.steps_per_point == 16 and long.loss.counts.sum() == len(history)

    # The points are the exact means of the steps they cover.
    steps = np.array([h.step for h in history])
    _check_means(long.loss, steps, np.array([[h.loss, h.lr] for h in history]))
    layers = long.grad_norms.names
    assert list(layers) == job.run.layer_names
    _check_means(long.grad_norms, steps, np.array([[h.grad_norms[g] for g in layers] for h in history]))
    evaluated = [h for h in history if h.eval_loss is not None]
    _check_means(
        long.eval, np.array([h.step for h in evaluated]), np.array([[h.eval_loss] for h in evaluated])
    )
    assert (long.loss.names, long.eval.names) == (LOSS_SERIES, EVAL_SERIES)
    assert (long.last, long.first_loss, long.eval_loss) == (
        history[-1],
        history[0].loss,
        evaluated[-1].eval_loss,
    )

    # A coarser view for a heatmap keeps exact means too.
    coarse = long.grad_norms.coarsen(3)
    assert len(coarse) <= 3 and coarse.counts.sum() == len(history)
    _check_means(coarse, steps, np.array([[h.grad_norms[g] for g in layers] for h in history]))


class _RunGuard:
    """Stands in for the job's run while the page is drawn: reading the run's model, optimizer,
    history or tensors fails the test (the page must take all of that from the snapshot)."""

    FORBIDDEN = frozenset(
        {
            "model",
            "base",
            "optimizer",
            "history",
            "last_batch",
            "data",
            "groups",
            "layer_names",
            "last_eval_loss",
            "adam_state",
            "token_embedding_grad",
            "evaluate",
            "save_checkpoint",
        }
    )

    def __init__(self, run: FineTuneRun) -> None:
        object.__setattr__(self, "_run", run)

    def __getattr__(self, name: str):
        if name in self.FORBIDDEN:
            raise AssertionError(f"the training page read run.{name} during the run")
        return getattr(object.__getattribute__(self, "_run"), name)


def test_the_page_reads_only_the_snapshot_during_a_run(job, tiny_gpt2_dir, monkeypatch):
    held_at, release = 7, threading.Event()
    real_step = FineTuneRun._one_step

    def step_then_hold(self):
        record = real_step(self)
        if self.step == held_at + 1:  # step held_at is published; hold here until the page is drawn
            release.wait(60)
        return record

    monkeypatch.setattr(FineTuneRun, "_one_step", step_then_hold)
    at = AppTest.from_file(str(ROOT / "pages" / "8_training.py"), default_timeout=TIMEOUT)
    at.session_state[state.MODEL_SPEC] = str(tiny_gpt2_dir)
    at.run()
    at.number_input(key="train_steps").set_value(50).run()
    at.text_input(key="train_ckpt").input("").run()
    at.button(key="train_start").click().run()
    while job.snapshot().step < held_at and job.snapshot().status == RUNNING:
        release.wait(0.01)
    snap = job.snapshot()
    assert (snap.status, snap.step) == (RUNNING, held_at)

    real_run = job.run
    job.run = _RunGuard(real_run)
    try:
        at.run()
    finally:
        job.run = real_run
        release.set()
    assert_clean(at)
    m = metrics(at)
    assert float(m["Loss"]) == pytest.approx(snap.last.loss, abs=1e-4)
    assert float(m["Gradient norm"]) == pytest.approx(snap.last.grad_norm, abs=1e-3)
    assert any(f"step {held_at} of 50" in p.text for p in at.get("progress"))


def test_the_estimate_times_the_real_model_without_changing_it(_tiny_gpt2_master):
    model = _tiny_gpt2_master.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    config = TrainConfig(steps=25, batch_size=3, seq_len=16, eval_every=10, train_part="last_n_blocks")
    timing = time_step(model, config)

    for name, p in model.named_parameters():  # the shared model is exactly as it was
        assert p.grad is None and p.requires_grad == flags[name], name
        assert torch.equal(p.detach(), before[name]), name
    trained_copy = copy.deepcopy(model)
    trained = set(apply_freezing(trained_copy, "last_n_blocks", config.n_last_blocks))
    assert timing.n_trainable == sum(p.numel() for n, p in trained_copy.named_parameters() if n in trained)
    assert timing.n_trainable < sum(p.numel() for p in model.parameters())
    assert min(timing.forward_backward_s, timing.forward_s, timing.update_s) > 0

    data = prepare_data(TEXT, _tiny_gpt2_master.tokenizer, config)
    estimate = estimate_run(timing, config, data)
    assert estimate.n_evals == 3  # after steps 10, 20 and the last, as the run evaluates
    n_eval = min(data.summary.n_eval_sequences, config.eval_batches * config.batch_size)
    assert timing.rows == 3  # the run's own batch shape, [3, 16]
    assert estimate.step_s == pytest.approx(timing.forward_backward_s + timing.update_s, rel=4 * EPS64)
    assert estimate.eval_s == pytest.approx(n_eval / 3 * timing.forward_s, rel=4 * EPS64)
    assert time_step(model, config, max_tokens=16).rows == 1  # a big batch is timed a sequence at a time
    assert estimate.total_s == pytest.approx(25 * estimate.step_s + 3 * estimate.eval_s, rel=4 * EPS64)


def test_each_step_runs_with_the_threads_the_server_gives_at_that_moment(_tiny_gpt2_master):
    """Asked before the first step and after each one: a run started beside another session gets its
    cores back when that session leaves, and gives one up when a session connects mid-run."""
    given = [1, 2, 2, 1, 2]  # sessions come and go: what the server would give before each step
    asked = iter(given)
    job = TrainingJob(before_step=lambda: torch.set_num_threads(next(asked, given[-1])))
    ran_with = []
    publish = job._publish

    def record(run, step):  # in the training thread, right after a step, before the next is set up
        ran_with.append(torch.get_num_threads())
        publish(run, step)

    job._publish = record
    _finished(job, _run(_tiny_gpt2_master, steps=len(given)))
    assert ran_with == given


def test_the_page_job_asks_the_server_for_its_threads():
    from ui import cores

    job = state.training_job()
    assert job.before_step is cores.share_cores
    before = torch.get_num_threads()
    try:
        assert job.before_step() == cores.threads_for(cores.connected_sessions(), cores.cores())
    finally:
        torch.set_num_threads(before)  # share_cores set this thread's own
