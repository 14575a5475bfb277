"""One fine-tuning job at a time, run in a background thread that outlives page reruns and switches.

The app keeps a single `TrainingJob` for the whole process, so a second browser session sees the
running job instead of starting another. Plain Python: the page only reads `snapshot()`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from core.errors import InputError, VectorLabError
from core.finetune import FineTuneRun, RunResult, TrainStep

log = logging.getLogger(__name__)

IDLE, RUNNING, STOPPING, STOPPED, FINISHED, FAILED = (
    "idle",
    "running",
    "stopping",
    "stopped",
    "finished",
    "failed",
)


@dataclass(frozen=True)
class JobSnapshot:
    """What the page shows about the job at one moment."""

    status: str  # idle, running, stopping, stopped (resumable), finished, failed
    step: int  # optimizer steps done
    steps: int  # steps planned
    last: TrainStep | None  # the latest step's numbers
    history: tuple[TrainStep, ...]  # every step so far
    error: str | None  # why it failed, for the user
    result: RunResult | None  # how the last run() call ended
    started_at: float | None  # time.time() of the first start

    @property
    def active(self) -> bool:
        return self.status in (RUNNING, STOPPING)

    @property
    def fraction(self) -> float:
        return self.step / self.steps if self.steps else 0.0


class TrainingJob:
    """Holds at most one `FineTuneRun` and the thread stepping it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.run: FineTuneRun | None = None
        self.label = ""  # what the page says the job is (model and text source)
        self._status = IDLE
        self._error: str | None = None
        self._result: RunResult | None = None
        self._started_at: float | None = None

    # -------------------------------------------------------------- control

    def start(self, run: FineTuneRun, label: str = "") -> None:
        """Begin a new run in the background. Refused while another one is active."""
        with self._lock:
            if self._status in (RUNNING, STOPPING):
                raise InputError("A training run is already going; stop it before starting another.")
            self.run, self.label = run, label
            self._error, self._result = None, None
            self._started_at = time.time()
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
            self.run, self.label = None, ""
            self._status, self._error, self._result, self._started_at = IDLE, None, None, None

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
        self._thread = threading.Thread(target=self._work, name="vectorlab-training", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        run = self.run
        try:
            result = run.run(should_stop=self._stop.is_set)
            status = FINISHED if result.status == "finished" else STOPPED
            error = None
        except VectorLabError as e:  # diverged, bad data discovered late, disk full…
            result, status, error = None, FAILED, str(e)
        except Exception as e:  # noqa: BLE001 - a worker thread must report, not die silently
            log.exception("training failed")
            result, status, error = None, FAILED, f"Training stopped on an unexpected error: {e}"
        with self._lock:
            self._result, self._status, self._error = result, status, error

    # -------------------------------------------------------------- reading

    def snapshot(self) -> JobSnapshot:
        with self._lock:
            run = self.run
            history = tuple(run.history) if run is not None else ()
            return JobSnapshot(
                status=self._status,
                step=run.step if run is not None else 0,
                steps=run.config.steps if run is not None else 0,
                last=history[-1] if history else None,
                history=history,
                error=self._error,
                result=self._result,
                started_at=self._started_at,
            )
