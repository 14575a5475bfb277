"""Interventions: hooks at the family registry's named hook points, and the context that applies them.

An `Intervention` is a label plus hooks `(point, kind, fn)`: `point` a hook point name of
core.model.families ("blocks.3.heads", "blocks.0.in", "embed", ...), `kind` "forward" (the module's
output) or "pre" (its input), and `fn(activation) -> activation` a function of the tensor at that point
(first element of a tuple output; the block's `hidden_states` input for "blocks.{i}.in"). `fn` returns
the replacement tensor, or None to keep the activation as it is.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.model.families import model_parts

if TYPE_CHECKING:
    from torch import Tensor

    from core.model.loading import LoadedModel

FORWARD = "forward"  # fn sees the module's output (its first element when the output is a tuple)
PRE = "pre"  # fn sees the module's input (its first positional argument or `hidden_states`)
KINDS = (FORWARD, PRE)

HookFn = Callable[["Tensor"], "Tensor | None"]


@dataclass(frozen=True)
class Hook:
    """One change at one hook point."""

    point: str  # a hook point name, e.g. "blocks.2.heads" (see core.model.families HOOK_*)
    kind: str  # FORWARD or PRE
    fn: HookFn  # activation [B, T, ...] -> replacement of the same shape (or None: unchanged)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"hook kind must be one of {KINDS}, not {self.kind!r}")


@dataclass(frozen=True)
class Intervention:
    """A named change to the model: the hooks it applies while it is `applied`."""

    label: str  # shown in the UI, e.g. "zero-ablate L3H5"
    hooks: tuple[Hook, ...] = ()  # no hooks: the model as it is (the "do nothing" intervention)

    @staticmethod
    def of(label: str, *hooks: tuple[str, str, HookFn] | Hook) -> Intervention:
        """Build from `Hook`s or plain (point, kind, fn) tuples."""
        return Intervention(label, tuple(h if isinstance(h, Hook) else Hook(*h) for h in hooks))


def _replace_first(value: Any, new: Tensor) -> Any:
    return (new, *value[1:]) if isinstance(value, tuple) else new


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, tuple) else value


def _torch_hook(hook: Hook, owner: int):
    """Wrap `hook.fn` as a torch hook that acts only on calls from the thread that applied it.

    The model is shared by every session of the app: another thread running it at the same time
    must see the unchanged model.
    """
    fn = hook.fn

    if hook.kind == FORWARD:

        def forward_hook(_module, _args, output):
            if threading.get_ident() != owner:
                return None
            new = fn(_first(output))
            return None if new is None else _replace_first(output, new)

        return forward_hook

    def pre_hook(_module, args, kwargs):
        if threading.get_ident() != owner:
            return None
        if args:
            new = fn(args[0])
            return None if new is None else ((new, *args[1:]), kwargs)
        new = fn(kwargs["hidden_states"])
        return None if new is None else (args, {**kwargs, "hidden_states": new})

    return pre_hook


@contextmanager
def applied(loaded: LoadedModel, intervention: Intervention | None) -> Iterator[None]:
    """Register the intervention's hooks on `loaded`'s model for the `with` body; always removed."""
    parts = model_parts(loaded.model)
    owner = threading.get_ident()
    handles = []
    try:
        for hook in intervention.hooks if intervention is not None else ():
            module = parts.hook_module(hook.point)
            wrapped = _torch_hook(hook, owner)
            if hook.kind == FORWARD:
                handles.append(module.register_forward_hook(wrapped))
            else:
                handles.append(module.register_forward_pre_hook(wrapped, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def captured(loaded: LoadedModel, points: dict[str, str]) -> Iterator[dict[str, Tensor]]:
    """Record the activations at `points` ({point: kind}) of the runs made in the `with` body.

    Yields a dict that fills in as the model runs: point -> the activation (detached) of the last call.
    """
    got: dict[str, Tensor] = {}

    def keeper(point: str) -> HookFn:
        def keep(activation):
            got[point] = activation.detach()
            return None

        return keep

    hooks = tuple(Hook(point, kind, keeper(point)) for point, kind in points.items())
    with applied(loaded, Intervention("capture", hooks)):
        yield got


# --------------------------------------------------------------------------- batched sweeps

Progress = Callable[[int, int], None]  # (runs done, runs in all)
StopCheck = Callable[[], bool]  # True: stop after the batch in flight (e.g. threading.Event().is_set)


@dataclass(frozen=True)
class SweepRun:
    """How a batched sweep went."""

    values: Any  # np.ndarray [n_rows, n_metrics] float64: the metrics of each row, NaN for rows never run
    complete: bool  # False: stopped early by `should_stop`; the NaN rows were not run
    n_done: int  # rows run


def rows_per_batch(n_tokens: int, token_budget: int = 4096, most: int = 64) -> int:
    """How many runs of a `n_tokens` prompt go in one forward: about `token_budget` tokens, 1 to `most`."""
    return max(1, min(most, token_budget // max(1, n_tokens)))


def grid_rows_by_layer(rows: range, width: int) -> dict[int, tuple[list[int], list[int]]]:
    """The rows of one batch of a layer × `width` sweep (sweep row r is cell (r // width, r % width),
    layer-major), grouped by layer: layer -> (their rows within the batch, their columns)."""
    grouped: dict[int, tuple[list[int], list[int]]] = {}
    for j, r in enumerate(rows):
        batch_rows, columns = grouped.setdefault(r // width, ([], []))
        batch_rows.append(j)
        columns.append(r % width)
    return grouped


def run_batched(
    loaded: LoadedModel,
    ids,
    n_rows: int,
    intervention_for: Callable[[range], Intervention],
    metric: Callable[[Tensor], Any],
    *,
    n_metrics: int = 1,
    batch_size: int,
    on_progress: Progress | None = None,
    should_stop: StopCheck | None = None,
    previous: Any = None,
) -> SweepRun:
    """Run the prompt `ids` [T] once per row, `batch_size` rows per forward (row r of a batch is run
    `rows[r]`), each batch under `intervention_for(rows)`; `metric(last_logits [n, V])` -> [n, n_metrics].

    Only the last position's logits are computed (`logits_to_keep=1`). `previous` [n_rows, n_metrics]:
    the values of a stopped run of the same sweep; its finished rows are kept and only its NaN rows run.
    """
    import numpy as np
    import torch

    if batch_size < 1:
        raise ValueError("batch_size must be at least 1.")
    device = next(loaded.model.parameters()).device
    prompt = torch.as_tensor(np.asarray(ids), device=device)[None]  # [1, T]
    if previous is None:
        values = np.full((n_rows, n_metrics), np.nan)
    else:
        values = np.array(previous, dtype=np.float64).reshape(n_rows, n_metrics)
    done = int(np.isfinite(values).all(axis=1).sum())
    with torch.inference_mode():
        for rows in _missing_batches(values, batch_size):
            if should_stop is not None and should_stop():
                return SweepRun(values, False, done)
            with applied(loaded, intervention_for(rows)):
                out = loaded.model(input_ids=prompt.expand(len(rows), -1), use_cache=False, logits_to_keep=1)
            values[rows.start : rows.stop] = np.asarray(
                metric(out.logits[:, -1].float()), dtype=np.float64
            ).reshape(len(rows), n_metrics)
            done += len(rows)
            if on_progress is not None:
                on_progress(done, n_rows)
    return SweepRun(values, True, done)


def _missing_batches(values, batch_size: int) -> Iterator[range]:
    """Consecutive rows of `values` [n_rows, n_metrics] with a NaN, `batch_size` at most per range."""
    import numpy as np

    missing = ~np.isfinite(values).all(axis=1)
    row, n_rows = 0, len(values)
    while row < n_rows:
        if not missing[row]:
            row += 1
            continue
        stop = row
        while stop < n_rows and missing[stop] and stop - row < batch_size:
            stop += 1
        yield range(row, stop)
        row = stop
