"""A run's own random state: dropout draws from torch's global RNG, which the UI shares, so a run swaps
its state in while it steps and hands the caller's back afterwards (same seed = same run)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


class RunRng:
    """torch's CPU (and, on a GPU, CUDA) RNG state of one run, seeded once and carried across calls."""

    def __init__(self, seed: int, device: torch.device) -> None:
        self.devices = [device.index or 0] if device.type == "cuda" else []  # CUDA devices to fork
        with torch.random.fork_rng(devices=self.devices):
            torch.manual_seed(seed)
            self._state = self._current()

    def _current(self) -> tuple:
        cuda = [torch.cuda.get_rng_state(d) for d in self.devices]
        return torch.get_rng_state(), cuda

    @contextmanager
    def active(self) -> Iterator[None]:
        """Swap this run's RNG state in and, on the way out, keep where it got to and restore the caller's."""
        with torch.random.fork_rng(devices=self.devices):
            cpu, cuda = self._state
            torch.set_rng_state(cpu)
            for d, state in zip(self.devices, cuda, strict=True):
                torch.cuda.set_rng_state(state, d)
            try:
                yield
            finally:
                self._state = self._current()
