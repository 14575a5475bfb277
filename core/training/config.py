"""Fine-tuning settings: `TrainConfig`, every field with its default and the check that says how to fix a
bad value (SettingsError), and the learning-rate schedule it implies."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from core.errors import SettingsError
from core.training.parts import TRAIN_PARTS

LR_SCHEDULES = ("constant", "linear", "cosine")


@dataclass
class TrainConfig:
    """Everything a fine-tuning run needs to know besides the model and the text.

    The defaults suit a CPU and a small model (GPT-2 small, SmolLM2-135M): a minute or two of training
    on a few pages of text that visibly moves the loss.
    """

    lr: float = 1e-4  # AdamW learning rate; 1e-5 … 1e-3 is the useful range for fine-tuning
    steps: int = 60  # optimizer updates in the whole run
    batch_size: int = 4  # sequences per step
    seq_len: int = 64  # tokens per training sequence
    train_part: str = "all"  # "all", "last_n_blocks" (top blocks + final norm) or "embeddings"
    n_last_blocks: int = 2  # how many top blocks train when train_part="last_n_blocks"
    eval_fraction: float = 0.1  # tail of the text held out for eval loss (0 = no held-out eval)
    eval_every: int = 10  # steps between held-out evaluations (the last step is always evaluated)
    eval_batches: int = 8  # at most this many held-out batches per evaluation (0 = all of them)
    seed: int = 0  # seeds batch order and dropout: same seed + same model + same text = same run
    bf16: bool = False  # autocast matmuls to bfloat16 (fast on GPUs and on CPUs with AMX/AVX512-BF16)
    checkpoint_every: int = 0  # also save a checkpoint every N steps (0 = only when the run finishes)
    grad_clip: float = 1.0  # scale gradients down to this global L2 norm (0 = no clipping)
    weight_decay: float = 0.0  # AdamW decoupled weight decay (0 keeps each update = lr·m̂/(√v̂+ε))
    warmup_steps: int = 0  # ramp the learning rate linearly from lr/warmup_steps up to lr
    lr_schedule: str = "constant"  # after warm-up: "constant", "linear" or "cosine" decay
    dropout: bool = False  # keep the model's dropout on (off: smoother, exactly repeatable curves)
    track_grad_norms: bool = True  # per-layer gradient norms every step (a few % slower)
    # Divergence: the run stops, unsaved, as soon as the mean training loss of the last
    # diverge_window steps is more than diverge_nats above the starting loss: the model's mean loss
    # before any update on diverge_window batches' worth of training sequences spread evenly over
    # the text (like against like: a mean over as many sequences). A step's loss is measured before
    # its update, so before every save the loss of the model being saved (on the last step's batch)
    # joins the window as one more point. 3 nats = the real next tokens get e³ ≈ 20× less
    # probability than at the start; single small batches of mixed text differ by 2-3 nats, their
    # mean over 5 batches by far less, and a learning rate far too high climbs by tens or hundreds.
    diverge_nats: float = 3.0  # how far above the starting loss counts as diverged (0 = never check)
    diverge_window: int = 5  # steps averaged (fewer at the start) so one bad batch is not enough

    def __post_init__(self) -> None:
        if not (isinstance(self.lr, int | float) and 0 < self.lr <= 1):
            raise SettingsError(
                f"lr={self.lr} is out of range: use a learning rate above 0 and at most 1 "
                "(fine-tuning works best between 1e-5 and 1e-3; the default is 1e-4)"
            )
        _check_int("steps", self.steps, 1, 100_000, "it is how many optimizer updates to run")
        _check_int("batch_size", self.batch_size, 1, 1024, "sequences per step")
        _check_int(
            "seq_len",
            self.seq_len,
            2,
            8192,
            "each token is predicted from the ones before it, so 2 is the least",
        )
        if self.train_part not in TRAIN_PARTS:
            raise SettingsError(
                f"train_part={self.train_part!r} is not one of {', '.join(map(repr, TRAIN_PARTS))}"
            )
        _check_int("n_last_blocks", self.n_last_blocks, 1, 1000, "how many of the top blocks train")
        if not (isinstance(self.eval_fraction, int | float) and 0 <= self.eval_fraction <= 0.5):
            raise SettingsError(
                f"eval_fraction={self.eval_fraction} must be between 0 and 0.5: it is the share of the "
                "text held out for evaluation (0 turns held-out evaluation off)"
            )
        _check_int("eval_every", self.eval_every, 1, 100_000, "steps between held-out evaluations")
        _check_int("eval_batches", self.eval_batches, 0, 100_000, "0 evaluates every held-out batch")
        _check_int("seed", self.seed, 0, 2**63 - 1, "any whole number 0 or above")
        _check_int("checkpoint_every", self.checkpoint_every, 0, 100_000, "0 saves only at the end")
        if not (isinstance(self.grad_clip, int | float) and 0 <= self.grad_clip < math.inf):
            raise SettingsError(
                f"grad_clip={self.grad_clip} must be 0 (no clipping) or a positive norm like 1.0"
            )
        if not (isinstance(self.weight_decay, int | float) and 0 <= self.weight_decay < 1):
            raise SettingsError(
                f"weight_decay={self.weight_decay} must be at least 0 and below 1 (0.0 or 0.01 are usual)"
            )
        _check_int("warmup_steps", self.warmup_steps, 0, 100_000, "0 starts at the full learning rate")
        if self.warmup_steps >= self.steps and self.warmup_steps > 0:
            raise SettingsError(
                f"warmup_steps={self.warmup_steps} must be smaller than steps={self.steps}, "
                "or the run would end before reaching the full learning rate"
            )
        if self.lr_schedule not in LR_SCHEDULES:
            raise SettingsError(
                f"lr_schedule={self.lr_schedule!r} is not one of {', '.join(map(repr, LR_SCHEDULES))}"
            )
        if not (isinstance(self.diverge_nats, int | float) and 0 <= self.diverge_nats < math.inf):
            raise SettingsError(
                f"diverge_nats={self.diverge_nats} must be a positive number of nats like 3.0, or 0 to "
                "never stop a run for a rising loss"
            )
        _check_int(
            "diverge_window",
            self.diverge_window,
            1,
            1000,
            "steps averaged before comparing with the starting loss",
        )

    def divergence_limit(self, start_loss: float) -> float:
        """The mean loss above which a run that started at `start_loss` counts as diverged."""
        return start_loss + self.diverge_nats if self.diverge_nats > 0 else math.inf

    def lr_at(self, step: int) -> float:
        """Learning rate used by optimizer step `step` (1-based): warm-up, then the schedule."""
        i = step - 1
        if i < self.warmup_steps:
            return self.lr * (i + 1) / self.warmup_steps
        progress = (i - self.warmup_steps) / max(1, self.steps - self.warmup_steps)  # 0 … <1
        if self.lr_schedule == "linear":
            return self.lr * (1.0 - progress)
        if self.lr_schedule == "cosine":
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.lr


def _check_int(name: str, value: Any, lo: int, hi: int, hint: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise SettingsError(f"{name}={value!r} must be a whole number from {lo} to {hi} ({hint})")
