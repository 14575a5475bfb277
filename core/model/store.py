"""Loaded models kept for reuse across sessions: each spec loads in a background thread of its own,
once at a time, while pages draw; least recently used dropped first; a model read again when its
files changed on disk."""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from core.errors import ModelLoadError
from core.model.loading import LoadedModel, Progress, current_identity, load_model

log = logging.getLogger(__name__)

POLL_S = 0.1  # how often a waiting `get` passes the load's progress on
# A load thread runs Python for long stretches; the interpreter hands the GIL to a waiting thread (a
# page being drawn for another session) only every switch interval, 5 ms by default, and a page's run
# waits for it again after every socket write. At 0.5 ms another session's rerun during loads took
# 2.3x its idle time instead of 6.4x (bench/bench_sessions.py, a busy 2-core machine).
LOAD_SWITCH_INTERVAL_S = 0.0005


@dataclass(frozen=True)
class LoadStatus:
    """One spec as the store holds it now: loaded, failed, or loading (with its latest progress)."""

    spec: str
    model: LoadedModel | None = None  # set once loaded
    error: Exception | None = None  # why the last load failed; kept until the spec is asked for again
    fraction: float = 0.0  # the running load's progress, 0..1 (1 when loaded)
    message: str = ""  # what the running load is doing now
    seconds: float = 0.0  # since the running load started

    @property
    def loading(self) -> bool:
        return self.model is None and self.error is None


@dataclass
class _Load:
    """One load running (or failed) in its own thread; written by that thread, read by any session."""

    spec: str
    started: float = field(default_factory=time.monotonic)
    fraction: float = 0.0
    message: str = ""
    model: LoadedModel | None = None
    error: Exception | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def report(self, fraction: float, message: str) -> None:
        self.fraction, self.message = min(max(float(fraction), 0.0), 1.0), message

    def status(self) -> LoadStatus:
        seconds = time.monotonic() - self.started
        return LoadStatus(self.spec, self.model, self.error, self.fraction, self.message, seconds)


class ModelStore:
    """Loaded models for reuse, by spec, least recently used first; at most `capacity` kept in memory.

    Loading takes seconds to minutes, so it runs in a background thread, one per spec: `start` begins
    it and returns at once (a page that needs no model draws meanwhile and shows the progress from
    `start`'s `LoadStatus`), `get` waits for it, passing its progress on. Two sessions asking for the
    same spec share one load; a session asking for another spec is served (or starts its own load) at
    once. A failed load keeps its error for `start` to report; `get` tries again.

    A cached model is handed out only while its files are still the ones it was read from: each
    `start` and `get` compares `current_identity` (a few stat calls) with the identity it was loaded
    with, and reads the model again when they differ, e.g. after a checkpoint was saved again under
    its name. The store's lock guards its dictionaries only and is never held while loading or
    checking files.
    """

    def __init__(self, capacity: int = 2, loader: Callable[..., LoadedModel] | None = None) -> None:
        self.capacity = capacity  # models kept in memory; loading one more drops the least recently used
        self.loader = loader or load_model  # (spec, progress) -> LoadedModel
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()  # spec -> model, oldest use first
        self._loads: dict[str, _Load] = {}  # spec -> its load under way, or its last failed one
        self._lock = threading.Lock()  # guards the two dictionaries above

    def cached_specs(self) -> list[str]:
        """Specs held in memory now, least recently used first."""
        with self._lock:
            return list(self._models)

    def start(self, spec: str) -> LoadStatus:
        """Begin loading `spec` in the background unless it is loaded, loading or failed; never waits."""
        found = self._begin(spec, retry_failed=False)
        if isinstance(found, _Load):
            return found.status()
        return LoadStatus(spec, model=found, fraction=1.0)

    def get(self, spec: str, progress: Progress | None = None) -> LoadedModel:
        """The model for `spec`, loaded now or earlier; raises `ModelLoadError` with a message.

        While it loads, `progress(fraction, message)` is called every POLL_S seconds in the caller's
        thread (so it may draw on a page)."""
        found = self._begin(spec, retry_failed=True)
        if not isinstance(found, _Load):
            return found
        while not found.done.wait(POLL_S):
            if progress is not None:
                progress(found.fraction, found.message)
        if found.error is not None:
            raise found.error
        return found.model

    def _begin(self, spec: str, retry_failed: bool) -> LoadedModel | _Load:
        """The cached model while its files are unchanged, else the load of `spec` (started if none)."""
        with self._lock:
            cached = self._models.get(spec)
            if cached is not None:
                self._models.move_to_end(spec)  # the most recently used
        if cached is not None:
            if current_identity(cached.info) == cached.info.identity:
                return cached
            log.info("%s changed on disk since it was loaded; loading it again", spec)
        with self._lock:
            if cached is not None and self._models.get(spec) is cached:
                del self._models[spec]  # let go of the old weights before reading the new ones
            newer = self._models.get(spec)  # another session's load finished meanwhile
            if newer is not None and newer is not cached:
                return newer
            load = self._loads.get(spec)
            if load is not None and (not load.done.is_set() or not retry_failed):
                return load
            load = self._loads[spec] = _Load(spec, message=f"Loading {spec}…")
        del cached
        _share_the_interpreter()
        threading.Thread(target=self._run, args=(load,), name=f"load {spec}", daemon=True).start()
        return load

    def _run(self, load: _Load) -> None:
        """In the load's own thread: load, then publish the model (or keep the error) and wake waiters."""
        modules_before = len(sys.modules)
        try:
            with _collector_paused():
                model = self.loader(load.spec, load.report)
                _freeze_new_imports(modules_before)  # before a collection scans what the load imported
        except Exception as e:  # noqa: BLE001 - handed to every waiter and to the sidebar
            load.error = e
            log.info("loading %s failed: %s", load.spec, e)
        else:
            with self._lock:
                self._models[load.spec] = model
                while len(self._models) > self.capacity:
                    self._models.popitem(last=False)
                if self._loads.get(load.spec) is load:
                    del self._loads[load.spec]
            load.model, load.fraction, load.message = model, 1.0, "Loaded."
        finally:
            if load.model is None and load.error is None:  # the thread was stopped mid-load
                load.error = ModelLoadError(f"Loading '{load.spec}' stopped half-way; pick it again.")
            load.done.set()


def _share_the_interpreter() -> None:
    """Shorten the interpreter's switch interval to LOAD_SWITCH_INTERVAL_S (never lengthen it): set
    for the whole process, before a load thread starts."""
    if sys.getswitchinterval() > LOAD_SWITCH_INTERVAL_S:
        sys.setswitchinterval(LOAD_SWITCH_INTERVAL_S)


def _freeze_new_imports(modules_before: int) -> None:
    """After a load that imported modules (the first load of each model family and tokenizer kind):
    move every object alive now into the collector's permanent generation (`gc.freeze`).

    Imported code (torch, transformers, a family's modeling module) is several hundred thousand
    objects that live as long as the process, and every full collection scans them all: ~0.3 s with
    the interpreter held, in whichever thread triggers it (the server's event loop included), during
    which no session's page moves. Frozen, they are never scanned again. Frozen objects are still
    freed by reference counting, and a model holds no reference cycle (tests/test_state.py drops one
    from the store with the collector off and sees its weights go); what freezing keeps for good is
    cyclic garbage of that moment: a few loads' worth of small objects per process.
    """
    if len(sys.modules) > modules_before:
        gc.freeze()


COLLECTOR_PAUSE_LIMIT_S = 60.0  # a load still running then (a slow download) runs with the collector on
_pause_lock = threading.Lock()
_loads_running = 0  # loads inside _collector_paused now
_collector_was_on = True  # as the first of them found it
_pause_limit: threading.Timer | None = None


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic collector off while any load runs, back as it was when the last one ends.

    A first load imports torch's and transformers' code: hundreds of thousands of objects, and every
    full collection on the way scans all of them again (1.0 s of a cold server's first station, logged
    with `gc.callbacks`; 0.86 s of a plain script doing the same work), with the interpreter held.
    Nothing a load makes needs the collector: its objects are freed by reference counting, or frozen
    when the load is over (`_freeze_new_imports`); other threads' cyclic garbage waits until then,
    or COLLECTOR_PAUSE_LIMIT_S at most.
    """
    global _loads_running, _collector_was_on, _pause_limit
    with _pause_lock:
        if _loads_running == 0:
            _collector_was_on = gc.isenabled()
            gc.disable()
            if _collector_was_on:
                _pause_limit = threading.Timer(COLLECTOR_PAUSE_LIMIT_S, gc.enable)
                _pause_limit.daemon = True
                _pause_limit.start()
        _loads_running += 1
    try:
        yield
    finally:
        with _pause_lock:
            _loads_running -= 1
            if _loads_running == 0 and _collector_was_on:
                if _pause_limit is not None:
                    _pause_limit.cancel()
                    _pause_limit = None
                gc.enable()
