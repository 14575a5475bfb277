"""One fine-tuning job at a time, run in a background thread that outlives page reruns and switches,
(what a run will cost before it starts is `core.training.estimate`).

The app keeps a single `TrainingJob` for the whole process, so a second browser session sees the
running job instead of starting another. The training thread publishes a small immutable
`JobSnapshot` after every step (curves averaged down to at most `MAX_POINTS` points); the page
only reads `snapshot()`, so watching a run costs the same whether it has taken ten steps or ten
thousand.
"""

from __future__ import annotations

import gc
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from core.errors import InputError, VectorLabError
from core.training.loop import FineTuneRun
from core.training.results import RunResult, TrainStep

log = logging.getLogger(__name__)

IDLE, RUNNING, STOPPING, STOPPED, FINISHED, FAILED = (
    "idle",
    "running",
    "stopping",
    "stopped",
    "finished",
    "failed",
)

MAX_POINTS = 500  # points per live curve; beyond it, neighbouring steps are averaged in pairs
REFREEZE_S = 60.0  # while a run goes, garbage among frozen objects is collected this often


# --------------------------------------------------------------------------- live curves


@dataclass(frozen=True)
class Curve:
    """Per-step series with at most `MAX_POINTS` points: each point is the mean over a run of
    consecutive steps (1 step per point until the run outgrows the cap, then 2, 4, …)."""

    names: tuple[str, ...]  # [k] what each series is
    steps: np.ndarray  # [n] int64: the last step each point covers (read-only)
    values: np.ndarray  # [n, k] float64: each series' mean over the steps of a point (read-only)
    counts: np.ndarray  # [n] int64: how many steps each point averages (read-only)
    steps_per_point: int  # steps averaged into a full point; the newest point may hold fewer

    def __len__(self) -> int:
        return len(self.steps)

    def series(self, name: str) -> np.ndarray:
        """[n] one series by name."""
        return self.values[:, self.names.index(name)]

    def coarsen(self, max_points: int) -> Curve:
        """The same curve with at most `max_points` points, neighbours averaged (weighted by their
        step counts), for views that need fewer points than the live curve keeps."""
        n = len(self)
        group = max(1, math.ceil(n / max(1, max_points)))
        if group == 1:
            return self
        starts = np.arange(0, n, group)  # [m] first point of each group
        ends = np.minimum(starts + group, n)
        weighted = np.add.reduceat(self.values * self.counts[:, None], starts, axis=0)
        counts = np.add.reduceat(self.counts, starts)
        return Curve(
            self.names,
            _read_only(self.steps[ends - 1]),
            _read_only(weighted / counts[:, None]),
            _read_only(counts),
            self.steps_per_point * group,
        )

    @property
    def nbytes(self) -> int:
        return self.steps.nbytes + self.values.nbytes + self.counts.nbytes


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


class _CurveBuilder:
    """Accumulates a `Curve` in fixed memory: `max_points` sums, counts and last steps."""

    def __init__(self, names: Sequence[str], max_points: int) -> None:
        if max_points < 2 or max_points % 2:
            raise ValueError(f"max_points={max_points} must be an even number of at least 2")
        self.names = tuple(names)
        self.max_points = max_points
        self._sums = np.zeros((max_points, len(self.names)))  # [max_points, k]
        self._counts = np.zeros(max_points, dtype=np.int64)  # steps summed into each point
        self._last = np.zeros(max_points, dtype=np.int64)  # the last step of each point
        self._n = 0  # points in use
        self._per_point = 1

    def add(self, step: int, values: Sequence[float]) -> None:
        if self._n and self._counts[self._n - 1] < self._per_point:
            i = self._n - 1  # the newest point still has room
        else:
            if self._n == self.max_points:
                self._halve()
            i = self._n
            self._n += 1
        self._sums[i] += values
        self._counts[i] += 1
        self._last[i] = step

    def _halve(self) -> None:
        """Merge neighbouring points in pairs: every point now covers twice as many steps."""
        half, k = self.max_points // 2, len(self.names)
        self._sums[:half] = self._sums.reshape(half, 2, k).sum(axis=1)
        self._counts[:half] = self._counts.reshape(half, 2).sum(axis=1)
        self._last[:half] = self._last[1::2]
        self._sums[half:], self._counts[half:], self._last[half:] = 0.0, 0, 0
        self._n, self._per_point = half, self._per_point * 2

    def curve(self) -> Curve:
        n = self._n
        return Curve(
            self.names,
            _read_only(self._last[:n].copy()),
            _read_only(self._sums[:n] / self._counts[:n, None]),
            _read_only(self._counts[:n].copy()),
            self._per_point,
        )


LOSS_SERIES = ("loss", "lr")
EVAL_SERIES = ("held-out loss",)


class _LiveCurves:
    """The curves one run shows live, fed one `TrainStep` at a time by the training thread."""

    def __init__(self, layer_names: Sequence[str], max_points: int) -> None:
        self.loss = _CurveBuilder(LOSS_SERIES, max_points)
        self.eval = _CurveBuilder(EVAL_SERIES, max_points)
        self.grad_norms = _CurveBuilder(layer_names, max_points)
        self.first_loss: float | None = None
        self.eval_loss: float | None = None

    def add(self, record: TrainStep) -> None:
        if self.first_loss is None:
            self.first_loss = record.loss
        self.loss.add(record.step, (record.loss, record.lr))
        if record.eval_loss is not None:
            self.eval_loss = record.eval_loss
            self.eval.add(record.step, (record.eval_loss,))
        if record.grad_norms:
            self.grad_norms.add(record.step, [record.grad_norms.get(g, 0.0) for g in self.grad_norms.names])


@dataclass(frozen=True)
class _Progress:
    """The part of a snapshot the training thread publishes after each step."""

    step: int
    steps: int
    last: TrainStep | None
    first_loss: float | None
    eval_loss: float | None
    loss: Curve
    eval: Curve
    grad_norms: Curve


def _empty_curve(names: Sequence[str]) -> Curve:
    return _CurveBuilder(names, 2).curve()


_NO_PROGRESS = _Progress(
    0, 0, None, None, None, _empty_curve(LOSS_SERIES), _empty_curve(EVAL_SERIES), _empty_curve(())
)


@dataclass(frozen=True)
class JobSnapshot:
    """What the page shows about the job at one moment: small, immutable, bounded in size."""

    status: str  # idle, running, stopping, stopped (resumable), finished, failed
    run_id: int  # which run: 0 before the first start, then one more for every start
    label: str  # what the job is (model and text source)
    has_run: bool  # a run is held (active, stopped, finished or failed), so it can be discarded
    step: int  # optimizer steps done
    steps: int  # steps planned
    last: TrainStep | None  # the latest step's numbers (per-layer gradient norms included)
    first_loss: float | None  # the first step's training loss
    eval_loss: float | None  # the latest held-out loss
    loss: Curve  # series "loss" (training, nats) and "lr", at most MAX_POINTS points
    eval: Curve  # series "held-out loss", one point per evaluation (averaged beyond MAX_POINTS)
    grad_norms: Curve  # one series per layer group, gradient norm before clipping
    error: str | None  # why it failed, for the user
    result: RunResult | None  # how the last run() call ended
    started_at: float | None  # time.time() of the first start

    @property
    def active(self) -> bool:
        return self.status in (RUNNING, STOPPING)

    @property
    def fraction(self) -> float:
        return self.step / self.steps if self.steps else 0.0

    @property
    def nbytes(self) -> int:
        """Bytes held by the curves' arrays: bounded by MAX_POINTS, whatever the number of steps."""
        return self.loss.nbytes + self.eval.nbytes + self.grad_norms.nbytes


# --------------------------------------------------------------------------- the job


class TrainingJob:
    """Holds at most one `FineTuneRun` and the thread stepping it."""

    def __init__(self, max_points: int = MAX_POINTS, before_step: Callable[[], object] | None = None) -> None:
        self.max_points = max_points
        # Called in the training thread before the first step and after every step: the server sets
        # torch's threads for the next one there (fewer while other browser sessions are connected,
        # `ui.cores.share_cores`), so a run started beside another session gets every core back once
        # that session is gone, and leaves one when a session connects mid-run.
        self.before_step = before_step
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.run: FineTuneRun | None = None
        self.label = ""  # what the page says the job is (model and text source)
        self.base_key = ""  # names the model the run started from (weights included), for the page
        self._status = IDLE
        self._error: str | None = None
        self._result: RunResult | None = None
        self._started_at: float | None = None
        self._curves: _LiveCurves | None = None
        self._progress = _NO_PROGRESS
        self._run_id = 0
        self._frozen = False  # objects are frozen (gc.freeze) while a run goes: see _refreeze
        self._refreeze_at = math.inf  # time.monotonic() after which the next step refreezes

    # -------------------------------------------------------------- control

    def start(self, run: FineTuneRun, label: str = "", base_key: str = "") -> None:
        """Begin a new run in the background. Refused while another one is active."""
        with self._lock:
            if self._status in (RUNNING, STOPPING):
                raise InputError("A training run is already going; stop it before starting another.")
            self.run, self.label, self.base_key = run, label, base_key
            self._error, self._result = None, None
            self._started_at = time.time()
            self._run_id += 1
            self._curves = _LiveCurves(run.layer_names, self.max_points)
            for record in run.history:  # a run that has stepped before keeps its curve
                self._curves.add(record)
            self._progress = self._progress_of(run, run.history[-1] if run.history else None)
            self._launch()

    def resume(self) -> None:
        """Continue a stopped run from the step it reached, with the same optimizer state."""
        with self._lock:
            if self.run is None or self._status != STOPPED:
                raise InputError("There is no stopped run to resume.")
            self._launch()

    def stop(self) -> None:
        """Ask the run to stop before its next step (it finishes the step it is in)."""
        with self._lock:
            if self._status == RUNNING:
                self._status = STOPPING
                self._stop.set()

    def discard(self) -> None:
        """Forget a run that is not active (its checkpoints stay on disk)."""
        with self._lock:
            if self._status in (RUNNING, STOPPING):
                raise InputError("Stop the run before discarding it.")
            self.run, self.label, self.base_key = None, "", ""
            self._status, self._error, self._result, self._started_at = IDLE, None, None, None
            self._curves, self._progress = None, _NO_PROGRESS

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the background thread ends (tests, the CLI). True if it ended."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def _launch(self) -> None:  # with the lock held
        self._stop.clear()
        self._status = RUNNING
        self._refreeze()
        self._refreeze_at = -math.inf  # again after the first step: see _refreeze
        self._thread = threading.Thread(target=self._work, name="vectorlab-training", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        run = self.run
        if self.before_step is not None:
            self.before_step()
        try:
            result = run.run(on_step=lambda record: self._publish(run, record), should_stop=self._stop.is_set)
            status = FINISHED if result.status == "finished" else STOPPED
            error = None
        except VectorLabError as e:  # diverged, bad data discovered late, disk full…
            result, status, error = None, FAILED, str(e)
        except Exception as e:  # noqa: BLE001 - a worker thread must report, not die silently
            log.exception("training failed")
            result, status, error = None, FAILED, f"Training stopped on an unexpected error: {e}"
        finally:
            if self._frozen:  # hand the frozen objects back, and free what became garbage meanwhile
                self._frozen, self._refreeze_at = False, math.inf
                gc.unfreeze()
                gc.collect()
        with self._lock:
            self._result, self._status, self._error = result, status, error
            self._progress = self._progress_of(run, run.history[-1] if run.history else None)

    def _refreeze(self) -> None:
        """Collect garbage once, then move every object alive out of the collector's reach.

        Streamlit collects every generation of garbage after each script run, the live view's
        refresh included, and a full collection holds the GIL for a quarter of a second or more
        (half a million objects: torch, transformers, the models), stalling the training thread,
        which needs the GIL between every two torch ops. While a run goes, objects alive are frozen
        (`gc.freeze`) so those collections only look at newer ones. Frozen objects that become
        garbage (the previous run, kept by the page until it redraws after Start; closed browser
        sessions) wait for the next refreeze: after the first step, then every REFREEZE_S seconds,
        one full collection each time."""
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        self._frozen = True
        self._refreeze_at = time.monotonic() + REFREEZE_S

    def _publish(self, run: FineTuneRun, record: TrainStep) -> None:
        """After every step, in the training thread: add the step to the curves, publish a snapshot."""
        if time.monotonic() >= self._refreeze_at:
            self._refreeze()
        self._curves.add(record)
        progress = self._progress_of(run, record)
        with self._lock:
            self._progress = progress
        if self.before_step is not None:
            self.before_step()

    def _progress_of(self, run: FineTuneRun, last: TrainStep | None) -> _Progress:
        curves = self._curves
        return _Progress(
            step=last.step if last is not None else run.step,
            steps=run.config.steps,
            last=last,
            first_loss=curves.first_loss,
            eval_loss=curves.eval_loss,
            loss=curves.loss.curve(),
            eval=curves.eval.curve(),
            grad_norms=curves.grad_norms.curve(),
        )

    # -------------------------------------------------------------- reading

    def snapshot(self) -> JobSnapshot:
        """The job now, from what the training thread last published: no tensor is touched."""
        with self._lock:
            p = self._progress
            return JobSnapshot(
                status=self._status,
                run_id=self._run_id,
                label=self.label,
                has_run=self.run is not None,
                step=p.step,
                steps=p.steps,
                last=p.last,
                first_loss=p.first_loss,
                eval_loss=p.eval_loss,
                loss=p.loss,
                eval=p.eval,
                grad_norms=p.grad_norms,
                error=self._error,
                result=self._result,
                started_at=self._started_at,
            )
