"""Fine-tuning a causal LM with plain AdamW: settings, the train/held-out split, the training loop with
its per-step gradient and optimizer views, stop/resume, checkpoints, and the command line
(`python -m core.training.finetune`)."""

from __future__ import annotations

import argparse
import copy
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from core.errors import InputError, VectorLabError
from core.training.checkpoints import (
    CheckpointInfo,
    check_name,
    checkpoints_dir,
    is_checkpoint,
    save_checkpoint,
)
from core.training.parts import TRAIN_PARTS, apply_freezing, layer_groups, model_parts, parameter_by_name

log = logging.getLogger(__name__)

LR_SCHEDULES = ("constant", "linear", "cosine")
RUN_STATES = ("ready", "running", "stopped", "finished", "diverged")


# --------------------------------------------------------------------------- settings


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
            raise ValueError(
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
            raise ValueError(
                f"train_part={self.train_part!r} is not one of {', '.join(map(repr, TRAIN_PARTS))}"
            )
        _check_int("n_last_blocks", self.n_last_blocks, 1, 1000, "how many of the top blocks train")
        if not (isinstance(self.eval_fraction, int | float) and 0 <= self.eval_fraction <= 0.5):
            raise ValueError(
                f"eval_fraction={self.eval_fraction} must be between 0 and 0.5: it is the share of the "
                "text held out for evaluation (0 turns held-out evaluation off)"
            )
        _check_int("eval_every", self.eval_every, 1, 100_000, "steps between held-out evaluations")
        _check_int("eval_batches", self.eval_batches, 0, 100_000, "0 evaluates every held-out batch")
        _check_int("seed", self.seed, 0, 2**63 - 1, "any whole number 0 or above")
        _check_int("checkpoint_every", self.checkpoint_every, 0, 100_000, "0 saves only at the end")
        if not (isinstance(self.grad_clip, int | float) and 0 <= self.grad_clip < math.inf):
            raise ValueError(
                f"grad_clip={self.grad_clip} must be 0 (no clipping) or a positive norm like 1.0"
            )
        if not (isinstance(self.weight_decay, int | float) and 0 <= self.weight_decay < 1):
            raise ValueError(
                f"weight_decay={self.weight_decay} must be at least 0 and below 1 (0.0 or 0.01 are usual)"
            )
        _check_int("warmup_steps", self.warmup_steps, 0, 100_000, "0 starts at the full learning rate")
        if self.warmup_steps >= self.steps and self.warmup_steps > 0:
            raise ValueError(
                f"warmup_steps={self.warmup_steps} must be smaller than steps={self.steps}, "
                "or the run would end before reaching the full learning rate"
            )
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"lr_schedule={self.lr_schedule!r} is not one of {', '.join(map(repr, LR_SCHEDULES))}"
            )
        if not (isinstance(self.diverge_nats, int | float) and 0 <= self.diverge_nats < math.inf):
            raise ValueError(
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
        raise ValueError(f"{name}={value!r} must be a whole number from {lo} to {hi} ({hint})")


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class DataSummary:
    """How the text turned into training and held-out sequences."""

    n_documents: int  # non-empty texts joined (with an end-of-text token between them)
    n_tokens: int  # tokens in the joined text
    n_train_tokens: int  # tokens before the split point (the training part)
    n_eval_tokens: int  # tokens after the split point (the held-out tail)
    n_train_sequences: int  # [seq_len]-token training sequences cut from the training part
    n_eval_sequences: int  # [seq_len]-token sequences cut from the held-out tail
    seq_len: int
    n_unused_tokens: int  # leftovers too short to fill a sequence at the end of each part


@dataclass(frozen=True)
class TrainData:
    """Token sequences for training and held-out evaluation; the two never share a token position."""

    train: torch.Tensor  # [n_train_sequences, seq_len] int64 token ids from token_ids[:split_index]
    eval: torch.Tensor  # [n_eval_sequences, seq_len] int64 token ids from token_ids[split_index:]
    token_ids: torch.Tensor  # [n_tokens] the whole joined text
    split_index: int  # first token of the held-out tail
    summary: DataSummary


def prepare_data(texts: str | Sequence[str], tokenizer: Any, config: TrainConfig) -> TrainData:
    """Tokenize `texts` (one pasted text or several files' texts), hold out the tail, cut sequences.

    The held-out part is the last `eval_fraction` of the joined tokens, a contiguous portion of the
    text, so evaluation measures text the model never trained on. Raises InputError when the text is
    empty or too short for one sequence in each part.
    """
    if isinstance(texts, str):
        texts = [texts]
    documents = [t for t in texts if t and t.strip()]
    if not documents:
        raise InputError("There is no text to train on: paste some text or add a file that contains text.")

    separator = tokenizer.eos_token_id
    ids: list[int] = []
    for i, document in enumerate(documents):
        if i and separator is not None:
            ids.append(separator)  # documents are separate: do not learn to continue one into the next
        ids.extend(tokenizer(document, add_special_tokens=False, verbose=False)["input_ids"])

    n, seq_len = len(ids), config.seq_len
    n_eval = round(n * config.eval_fraction) if config.eval_fraction > 0 else 0
    n_train = n - n_eval
    if n_train < seq_len:
        held = f" after holding out {n_eval} for evaluation" if n_eval else ""
        raise InputError(
            f"The text is too short to train on: it has {n} tokens ({n_train} for training{held}), "
            f"less than one sequence of seq_len={seq_len}. Add more text or lower seq_len."
        )
    if config.eval_fraction > 0 and n_eval < seq_len:
        raise InputError(
            f"The held-out part is too short: eval_fraction={config.eval_fraction} of {n} tokens is "
            f"{n_eval} tokens, less than one sequence of seq_len={seq_len}. Add more text, lower "
            "seq_len, raise eval_fraction, or set eval_fraction to 0 to train without held-out loss."
        )

    token_ids = torch.tensor(ids, dtype=torch.long)
    n_train_seq, n_eval_seq = n_train // seq_len, n_eval // seq_len
    train = token_ids[: n_train_seq * seq_len].view(n_train_seq, seq_len)
    held_out = token_ids[n_train : n_train + n_eval_seq * seq_len].view(n_eval_seq, seq_len)
    summary = DataSummary(
        n_documents=len(documents),
        n_tokens=n,
        n_train_tokens=n_train,
        n_eval_tokens=n_eval,
        n_train_sequences=n_train_seq,
        n_eval_sequences=n_eval_seq,
        seq_len=seq_len,
        n_unused_tokens=n - (n_train_seq + n_eval_seq) * seq_len,
    )
    return TrainData(train=train, eval=held_out, token_ids=token_ids, split_index=n_train, summary=summary)


class _Sequences(Dataset):
    def __init__(self, rows: torch.Tensor) -> None:
        self.rows = rows  # [N, T]

    def __len__(self) -> int:
        return self.rows.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.rows[i]


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class BaseModelInfo:
    """Which model a run started from: shown beside the before/after views, kept in settings.json."""

    name: str  # as the app shows it, e.g. "gpt2" or "SmolLM2-135M-Instruct (bundled)"
    spec: str  # what `core.model.loading.load_model` was given: "gpt2", "bundled-smollm2", a directory
    source: str  # where its weights came from: a Hub id or a resolved directory
    identity: str  # which files exactly (`core.model.loading.ModelInfo.identity`); "" when not known


@dataclass(frozen=True)
class TrainStep:
    """What one optimizer step did; `on_step` receives one of these after every step."""

    step: int  # 1-based number of the optimizer step just taken
    loss: float  # mean next-token cross-entropy (nats) on this step's batch, before the update
    eval_loss: float | None  # held-out loss after the update (None when not evaluated this step)
    lr: float  # learning rate this step used
    tokens_per_s: float  # training tokens per second through forward, backward and update
    grad_norm: float  # global L2 norm of the trainable gradients, before clipping
    grad_norms: dict[str, float]  # per layer group (embeddings, block i, final norm/head), before
    # clipping; frozen groups are 0.0; empty when track_grad_norms is off
    clipped: bool  # the update used gradients scaled down to grad_clip
    tokens_seen: int  # training tokens processed so far, this step included
    elapsed_s: float  # wall time of the run so far (steps, evaluations, saves)
    eta_s: float  # estimated seconds until the last step, from the mean wall time per step so far

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class AdamState:
    """AdamW's memory for one parameter (or one row of it) after its last step, and what that step did.

    torch keeps m and v as running means that start at 0, so after t steps they are shrunk by
    (1 − β1ᵗ) and (1 − β2ᵗ); the update uses them bias-corrected, m̂ = m / (1 − β1ᵗ) and
    √v̂ = √(v / (1 − β2ᵗ)). `torch.optim.AdamW` (decoupled weight decay λ) then moved every weight by

        Δw = −lr·m̂/(√v̂ + ε) − lr·λ·w      (w: the weight before the step)
    """

    name: str  # parameter name, e.g. "transformer.wte.weight"
    row: int | None  # the row (e.g. a token id) these arrays are for, or None for the whole tensor
    step: int  # AdamW's own step count t for this parameter
    lr: float  # learning rate of the last step
    beta1: float
    beta2: float
    eps: float
    weight_decay: float  # λ
    exp_avg: np.ndarray  # m: torch's raw running mean of gradients (shape of the parameter or row)
    exp_avg_sq: np.ndarray  # v: torch's raw running mean of squared gradients, same shape
    m_hat: np.ndarray  # m̂ = m / (1 − β1ᵗ): the bias-corrected mean of the gradients
    v_hat_sqrt: np.ndarray  # √v̂ = √(v / (1 − β2ᵗ)): the bias-corrected RMS of the gradients
    step_size: np.ndarray  # lr·m̂/(√v̂+ε): what Adam's own term subtracted from each weight
    update: np.ndarray  # Δw: the whole change of each weight in the last step, weight decay included

    def display_rows(self) -> tuple[list[str], np.ndarray]:
        """The rows the training page shows and their labels: m̂, √v̂ and Δw, [3, *shape]."""
        decay = " − lr·λ·w" if self.weight_decay else ""
        labels = [
            "m̂ = m/(1−β₁ᵗ): bias-corrected mean of g",
            "√v̂ = √(v/(1−β₂ᵗ)): bias-corrected RMS of g",
            f"update Δw = −lr·m̂/(√v̂+ε){decay}",
        ]
        return labels, np.stack([self.m_hat, self.v_hat_sqrt, self.update])


@dataclass(frozen=True)
class RunResult:
    """How a call to `FineTuneRun.run` ended."""

    status: str  # "finished" (all steps done) or "stopped" (should_stop asked; run() again resumes)
    step: int  # optimizer steps taken so far in the whole run
    steps: int  # steps planned (TrainConfig.steps)
    final_loss: float | None  # training loss of the last step taken
    final_eval_loss: float | None  # most recent held-out loss
    elapsed_s: float  # wall time of the run so far
    checkpoint: CheckpointInfo | None  # the last checkpoint this run wrote


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


OnStep = Callable[[TrainStep], None]
ShouldStop = Callable[[], bool]


# --------------------------------------------------------------------------- the loop


class FineTuneRun:
    """One fine-tuning run of `model` on `data`: call `run()`; stop it with `should_stop`; call
    `run()` again to resume from the same step with the same optimizer state, batches and RNG.

    The model is trained in place: pass a copy (or use `from_loaded`) to keep the original as the
    "before" model. Without `accelerator` the loop is plain torch on the model's device; with an
    `accelerate.Accelerator` the same loop runs through `prepare` and `backward` (the CLI does this).
    Training and the UI share torch's global RNG, so the run swaps in its own RNG state while it
    steps and restores the caller's afterwards.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        data: TrainData,
        config: TrainConfig,
        *,
        base_model: str | None = None,
        base_info: BaseModelInfo | None = None,
        base: Any = None,
        checkpoint_name: str | None = None,
        checkpoint_root: Path | None = None,
        accelerator: Any = None,
    ) -> None:
        if data.summary.seq_len != config.seq_len:
            raise InputError(
                f"The data was cut into {data.summary.seq_len}-token sequences but seq_len is "
                f"{config.seq_len}: prepare the data again with this TrainConfig."
            )
        parts = model_parts(model)
        if parts.max_positions and config.seq_len > parts.max_positions:
            raise InputError(
                f"seq_len={config.seq_len} is longer than this model accepts ({parts.max_positions} "
                "positions): lower seq_len."
            )
        self.model = model
        self.tokenizer = tokenizer
        self.data = data
        self.config = config
        self.base_model = (
            base_model
            or (base_info.name if base_info else "")
            or getattr(model.config, "_name_or_path", "")
            or type(model).__name__
        )
        self.base_info = base_info or BaseModelInfo(self.base_model, spec="", source="", identity="")
        self.base = base  # the untouched model training started from ("before"); None: not kept
        self.checkpoint_name = check_name(checkpoint_name) if checkpoint_name else None
        self.checkpoint_root = checkpoint_root
        self.accelerator = accelerator

        self.trainable_names = apply_freezing(model, config.train_part, config.n_last_blocks)
        if not self.trainable_names:
            raise InputError(f"train_part={config.train_part!r} leaves nothing to train in this model.")
        self.groups = layer_groups(model)  # group -> parameter names (every parameter, once)
        named = dict(model.named_parameters())
        self._trainable = [named[n] for n in self.trainable_names]
        trainable_ids = {id(p) for p in self._trainable}
        self._group_params = {
            g: [named[n] for n in names if id(named[n]) in trainable_ids] for g, names in self.groups.items()
        }
        self.n_trainable = sum(p.numel() for p in self._trainable)
        self.n_params = sum(p.numel() for p in model.parameters())

        self.optimizer = torch.optim.AdamW(self._trainable, lr=config.lr, weight_decay=config.weight_decay)
        order = torch.Generator().manual_seed(config.seed)  # batch order, apart from the global RNG
        loader = DataLoader(
            _Sequences(data.train), batch_size=config.batch_size, shuffle=True, generator=order
        )
        if accelerator is not None:
            self._forward_model, self._step_optimizer, self._loader = accelerator.prepare(
                model, self.optimizer, loader
            )
            self.device = accelerator.device
        else:
            self._forward_model, self._step_optimizer, self._loader = model, self.optimizer, loader
            self.device = next(model.parameters()).device
        self._batches: Iterator | None = None
        self.epoch = 0

        with torch.random.fork_rng(devices=self._cuda_devices()):
            torch.manual_seed(config.seed)
            self._rng = self._get_rng()

        self.step = 0
        self.status = "ready"
        self.diverged_at: int | None = None  # the step that diverged, once one has
        self.history: list[TrainStep] = []  # one per step; safe to read from another thread
        self.last_batch: torch.Tensor | None = None  # [batch, seq_len] token ids of the last step
        self.last_checkpoint: CheckpointInfo | None = None
        self.last_eval_loss: float | None = None
        self.start_loss: float | None = None  # mean loss before any update (see TrainConfig.diverge_nats)
        self._wall_s = 0.0
        self._setup_s = 0.0  # part of _wall_s spent before the first step (measuring start_loss)
        self._tokens_seen = 0

    @classmethod
    def from_loaded(cls, loaded: Any, data: TrainData, config: TrainConfig, **kwargs: Any) -> FineTuneRun:
        """Train a deep copy of `loaded.model` (a `core.model.loading.LoadedModel`); the original is untouched
        and kept as the run's `base`, so "before" stays this model whatever is loaded later."""
        info = loaded.info
        kwargs.setdefault("base_model", info.name)
        kwargs.setdefault("base_info", BaseModelInfo(info.name, info.spec, info.source, info.identity))
        kwargs.setdefault("base", loaded.model)
        return cls(copy.deepcopy(loaded.model), loaded.tokenizer, data, config, **kwargs)

    # ----------------------------------------------------------------- running

    def run(self, on_step: OnStep | None = None, should_stop: ShouldStop | None = None) -> RunResult:
        """Take steps until `config.steps` or until `should_stop()` is true (checked before each step).

        Calls `on_step(TrainStep)` after every step. Returns a RunResult; raises
        TrainingDivergedError on a non-finite loss or gradient (the bad update skipped, the model
        left as it was) or on a loss far above where it started (`TrainConfig.diverge_nats`: the run
        stops and its model is not saved).
        """
        if self.status == "diverged":
            raise InputError("This run diverged and cannot continue: start a new one with a lower lr.")
        if self.status == "running":
            raise InputError("This run is already running.")
        self.status = "running"
        cfg = self.config
        was_training = self.model.training
        try:
            if self.start_loss is None and cfg.diverge_nats > 0:
                measuring = time.perf_counter()
                self.start_loss = self._measure_start_loss()
                self._setup_s = time.perf_counter() - measuring
                self._wall_s += self._setup_s
            with self._own_rng():
                while self.step < cfg.steps:
                    if should_stop is not None and should_stop():
                        break
                    record = self._one_step()
                    self.history.append(record)
                    diverged = self._divergence()
                    if on_step is not None:
                        on_step(record)
                    if diverged is not None:
                        raise diverged
                    if (
                        self.checkpoint_name
                        and cfg.checkpoint_every
                        and self.step % cfg.checkpoint_every == 0
                    ):
                        saving = time.perf_counter()
                        self.save_checkpoint()  # after the append: the save records this step too
                        self._wall_s += time.perf_counter() - saving
            if (
                self.step >= cfg.steps
                and self.checkpoint_name
                and (self.last_checkpoint is None or self.last_checkpoint.steps != self.step)
            ):
                self.save_checkpoint()
        except TrainingDivergedError as e:
            self.status, self.diverged_at = "diverged", e.step
            raise
        except BaseException:
            self.status = "stopped"
            raise
        finally:
            self.model.train(was_training)  # hand the model back in the mode it came in
        self.status = "finished" if self.step >= cfg.steps else "stopped"
        last = self.history[-1] if self.history else None
        return RunResult(
            status=self.status,
            step=self.step,
            steps=self.config.steps,
            final_loss=last.loss if last else None,
            final_eval_loss=self.last_eval_loss,
            elapsed_s=self._wall_s,
            checkpoint=self.last_checkpoint,
        )

    def _one_step(self) -> TrainStep:
        cfg = self.config
        started = time.perf_counter()
        step = self.step + 1
        batch = self._next_batch().to(self.device)  # [B, T]
        lr = cfg.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self._step_optimizer.zero_grad(set_to_none=True)  # grads of the previous step lived until now
        self.model.train(cfg.dropout)  # eval mode only switches dropout off; gradients still flow

        with self._autocast():
            loss = self._compute_loss(batch)
        loss_value = float(loss.detach().float())
        if not math.isfinite(loss_value):
            self._diverged(step, f"the training loss became {loss_value}", lr)
        if self.accelerator is not None:
            self.accelerator.backward(loss)
        else:
            loss.backward()

        grads = [p.grad for p in self._trainable if p.grad is not None]
        total = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        grad_norm = float(total)
        if not math.isfinite(grad_norm):
            self._diverged(step, f"the gradient norm became {grad_norm}", lr)
        grad_norms = self._group_grad_norms() if cfg.track_grad_norms else {}
        clipped = cfg.grad_clip > 0 and grad_norm > cfg.grad_clip
        if clipped:
            torch.nn.utils.clip_grads_with_norm_(self._trainable, cfg.grad_clip, total)
        self._step_optimizer.step()
        self.step = step
        train_s = time.perf_counter() - started
        n_tokens = batch.numel()
        self._tokens_seen += n_tokens
        self.last_batch = batch.detach().cpu()

        eval_loss = None
        if self.data.eval.shape[0] and (step % cfg.eval_every == 0 or step == cfg.steps):
            eval_loss = self.evaluate()

        self._wall_s += time.perf_counter() - started
        return TrainStep(
            step=step,
            loss=loss_value,
            eval_loss=eval_loss,
            lr=lr,
            tokens_per_s=n_tokens / max(train_s, 1e-9),
            grad_norm=grad_norm,
            grad_norms=grad_norms,
            clipped=clipped,
            tokens_seen=self._tokens_seen,
            elapsed_s=self._wall_s,
            eta_s=self.eta_s(),
        )

    def _compute_loss(self, batch: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy of `batch` [B, T] (the model shifts the labels itself)."""
        return self._forward_model(input_ids=batch, labels=batch, use_cache=False).loss

    def _group_grad_norms(self) -> dict[str, float]:
        norms = []
        for params in self._group_params.values():
            grads = [p.grad for p in params if p.grad is not None]
            norms.append(torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(()))
        return dict(zip(self._group_params, torch.stack(norms).tolist(), strict=True))

    def _next_batch(self) -> torch.Tensor:
        if self._batches is None:
            self._batches = iter(self._loader)
        try:
            return next(self._batches)
        except StopIteration:
            self.epoch += 1  # a new epoch: the loader reshuffles from its own generator
            self._batches = iter(self._loader)
            return next(self._batches)

    def _diverged(self, step: int, what: str, lr: float) -> None:
        raise TrainingDivergedError(
            f"Training diverged at step {step}: {what}. That update was not applied, so the model is "
            f"as it was after step {step - 1}.{self._kept()} Lower the learning rate (this step used "
            f"{lr:g}) and start a new run.",
            step=step,
            checkpoint=self.last_checkpoint,
        )

    def _kept(self) -> str:
        """What a divergence message says about the checkpoints on disk."""
        kept = self.last_checkpoint
        if kept is not None:
            return f" The last good checkpoint (step {kept.steps}) is kept at {kept.path}."
        if self.checkpoint_name:
            try:
                on_disk = is_checkpoint(checkpoints_dir(self.checkpoint_root) / self.checkpoint_name)
            except (OSError, VectorLabError):
                on_disk = False
            if on_disk:
                return f" The checkpoint '{self.checkpoint_name}' already on disk was left as it was."
        return ""

    def _divergence(self, probe_loss: float | None = None) -> TrainingDivergedError | None:
        """The loss rule of `TrainConfig.diverge_nats`: an error to raise, or None while the run is fine.

        `probe_loss` (at a save) is the loss of the model about to be saved, counted as one more point.
        """
        cfg = self.config
        if not self.history or cfg.diverge_nats <= 0:
            return None
        recent = [h.loss for h in self.history[-cfg.diverge_window :]]  # O(window) a step, not O(step)
        window = (recent + ([] if probe_loss is None else [probe_loss]))[-cfg.diverge_window :]
        mean, start = sum(window) / len(window), self.start_loss
        if start is None or mean <= cfg.divergence_limit(start):  # a NaN mean fails this test too
            return None
        if probe_loss is None:
            what = f"the mean training loss of the last {len(window)} steps is {mean:.2f} nats"
        else:
            what = (
                f"after its update the model's loss on that step's batch is {probe_loss:.2f} nats, "
                f"which brings the mean of the last {len(window)} losses to {mean:.2f} nats"
            )
        return TrainingDivergedError(
            f"Training diverged at step {self.step}: {what}, more than {cfg.diverge_nats:g} nats above "
            f"the starting loss {start:.2f}. The run was stopped and this model was not saved."
            f"{self._kept()} Lower the learning rate (this step used {self.history[-1].lr:g}) and "
            "start a new run.",
            step=self.step,
            checkpoint=self.last_checkpoint,
            mean_loss=mean,
            start_loss=start,
            probe_loss=probe_loss,
        )

    @torch.no_grad()
    def _loss_now(self) -> float:
        """The model's loss, as it is now, on the last step's batch (eval mode: no dropout, no RNG)."""
        was_training = self.model.training
        self.model.eval()
        try:
            batch = self.last_batch.to(self.device)  # [B, T]
            with self._autocast():
                loss = self.model(input_ids=batch, labels=batch, use_cache=False).loss
            return float(loss.float())
        finally:
            self.model.train(was_training)

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean next-token loss on the held-out sequences only (None when there are none)."""
        rows = self.data.eval  # [N_eval, T]
        if rows.shape[0] == 0:
            return None
        chunks = rows.split(self.config.batch_size)
        if self.config.eval_batches:
            chunks = chunks[: self.config.eval_batches]
        self.last_eval_loss = self._mean_loss(chunks)
        return self.last_eval_loss

    @property
    def start_rows(self) -> torch.Tensor:
        """[n, seq_len] the training sequences the starting loss is measured on: diverge_window
        batches' worth (or all of them, if fewer), spread evenly from the first to the last."""
        rows = self.data.train  # [N, T]
        n = min(rows.shape[0], self.config.diverge_window * self.config.batch_size)
        return rows[torch.linspace(0, rows.shape[0] - 1, n).round().long()]

    def _measure_start_loss(self) -> float:
        return self._mean_loss(self.start_rows.split(self.config.batch_size))

    @torch.no_grad()
    def _mean_loss(self, chunks: Sequence[torch.Tensor]) -> float:
        """Mean next-token loss over the token rows of `chunks` ([b, T] each), in eval mode."""
        was_training = self.model.training
        self.model.eval()
        total, count = 0.0, 0
        try:
            for chunk in chunks:
                with self._autocast():
                    chunk = chunk.to(self.device)
                    loss = self.model(input_ids=chunk, labels=chunk, use_cache=False).loss
                n = chunk.shape[0] * (chunk.shape[1] - 1)  # predicted positions
                total += float(loss.float()) * n
                count += n
        finally:
            self.model.train(was_training)
        return total / count

    def eta_s(self) -> float:
        """Seconds still needed for the remaining steps, from the mean wall time per step so far."""
        if self.step == 0:
            return math.nan
        return (self._wall_s - self._setup_s) / self.step * (self.config.steps - self.step)

    @contextmanager
    def _autocast(self):
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.config.bf16):
            yield

    def _cuda_devices(self) -> list[int]:
        device = getattr(self, "device", None) or next(self.model.parameters()).device
        return [device.index or 0] if device.type == "cuda" else []

    def _get_rng(self) -> tuple:
        cuda = [torch.cuda.get_rng_state(d) for d in self._cuda_devices()]
        return torch.get_rng_state(), cuda

    @contextmanager
    def _own_rng(self):
        """Swap this run's RNG state in (dropout draws from torch's global RNG) and back out again."""
        with torch.random.fork_rng(devices=self._cuda_devices()):
            cpu, cuda = self._rng
            torch.set_rng_state(cpu)
            for d, state in zip(self._cuda_devices(), cuda, strict=True):
                torch.cuda.set_rng_state(state, d)
            try:
                yield
            finally:
                self._rng = self._get_rng()

    # ----------------------------------------------------------------- looking inside

    @property
    def layer_names(self) -> list[str]:
        """Layer groups in order: "embeddings", "block 0" … "block L-1", "final norm/head"."""
        return list(self.groups)

    def token_embedding_grad(self, token_id: int) -> np.ndarray:
        """[d_model] gradient of one token's embedding row as AdamW used it (after clipping) in the
        last step; zeros before the first step or when the embeddings are frozen.

        Only tokens in the last batch get a gradient through the input; with tied embeddings every
        row also gets one through the output head (the softmax pushes down every wrong token).
        """
        table = model_parts(self.model).token_embedding.weight  # [vocab, d_model]
        if not 0 <= int(token_id) < table.shape[0]:
            raise InputError(f"token id {token_id} is outside the vocabulary (0 … {table.shape[0] - 1}).")
        if table.grad is None:
            return np.zeros(table.shape[1], dtype=np.float32)
        return table.grad[int(token_id)].detach().float().cpu().numpy().copy()  # not a view of .grad

    def adam_state(self, name: str, row: int | None = None) -> AdamState | None:
        """AdamW's m, v (raw and bias-corrected) and last update for parameter `name` (one `row` of it).

        Read straight from `torch.optim.AdamW`'s state; None while the parameter is frozen or has
        not been stepped yet. Tied aliases such as "lm_head.weight" resolve to the shared matrix.
        """
        try:
            param = parameter_by_name(self.model, name)
        except KeyError:
            raise InputError(f"This model has no parameter called {name!r}.") from None
        state = self.optimizer.state.get(param)
        if not state:
            return None
        group = next(g for g in self.optimizer.param_groups if any(p is param for p in g["params"]))
        beta1, beta2 = group["betas"]
        t = int(state["step"])
        m, v = state["exp_avg"].detach(), state["exp_avg_sq"].detach()
        if row is not None:
            if param.dim() < 2 or not 0 <= row < param.shape[0]:
                raise InputError(f"{name} has no row {row}.")
            m, v = m[row], v[row]
        weights = param.detach()
        if row is not None:
            weights = weights[row]
        lr, eps, decay = float(group["lr"]), float(group["eps"]), float(group["weight_decay"])
        m_hat = m.double() / (1 - beta1**t)
        v_hat_sqrt = (v.double() / (1 - beta2**t)).sqrt()
        step_size = lr * m_hat / (v_hat_sqrt + eps)
        # AdamW shrank the old weights w before subtracting step_size: w_now = w·(1 − lr·λ) − step_size.
        w_before = (weights.double() + step_size) / (1 - lr * decay)
        update = -step_size - lr * decay * w_before
        return AdamState(
            name=name,
            row=row,
            step=t,
            lr=lr,
            beta1=float(beta1),
            beta2=float(beta2),
            eps=eps,
            weight_decay=decay,
            # Copies: AdamW updates its state in place, and a caller keeps these across steps.
            exp_avg=m.float().cpu().numpy().copy(),
            exp_avg_sq=v.float().cpu().numpy().copy(),
            m_hat=m_hat.float().cpu().numpy(),
            v_hat_sqrt=v_hat_sqrt.float().cpu().numpy(),
            step_size=step_size.float().cpu().numpy(),
            update=update.float().cpu().numpy(),
        )

    # ----------------------------------------------------------------- saving

    def settings(self) -> dict:
        """What settings.json records: base model, steps, losses, the TrainConfig and the data summary."""
        last = self.history[-1] if self.history else None
        return {
            "base_model": self.base_model,
            "base": asdict(self.base_info),
            "diverged": self.status == "diverged",
            "start_loss": self.start_loss,
            "steps": self.step,
            "final_loss": last.loss if last else None,
            "final_eval_loss": self.last_eval_loss,
            "family": model_parts(self.model).family,
            "trainable_parameters": self.n_trainable,
            "parameters": self.n_params,
            "config": asdict(self.config),
            "data": asdict(self.data.summary),
        }

    def save_checkpoint(
        self, name: str | None = None, *, allow_diverged: bool = False
    ) -> CheckpointInfo | None:
        """Save the model as it is now to checkpoints/<name>/ (atomically); None on non-main processes.

        A model that diverged is saved only with `allow_diverged` (the page's "save anyway", the
        command line's --save-diverged). Otherwise the last update is checked first (see
        `TrainConfig.diverge_nats`), and TrainingDivergedError stops a ruined model from being saved.
        """
        name = name or self.checkpoint_name
        if not name:
            raise InputError("Give the checkpoint a name to save it.")
        if not allow_diverged:
            if self.status == "diverged":
                raise InputError(
                    f"This run diverged at step {self.diverged_at}: its model is not saved unless you "
                    "ask for it (save anyway)."
                )
            if self.history and self.last_batch is not None:
                diverged = self._divergence(probe_loss=self._loss_now())
                if diverged is not None:
                    self.status, self.diverged_at = "diverged", diverged.step
                    raise diverged
        model = self.model
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()
            model = self.accelerator.unwrap_model(self._forward_model)
            if not self.accelerator.is_main_process:
                return None
        info = save_checkpoint(
            model,
            self.tokenizer,
            name,
            self.settings(),
            [s.to_dict() for s in self.history],
            root=self.checkpoint_root,
        )
        self.last_checkpoint = info
        return info


# --------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog="python -m core.training.finetune",
        description="Fine-tune a causal LM on text files and save a checkpoint "
        "(runs unchanged under `accelerate launch`).",
    )
    p.add_argument(
        "--model", required=True, help="model spec: a local model directory, a Hub id, bundled-smollm2"
    )
    p.add_argument("--text-file", action="append", required=True, help="a UTF-8 text file (repeat for more)")
    p.add_argument("--out", required=True, help="checkpoint name, saved under <data dir>/checkpoints/NAME")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--seq-len", type=int, default=d.seq_len)
    p.add_argument("--train-part", choices=TRAIN_PARTS, default=d.train_part)
    p.add_argument("--n-last-blocks", type=int, default=d.n_last_blocks)
    p.add_argument("--eval-fraction", type=float, default=d.eval_fraction)
    p.add_argument("--eval-every", type=int, default=d.eval_every)
    p.add_argument("--eval-batches", type=int, default=d.eval_batches)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--bf16", action="store_true", help="autocast to bfloat16")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--grad-clip", type=float, default=d.grad_clip)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=d.lr_schedule)
    p.add_argument("--dropout", action="store_true", help="keep the model's dropout on")
    p.add_argument("--no-grad-norms", action="store_true", help="skip per-layer gradient norms")
    p.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is present")
    p.add_argument("--diverge-nats", type=float, default=d.diverge_nats)
    p.add_argument("--diverge-window", type=int, default=d.diverge_window)
    p.add_argument(
        "--save-diverged",
        action="store_true",
        help="save the model even when training diverged (it replaces a checkpoint of the same name)",
    )
    return p


def _config_from_args(args: argparse.Namespace) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    return TrainConfig(**values, track_grad_norms=not args.no_grad_norms)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m core.training.finetune` / `accelerate launch -m core.training.finetune`."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        config = _config_from_args(args)
    except ValueError as e:
        parser.error(str(e))

    try:
        check_name(args.out)
        texts = []
        for name in args.text_file:
            try:
                texts.append(Path(name).read_text(encoding="utf-8", errors="replace"))
            except OSError as e:
                raise InputError(f"Cannot read {name}: {e.strerror or e}") from e
    except VectorLabError as e:
        log.error("error: %s", e)
        return 1

    from accelerate import Accelerator

    from core.model.loading import load_model

    accelerator = Accelerator(cpu=args.cpu)
    say = log.info if accelerator.is_main_process else log.debug
    try:
        loaded = load_model(args.model)
        data = prepare_data(texts, loaded.tokenizer, config)
        s = data.summary
        say(
            "%s: %d tokens -> %d training and %d held-out sequences of %d tokens",
            loaded.info.name,
            s.n_tokens,
            s.n_train_sequences,
            s.n_eval_sequences,
            s.seq_len,
        )
        info = loaded.info
        run = FineTuneRun(
            loaded.model,
            loaded.tokenizer,
            data,
            config,
            base_model=info.name,
            base_info=BaseModelInfo(info.name, info.spec, info.source, info.identity),
            checkpoint_name=args.out,
            accelerator=accelerator,
        )
        say(
            "training %d of %d parameters on %s (%d process%s)",
            run.n_trainable,
            run.n_params,
            accelerator.device,
            accelerator.num_processes,
            "" if accelerator.num_processes == 1 else "es",
        )

        def report(step: TrainStep) -> None:
            held = f"  eval {step.eval_loss:.4f}" if step.eval_loss is not None else ""
            say(
                "step %d/%d  loss %.4f%s  lr %.2g  %.0f tok/s  eta %.1fs",
                step.step,
                config.steps,
                step.loss,
                held,
                step.lr,
                step.tokens_per_s,
                step.eta_s,
            )

        result = run.run(on_step=report)
    except TrainingDivergedError as e:
        log.error("error: %s", e)
        if not args.save_diverged:
            log.error("Pass --save-diverged to save it anyway.")
            return 1
        try:
            saved = run.save_checkpoint(allow_diverged=True)
        except VectorLabError as save_error:
            log.error("error: %s", save_error)
            return 1
        if saved is not None:
            say("saved the diverged model anyway: %s (step %d)", saved.path, saved.steps)
        return 1
    except VectorLabError as e:
        log.error("error: %s", e)
        return 1
    if result.checkpoint is not None:
        say("saved %s (step %d, loss %.4f)", result.checkpoint.path, result.step, result.final_loss)
    return 0


if __name__ == "__main__":
    sys.exit(main())
