"""Loaded models kept for reuse across sessions: one load per spec at a time, least recently used
dropped first, a model read again when its files changed on disk."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable

from core.model.loading import LoadedModel, Progress, current_identity, load_model

log = logging.getLogger(__name__)


class ModelStore:
    """Loaded models for reuse, by spec, least recently used first; at most `capacity` kept in memory.

    A cached model is handed out only while its files are still the ones it was read from: every
    `get` compares `current_identity` (a few stat calls) with the identity it was loaded with, and
    reads the model again when they differ, e.g. after a checkpoint was saved again under its name.

    Loading takes seconds to minutes, so it holds only its own spec's lock: two sessions asking for
    the same spec share one load, while a session asking for another spec is served (or starts its
    own load) at once. The store-wide lock guards the dictionaries only and is never held while
    loading or checking files.
    """

    def __init__(self, capacity: int = 2, loader: Callable[..., LoadedModel] | None = None) -> None:
        self.capacity = capacity  # models kept in memory; loading one more drops the least recently used
        self.loader = loader or load_model  # (spec, progress) -> LoadedModel
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()  # spec -> model, oldest use first
        self._spec_locks: dict[str, threading.Lock] = {}  # spec -> held while that spec is checked or loaded
        self._lock = threading.Lock()  # guards the two dictionaries above

    def _lock_for(self, spec: str) -> threading.Lock:
        with self._lock:
            return self._spec_locks.setdefault(spec, threading.Lock())

    def cached_specs(self) -> list[str]:
        """Specs held in memory now, least recently used first."""
        with self._lock:
            return list(self._models)

    def get(self, spec: str, progress: Progress | None = None) -> LoadedModel:
        """The model for `spec`, loaded now or earlier; raises `ModelLoadError` with a message."""
        with self._lock_for(spec):
            with self._lock:
                cached = self._models.get(spec)
                if cached is not None:
                    self._models.move_to_end(spec)  # the most recently used
            if cached is not None:
                if current_identity(cached.info) == cached.info.identity:
                    return cached
                log.info("%s changed on disk since it was loaded; loading it again", spec)
                with self._lock:
                    self._models.pop(spec, None)
                del cached  # let go of the old weights before reading the new ones
            loaded = self.loader(spec, progress)
            with self._lock:
                self._models[spec] = loaded
                while len(self._models) > self.capacity:
                    self._models.popitem(last=False)
            return loaded
