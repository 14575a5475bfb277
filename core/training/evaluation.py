"""Next-token losses measured without training (eval mode: no dropout, no RNG drawn), under the same
bfloat16 autocast a run trains with: one batch's loss, and the mean over many sequences."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch


@contextmanager
def autocast(device: torch.device, bf16: bool) -> Iterator[None]:
    """Matmuls in bfloat16 on `device` when `bf16` is on; a no-op otherwise."""
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
        yield


@contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Dropout off while measuring; the model goes back to the mode it came in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def batch_loss(model: Any, batch: torch.Tensor, device: torch.device, bf16: bool) -> float:
    """Mean next-token cross-entropy of `batch` [B, T] as the model is now (it shifts the labels itself)."""
    with eval_mode(model):
        batch = batch.to(device)  # [B, T]
        with autocast(device, bf16):
            loss = model(input_ids=batch, labels=batch, use_cache=False).loss
        return float(loss.float())


@torch.no_grad()
def mean_loss(model: Any, chunks: Sequence[torch.Tensor], device: torch.device, bf16: bool) -> float:
    """Mean next-token loss over the token rows of `chunks` ([b, T] each), weighted by predicted positions."""
    total, count = 0.0, 0
    with eval_mode(model):
        for chunk in chunks:
            with autocast(device, bf16):
                chunk = chunk.to(device)
                loss = model(input_ids=chunk, labels=chunk, use_cache=False).loss
            n = chunk.shape[0] * (chunk.shape[1] - 1)  # predicted positions
            total += float(loss.float()) * n
            count += n
    return total / count
