"""When a run counts as diverged: a loss or gradient that is not a finite number, or a training loss
that climbed far above where it started (`TrainConfig.diverge_nats`), and the error that says so."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from core.errors import VectorLabError
from core.training.checkpoints import CheckpointInfo
from core.training.config import TrainConfig


class TrainingDivergedError(VectorLabError):
    """The run went wrong and was stopped: the loss or the gradients stopped being finite numbers (the
    bad update was not applied), or the loss climbed far above where it started (see
    `TrainConfig.diverge_nats`; the updates were applied, and the model is not saved)."""

    def __init__(
        self,
        message: str,
        step: int,
        checkpoint: CheckpointInfo | None,
        mean_loss: float | None = None,
        start_loss: float | None = None,
        probe_loss: float | None = None,
    ) -> None:
        super().__init__(message)
        self.step = step  # the step that diverged
        self.checkpoint = checkpoint  # the last good checkpoint this run wrote, if any
        self.mean_loss = mean_loss  # the windowed mean loss that crossed the limit (loss rule only)
        self.start_loss = start_loss  # the starting loss it was compared with (loss rule only)
        self.probe_loss = probe_loss  # the loss of the model about to be saved (checked at a save)


def start_rows(train: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """[n, seq_len] the training sequences ([N, seq_len] `train`) the starting loss is measured on:
    diverge_window batches' worth (or all of them, if fewer), spread evenly from the first to the last."""
    n = min(train.shape[0], config.diverge_window * config.batch_size)
    return train[torch.linspace(0, train.shape[0] - 1, n).round().long()]


def risen_loss(
    losses: Sequence[float], start_loss: float | None, config: TrainConfig, probe_loss: float | None = None
) -> tuple[float, int] | None:
    """(mean, points) of the last diverge_window step losses when that mean is above
    `config.divergence_limit(start_loss)`; None while the run is fine or the rule is off.

    `probe_loss` (at a save) is the loss of the model about to be saved, counted as one more point.
    """
    if not losses or config.diverge_nats <= 0 or start_loss is None:
        return None
    recent = list(losses[-config.diverge_window :])  # O(window) a step, not O(step)
    window = (recent + ([] if probe_loss is None else [probe_loss]))[-config.diverge_window :]
    mean = sum(window) / len(window)
    if mean <= config.divergence_limit(start_loss):  # a NaN mean fails this test too
        return None
    return mean, len(window)
