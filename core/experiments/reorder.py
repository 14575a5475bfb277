"""The same text with its position information removed, or its tokens shuffled (each keeping its own
position, or renumbered in the new order), compared with the original run side by side."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from core.errors import InputError, SettingsError
from core.experiments.compare import (
    FORWARD,
    Comparison,
    Intervention,
    applied,
    captured,
    compare,
    prompt_ids,
)
from core.inspection.positions import mlp_width
from core.model.families import HOOK_EMBED, HOOK_FINAL_NORM, HOOK_POS, model_parts
from core.model.loading import LoadedModel
from core.tolerance import CheckResult, check_close

REMOVED = "removed"  # no position information at all (core.inspection.positions.positions_removed)
SHUFFLED_KEPT = "shuffled, positions kept"  # tokens reordered, each with its original position
SHUFFLED_RENUMBERED = "shuffled, renumbered"  # tokens reordered, positions counting up in the new order
MODES = (REMOVED, SHUFFLED_KEPT, SHUFFLED_RENUMBERED)


@dataclass(frozen=True)
class Reordered:
    """One run of the "Positions" experiment."""

    mode: str  # one of MODES
    order: tuple[int, ...]  # slot t of the changed run holds the prompt's token order[t]
    pieces: tuple[str, ...]  # the prompt's tokens in the changed run's order (readable)
    positions: tuple[int | None, ...]  # the position each slot's token gets (None: no position at all)
    comparison: Comparison


# --------------------------------------------------------------------------- orders


def check_order(order: Sequence[int], n: int) -> tuple[int, ...]:
    """`order` as a tuple, if it is a permutation of 0 … n−1; InputError saying what is wrong otherwise."""
    order = tuple(int(i) for i in order)
    if sorted(order) != list(range(n)):
        missing = sorted(set(range(n)) - set(order))
        extra = sorted(i for i in set(order) if not 0 <= i < n or order.count(i) > 1)
        raise InputError(
            f"The order must use each token number 0 to {n - 1} exactly once "
            f"(missing: {missing or 'none'}; out of range or repeated: {extra or 'none'})."
        )
    return order


def parse_order(text: str, n: int) -> tuple[int, ...]:
    """Token numbers typed as "2 0 1 3" or "2, 0, 1, 3", checked to be a permutation of 0 … n−1."""
    words = (text or "").replace(",", " ").split()
    if not words:
        example = " ".join(str(i) for i in shuffled_order(n, seed=0))
        raise InputError(f"Type the new order as token numbers 0 to {n - 1}, e.g. {example}.")
    try:
        numbers = [int(w) for w in words]
    except ValueError as e:
        raise InputError(f"The order holds something that is not a token number: {e}.") from None
    return check_order(numbers, n)


def shuffled_order(n: int, seed: int, keep_last: bool = True) -> tuple[int, ...]:
    """A seeded random permutation of 0 … n−1; with `keep_last`, the last token stays last, so the
    prediction compared is still made after the same token."""
    head = list(range(n - 1 if keep_last and n > 0 else n))
    random.Random(seed).shuffle(head)
    return tuple(head + ([n - 1] if keep_last and n > 0 else []))


# --------------------------------------------------------------------------- interventions


def _permute_prefix(x, order: tuple[int, ...]):
    """x [B, T, ...] with slot t < len(order) holding x[:, order[t]]; later slots (the tokens generated
    after the prompt) stay where they are."""
    import torch

    index = torch.as_tensor(order, device=x.device)
    return torch.cat([x[:, index], x[:, len(order) :]], dim=1)


@contextmanager
def position_change(loaded: LoadedModel, mode: str, order: Sequence[int]) -> Iterator[Intervention]:
    """The intervention for `mode`, valid inside the `with` body (see `reordered`).

    Tokens are reordered by permuting the token embedding rows (the same as permuting input_ids).
    Learned positions (a position table): the position vectors are zeroed, or permuted with their
    tokens. Rotary positions: the rotary module is given position 0 everywhere, or the permuted
    position ids. The rotary module is no hook point of the registry, so its hook is registered here
    and acts only between the intervention's own "embed" and "final_norm" hooks: only in the
    changed run. (position_ids passed to the model would not do: transformers reads ids that do not
    count up as the starts of packed sequences and masks the tokens off each other.)
    """
    import torch

    if mode not in MODES:
        raise SettingsError(f"Unknown mode {mode!r}; use one of: {', '.join(MODES)}.")
    order = tuple(order)
    parts = model_parts(loaded.model)
    hooks = []
    if mode != REMOVED:
        hooks.append((HOOK_EMBED, FORWARD, lambda x: _permute_prefix(x, order)))
    if parts.position_embedding is not None:
        if mode == REMOVED:
            hooks.append((HOOK_POS, FORWARD, torch.zeros_like))
        elif mode == SHUFFLED_KEPT:
            hooks.append((HOOK_POS, FORWARD, lambda p: _permute_prefix(p, order)))
        yield Intervention.of(f"positions {mode}", *hooks)
        return
    if mode == SHUFFLED_RENUMBERED:  # rotary: the model numbers the slots itself
        yield Intervention.of(f"positions {mode}", *hooks)
        return

    owner = threading.get_ident()
    live = {"on": False}

    def switch(on: bool):
        def flip(_x):
            live["on"] = on
            return None

        return flip

    def new_ids(position_ids):
        if mode == REMOVED:
            return torch.zeros_like(position_ids)
        return _permute_prefix(position_ids[..., None], order)[..., 0]

    def rotary_hook(_module, args, kwargs):
        if threading.get_ident() != owner or not live["on"]:
            return None
        if "position_ids" in kwargs:
            return args, {**kwargs, "position_ids": new_ids(kwargs["position_ids"])}
        return (args[0], new_ids(args[1]), *args[2:]), kwargs

    hooks = [(HOOK_EMBED, FORWARD, switch(True)), *hooks, (HOOK_FINAL_NORM, FORWARD, switch(False))]
    handle = parts.rotary_embedding.register_forward_pre_hook(rotary_hook, with_kwargs=True)
    try:
        yield Intervention.of(f"positions {mode}", *hooks)
    finally:
        handle.remove()


def reordered(
    loaded: LoadedModel,
    text: str,
    mode: str,
    order: Sequence[int] | None = None,
    *,
    k: int = 10,
    target_id: int | None = None,
    n_continue: int = 12,
) -> Reordered:
    """`text` as it is and with its positions removed or its tokens reordered (`order`; None = as
    written), compared by `compare`. The causal mask always follows the new order: the token in slot t
    attends to slots ≤ t, whatever position it carries."""
    ids, pieces = prompt_ids(loaded, text, n_continue)
    order = check_order(range(len(ids)) if order is None else order, len(ids))
    with position_change(loaded, mode, order) as intervention:
        comparison = compare(loaded, text, intervention, k=k, target_id=target_id, n_continue=n_continue)
    if mode == REMOVED:
        positions: tuple[int | None, ...] = (None,) * len(order)
    else:
        positions = order if mode == SHUFFLED_KEPT else tuple(range(len(order)))
    return Reordered(mode, order, tuple(pieces[i] for i in order), positions, comparison)


def first_block_check(loaded: LoadedModel, text: str, order: Sequence[int]) -> CheckResult:
    """Block 0's output at the last slot, tokens shuffled with their positions kept against the
    original. When the last token stays last, its attention in block 0 sees the same (token, position)
    pairs, only summed in another order: equal up to that rounding. Later slots and later blocks differ,
    because the causal mask follows the new order."""
    import torch

    ids, _ = prompt_ids(loaded, text)
    order = check_order(order, len(ids))
    if order[-1] != len(ids) - 1:
        raise InputError("Keep the last token last: only then does block 0 see the same tokens there.")
    point = "blocks.0.out"
    x = torch.as_tensor(ids)[None]
    with torch.inference_mode():
        with captured(loaded, {point: FORWARD}) as got:
            loaded.model(input_ids=x, use_cache=False)
        original = got[point][0, -1].double().cpu().numpy()
        with position_change(loaded, SHUFFLED_KEPT, order) as change:
            with applied(loaded, change), captured(loaded, {point: FORWARD}) as got:
                loaded.model(input_ids=x, use_cache=False)
        shuffled = got[point][0, -1].double().cpu().numpy()
    n = len(ids) + 2 * loaded.info.d_model + mlp_width(loaded)  # as in positions.order_effect
    reference = np.maximum(np.abs(original), np.abs(shuffled))
    return check_close(shuffled, original, reduction_length=n, reference=reference)
