"""What a fine-tuning run will cost before it starts: one timed step of the real model (`time_step`)
times how often the run needs it (`estimate_run`)."""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch

from core.errors import InputError
from core.training.config import TrainConfig
from core.training.data import TrainData
from core.training.parts import apply_freezing

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepTiming:
    """One step of a model and settings, timed on this machine (see `time_step`)."""

    seq_len: int  # tokens per sequence the passes were timed at
    rows: int  # sequences in the timed batch: the run's batch size, or fewer for a big batch
    forward_backward_s: float  # forward + backward of a [rows, seq_len] batch (trained weights' grads)
    forward_s: float  # forward of a [rows, seq_len] batch without gradients (held-out evaluation)
    update_s: float  # gradient norms, clipping and the AdamW update of every trained weight
    n_trainable: int  # weights the update moves


@dataclass(frozen=True)
class RunEstimate:
    """How long a run will take: measured pieces times how often the run needs them."""

    step_s: float  # one training step: batch_size sequences forward and backward, then the update
    eval_s: float  # one held-out evaluation
    n_evals: int  # evaluations in the run (every eval_every steps and after the last)
    total_s: float  # steps × step_s + n_evals × eval_s
    timing: StepTiming


_FLAGS_LOCK = threading.Lock()


def time_step(
    model: Any, config: TrainConfig, max_tokens: int = 1024, max_update_weights: int = 1 << 22
) -> StepTiming:
    """Time one training step of `model` under `config` without changing the model.

    Runs one forward + backward of a [rows, seq_len] batch (the run's batch, or as many sequences
    as fit in `max_tokens`) taking gradients of exactly the weights `config.train_part` trains
    (with `torch.autograd.grad`, so no `.grad` is written and the shared model's `requires_grad`
    flags end as they were), one forward without gradients, and AdamW's update on a scratch tensor
    of up to `max_update_weights` weights scaled to the trained count (the update streams every
    weight through memory a fixed number of times, so its time is linear in the count). A warm-up
    pass runs first, untimed.
    """
    with _FLAGS_LOCK:  # two sessions timing at once must not save each other's temporary flags
        flags = [p.requires_grad for p in model.parameters()]
        try:
            names = set(apply_freezing(model, config.train_part, config.n_last_blocks))
        finally:
            for p, flag in zip(model.parameters(), flags, strict=True):
                p.requires_grad_(flag)
    trained = [p for n, p in model.named_parameters() if n in names]
    n_trainable = sum(p.numel() for p in trained)
    device = next(model.parameters()).device
    vocab = model.get_input_embeddings().weight.shape[0]
    generator = torch.Generator().manual_seed(0)
    rows = max(1, min(config.batch_size, max_tokens // config.seq_len))
    ids = torch.randint(0, vocab, (rows, config.seq_len), generator=generator).to(device)  # [rows, T]
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=config.bf16)

    def forward_backward() -> None:
        with torch.enable_grad(), autocast:
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        torch.autograd.grad(loss, trained)

    @torch.no_grad()
    def forward() -> None:
        with autocast:
            model(input_ids=ids, labels=ids, use_cache=False)

    was_training = model.training
    model.eval()  # as the run steps it (dropout off)
    try:
        forward_backward()  # warm-up: first-use allocations
        forward_backward_s = _seconds(forward_backward)
        forward_s = _seconds(forward)
    finally:
        model.train(was_training)

    size = max(1, min(n_trainable, max_update_weights))
    scratch = torch.nn.Parameter(torch.zeros(size, device=device))
    scratch.grad = torch.randn(size, generator=generator).to(device)
    optimizer = torch.optim.AdamW([scratch], lr=config.lr, weight_decay=config.weight_decay)

    def update() -> None:
        grads = [scratch.grad]
        total = torch.nn.utils.get_total_norm(grads)  # the global norm
        torch.nn.utils.get_total_norm(grads)  # the per-layer norms read every gradient once more
        torch.nn.utils.clip_grads_with_norm_([scratch], max(config.grad_clip, 1.0), total)
        optimizer.step()

    update()  # warm-up: AdamW creates its state on the first step
    update_s = _seconds(update) * n_trainable / size
    return StepTiming(config.seq_len, rows, forward_backward_s, forward_s, update_s, n_trainable)


def _seconds(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def estimate_run(timing: StepTiming, config: TrainConfig, data: TrainData) -> RunEstimate:
    """The run's duration from `timing` (same seq_len): steps and evaluations as `FineTuneRun` takes them."""
    if timing.seq_len != config.seq_len:
        raise InputError(
            f"The step was timed at seq_len={timing.seq_len}, not {config.seq_len}: time it again."
        )
    batch = min(config.batch_size, data.summary.n_train_sequences)  # the loader's batches
    step_s = batch / timing.rows * timing.forward_backward_s + timing.update_s
    n_eval = data.summary.n_eval_sequences
    n_evals = 0
    if n_eval:
        n_evals = config.steps // config.eval_every + (1 if config.steps % config.eval_every else 0)
    chunks = math.ceil(n_eval / config.batch_size)
    if config.eval_batches:
        chunks = min(chunks, config.eval_batches)
    evaluated = min(n_eval, chunks * config.batch_size)  # sequences one evaluation reads
    eval_s = evaluated / timing.rows * timing.forward_s
    return RunEstimate(
        step_s=step_s,
        eval_s=eval_s,
        n_evals=n_evals,
        total_s=config.steps * step_s + n_evals * eval_s,
        timing=timing,
    )
