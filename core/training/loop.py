"""The fine-tuning loop: `FineTuneRun` steps a causal LM with plain AdamW on a `TrainData`, evaluates the
held-out tail, stops and resumes where it was, stops a diverging run, and saves checkpoints."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.errors import InputError, VectorLabError
from core.model.families import model_parts
from core.training.checkpoints import (
    CheckpointInfo,
    check_name,
    checkpoints_dir,
    is_checkpoint,
    save_checkpoint,
)
from core.training.config import TrainConfig
from core.training.data import TrainData, train_batches
from core.training.divergence import TrainingDivergedError, risen_loss, start_rows
from core.training.evaluation import autocast, batch_loss, mean_loss
from core.training.optimizer import AdamState, adam_state, grad_norm, group_grad_norms, token_embedding_grad
from core.training.parts import apply_freezing, layer_groups, parameter_name
from core.training.results import BaseModelInfo, OnStep, RunResult, ShouldStop, TrainStep
from core.training.rng import RunRng

RUN_STATES = ("ready", "running", "stopped", "finished", "diverged")  # what `FineTuneRun.status` can be


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
        loader = train_batches(data, config)
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

        self._rng = RunRng(config.seed, self.device)  # dropout's draws, apart from the caller's RNG

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
            with self._rng.active():
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

        with autocast(self.device, cfg.bf16):
            loss = self._compute_loss(batch)
        loss_value = float(loss.detach().float())
        if not math.isfinite(loss_value):
            self._diverged(step, f"the training loss became {loss_value}", lr)
        if self.accelerator is not None:
            self.accelerator.backward(loss)
        else:
            loss.backward()

        total = grad_norm(self._trainable)  # [] before clipping
        norm = float(total)
        if not math.isfinite(norm):
            self._diverged(step, f"the gradient norm became {norm}", lr)
        grad_norms = group_grad_norms(self._group_params) if cfg.track_grad_norms else {}
        clipped = cfg.grad_clip > 0 and norm > cfg.grad_clip
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
            grad_norm=norm,
            grad_norms=grad_norms,
            clipped=clipped,
            tokens_seen=self._tokens_seen,
            elapsed_s=self._wall_s,
            eta_s=self.eta_s(),
        )

    def _compute_loss(self, batch: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy of `batch` [B, T] (the model shifts the labels itself)."""
        return self._forward_model(input_ids=batch, labels=batch, use_cache=False).loss

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
        recent = [h.loss for h in self.history[-cfg.diverge_window :]]
        risen = risen_loss(recent, self.start_loss, cfg, probe_loss)
        if risen is None:
            return None
        mean, points = risen
        if probe_loss is None:
            what = f"the mean training loss of the last {points} steps is {mean:.2f} nats"
        else:
            what = (
                f"after its update the model's loss on that step's batch is {probe_loss:.2f} nats, "
                f"which brings the mean of the last {points} losses to {mean:.2f} nats"
            )
        return TrainingDivergedError(
            f"Training diverged at step {self.step}: {what}, more than {cfg.diverge_nats:g} nats above "
            f"the starting loss {self.start_loss:.2f}. The run was stopped and this model was not saved."
            f"{self._kept()} Lower the learning rate (this step used {self.history[-1].lr:g}) and "
            "start a new run.",
            step=self.step,
            checkpoint=self.last_checkpoint,
            mean_loss=mean,
            start_loss=self.start_loss,
            probe_loss=probe_loss,
        )

    def _loss_now(self) -> float:
        """The model's loss, as it is now, on the last step's batch (eval mode: no dropout, no RNG)."""
        return batch_loss(self.model, self.last_batch, self.device, self.config.bf16)

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean next-token loss on the held-out sequences only (None when there are none)."""
        rows = self.data.eval  # [N_eval, T]
        if rows.shape[0] == 0:
            return None
        chunks = rows.split(self.config.batch_size)
        if self.config.eval_batches:
            chunks = chunks[: self.config.eval_batches]
        self.last_eval_loss = mean_loss(self.model, chunks, self.device, self.config.bf16)
        return self.last_eval_loss

    @property
    def start_rows(self) -> torch.Tensor:
        """[n, seq_len] the training sequences the starting loss is measured on: diverge_window
        batches' worth (or all of them, if fewer), spread evenly from the first to the last."""
        return start_rows(self.data.train, self.config)

    def _measure_start_loss(self) -> float:
        chunks = self.start_rows.split(self.config.batch_size)
        return mean_loss(self.model, chunks, self.device, self.config.bf16)

    def eta_s(self) -> float:
        """Seconds still needed for the remaining steps, from the mean wall time per step so far."""
        if self.step == 0:
            return math.nan
        return (self._wall_s - self._setup_s) / self.step * (self.config.steps - self.step)

    # ----------------------------------------------------------------- looking inside

    @property
    def layer_names(self) -> list[str]:
        """Layer groups in order: "embeddings", "block 0" … "block L-1", "final norm/head"."""
        return list(self.groups)

    @property
    def token_embedding_name(self) -> str:
        """The parameter name of the token embedding table, e.g. for `adam_state(name, row=token_id)`."""
        return parameter_name(self.model, model_parts(self.model).token_embedding.weight)

    def token_embedding_grad(self, token_id: int) -> np.ndarray:
        """[d_model] gradient of one token's embedding row in the last step (see `optimizer`)."""
        return token_embedding_grad(self.model, token_id)

    def adam_state(self, name: str, row: int | None = None) -> AdamState | None:
        """AdamW's state and last update for parameter `name` (one `row` of it); None while it has none."""
        return adam_state(self.optimizer, self.model, name, row)

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
            "family": model_parts(self.model).family.name,
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
