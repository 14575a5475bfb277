"""What a fine-tuning run reports: a `TrainStep` after every optimizer step, a `RunResult` when a call
to `run()` ends, and `BaseModelInfo`, the model it started from."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

from core.training.checkpoints import CheckpointInfo


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
class RunResult:
    """How a call to `FineTuneRun.run` ended."""

    status: str  # "finished" (all steps done) or "stopped" (should_stop asked; run() again resumes)
    step: int  # optimizer steps taken so far in the whole run
    steps: int  # steps planned (TrainConfig.steps)
    final_loss: float | None  # training loss of the last step taken
    final_eval_loss: float | None  # most recent held-out loss
    elapsed_s: float  # wall time of the run so far
    checkpoint: CheckpointInfo | None  # the last checkpoint this run wrote


OnStep = Callable[[TrainStep], None]
ShouldStop = Callable[[], bool]
