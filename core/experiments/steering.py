"""Steering vectors: the difference of the residual stream between two prompts (or two sets of
prompts) at one layer, added back with strength α at every position while the model generates."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.errors import InputError, SettingsError
from core.experiments.compare import (
    FORWARD,
    PRE,
    Comparison,
    Intervention,
    applied,
    captured,
    compare,
    prompt_ids,
)
from core.model.loading import LoadedModel
from core.tolerance import CheckResult, check_close

LAST = "last"  # each prompt contributes its residual at its last token
MEAN = "mean"  # ... or the mean of its residual over all its tokens
REDUCTIONS = (LAST, MEAN)
OUT = "out"  # the residual leaving block i (hook "blocks.{i}.out", on the block's output)
IN = "in"  # the residual entering block i (hook "blocks.{i}.in", on the block's input)
WHERE = (OUT, IN)
MAX_ALPHA = 1000.0  # |α| allowed; far beyond this the residual is pure v and the output meaningless


@dataclass(frozen=True)
class SteeringVector:
    """v = mean over `positive` − mean over `negative` of the residual at one hook point."""

    layer: int  # block index i
    where: str  # OUT or IN
    reduce: str  # LAST or MEAN: what one prompt contributes
    positive: tuple[str, ...]  # the prompts steered toward
    negative: tuple[str, ...]  # the prompts steered away from
    vector: np.ndarray  # [d] float32
    residual_norm: float  # median ‖x‖ of the residual at this point over the prompts' tokens

    @property
    def point(self) -> str:
        return f"blocks.{self.layer}.{self.where}"

    @property
    def kind(self) -> str:
        return FORWARD if self.where == OUT else PRE

    @property
    def norm(self) -> float:
        return float(np.linalg.norm(self.vector))


def prompts_from_text(text: str) -> tuple[str, ...]:
    """One prompt per non-empty line."""
    return tuple(line.strip() for line in (text or "").splitlines() if line.strip())


def _check_place(loaded: LoadedModel, layer: int, where: str) -> None:
    n = loaded.info.n_layer
    if not 0 <= layer < n:
        raise SettingsError(f"Layer must be between 0 and {n - 1}, not {layer}.")
    if where not in WHERE:
        raise SettingsError(f"Steer at the block's input or output ({', '.join(WHERE)}), not {where!r}.")


def residuals(loaded: LoadedModel, text: str, layer: int, where: str = OUT) -> np.ndarray:
    """The residual stream of `text` at block `layer`'s input or output, [T, d] float32."""
    import torch

    _check_place(loaded, layer, where)
    ids, _ = prompt_ids(loaded, text)
    point = f"blocks.{layer}.{where}"
    with captured(loaded, {point: FORWARD if where == OUT else PRE}) as got, torch.inference_mode():
        loaded.model(input_ids=torch.as_tensor(ids)[None], use_cache=False)
    return got[point][0].float().cpu().numpy()


def steering_vector(
    loaded: LoadedModel,
    positive: Sequence[str],
    negative: Sequence[str],
    layer: int,
    where: str = OUT,
    reduce: str = LAST,
) -> SteeringVector:
    """Run each prompt alone (no padding), reduce its residual at the point to one vector (its last
    token, or the mean over its tokens), average each side, and subtract: v = mean(+) − mean(−)."""
    if reduce not in REDUCTIONS:
        raise SettingsError(f"Reduce each prompt by {' or '.join(REDUCTIONS)}, not {reduce!r}.")
    _check_place(loaded, layer, where)
    positive = tuple(p.strip() for p in positive if p and p.strip())
    negative = tuple(p.strip() for p in negative if p and p.strip())
    if not positive or not negative:
        raise InputError("Type at least one prompt on each side (toward and away from) to build a vector.")
    sides, norms = [], []
    for prompts in (positive, negative):
        rows = []
        for text in prompts:
            x = residuals(loaded, text, layer, where).astype(np.float64)  # [T, d]
            norms.extend(np.linalg.norm(x, axis=-1))
            rows.append(x[-1] if reduce == LAST else x.mean(axis=0))
        sides.append(np.mean(rows, axis=0))
    vector = (sides[0] - sides[1]).astype(np.float32)
    return SteeringVector(layer, where, reduce, positive, negative, vector, float(np.median(norms)))


def _check_alpha(alpha: float) -> None:
    if not np.isfinite(alpha) or abs(alpha) > MAX_ALPHA:
        raise SettingsError(f"α must be a number between −{MAX_ALPHA:g} and {MAX_ALPHA:g}, not {alpha}.")


def steering(vector: SteeringVector, alpha: float) -> Intervention:
    """Add α·v to the residual at the vector's point, at every position (the prompt's and each new
    token's). α = 0 adds an exact zero: the model's own numbers come through unchanged."""
    import torch

    _check_alpha(alpha)
    delta = torch.as_tensor(np.float32(alpha) * vector.vector)  # [d] float32

    def add(x):
        return x + delta.to(device=x.device, dtype=x.dtype)

    label = f"steer {alpha:+g}·v at {vector.point}"
    return Intervention.of(label, (vector.point, vector.kind, add))


def steer(
    loaded: LoadedModel,
    text: str,
    vector: SteeringVector,
    alpha: float,
    *,
    k: int = 10,
    target_id: int | None = None,
    n_continue: int = 12,
) -> Comparison:
    """`text` as it is and steered by α·v: top-k, the target's probability, KL, greedy continuations."""
    if vector.layer >= loaded.info.n_layer or vector.vector.shape != (loaded.info.d_model,):
        raise InputError("This steering vector was built on another model: build it again.")
    return compare(loaded, text, steering(vector, alpha), k=k, target_id=target_id, n_continue=n_continue)


def steering_check(loaded: LoadedModel, text: str, vector: SteeringVector, alpha: float) -> CheckResult:
    """The residual at the point, steered minus original, against α·v at every prompt token: the
    model's own numbers show the vector was added, and only that (one float32 addition each)."""
    import torch

    ids, _ = prompt_ids(loaded, text)
    point = {vector.point: vector.kind}
    with torch.inference_mode():
        with captured(loaded, point) as got:
            loaded.model(input_ids=torch.as_tensor(ids)[None], use_cache=False)
        original = got[vector.point][0].double().cpu().numpy()  # [T, d]
        # The capture is registered after the steering hook, so it sees the steered residual.
        with applied(loaded, steering(vector, alpha)), captured(loaded, point) as got:
            loaded.model(input_ids=torch.as_tensor(ids)[None], use_cache=False)
        steered = got[vector.point][0].double().cpu().numpy()
    expected = np.broadcast_to((np.float32(alpha) * vector.vector).astype(np.float64), original.shape)
    reference = np.abs(original) + np.abs(expected)
    return check_close(steered - original, expected, reduction_length=2, reference=reference)


def token_of(tokenizer, text: str) -> tuple[int | None, str]:
    """The token id whose probability to follow, typed as text (" great" with its leading space), and
    a note when the text splits into several tokens (the first is followed). Empty text: (None, "")."""
    if not text or not text.strip():
        return None, ""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise InputError(f"{text!r} gives no tokens.")
    if len(ids) == 1:
        return int(ids[0]), ""
    first = tokenizer.decode([ids[0]])
    return int(ids[0]), f"{text!r} splits into {len(ids)} tokens; the first, {first!r}, is followed."
