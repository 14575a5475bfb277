"""Station 3 maths: one head's softmax(QKᵀ/√d)·V step by step, what each head attends to, and the
fused/rotary details of each family. Everything reads a `Trace`; nothing here runs the model again
except the GPT-2 `c_attn` split check.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.errors import InputError
from core.inspection.trace import Trace
from core.model.families import family_of
from core.tolerance import CheckResult, check_within, float32_tolerance, softmax_tolerance, worst


@dataclass(frozen=True)
class HeadSteps:
    """softmax(q·Kᵀ · scale + mask) · V for one query token of one head, each step kept."""

    layer: int
    head: int
    kv_head: int  # the key/value head this query head reads (grouped-query attention)
    position: int  # the query token
    q: np.ndarray  # [dh] the query vector (after rotary where the model applies it)
    keys: np.ndarray  # [T, dh] every key of the shared K/V head
    values: np.ndarray  # [T, dh]
    raw_scores: np.ndarray  # [T] q·k_j
    scale: float  # 1/√dh
    scaled_scores: np.ndarray  # [T] raw · scale
    mask: np.ndarray  # [T] 0 where j ≤ position, −inf for future tokens
    weights: np.ndarray  # [T] softmax of scaled + mask
    output: np.ndarray  # [dh] Σ_j weights_j · v_j, computed here
    model_output: np.ndarray  # [dh] the same head output captured from the model
    model_weights: np.ndarray  # [T] the model's own attention row

    @property
    def weights_check(self) -> CheckResult:
        """Our softmax row against the model's, within float32 rounding of q·k (see core.tolerance)."""
        return check_within(self.weights, self.model_weights, self._weights_tolerance)

    @property
    def output_check(self) -> CheckResult:
        """Our Σ_j w_j·v_j against the model's head output, within float32 rounding."""
        tolerance = self._weights_tolerance * np.abs(self.values).max() + float32_tolerance(
            self.values, reduction_length=len(self.values)
        )
        return check_within(self.output, self.model_output, tolerance)

    @property
    def _weights_tolerance(self) -> float:
        # The scores come out of dh-term dot products; a score error Δ moves each weight by ≤ 2Δ·w.
        return softmax_tolerance(self.scaled_scores, reduction_length=len(self.q))


def _check_index(name: str, value: int, size: int) -> None:
    if not 0 <= value < size:
        raise InputError(f"{name} {value} does not exist: choose 0–{size - 1}.")


def head_steps(trace: Trace, layer: int, head: int, position: int) -> HeadSteps:
    """Recompute one attention row by hand from the trace's Q, K and V."""
    _check_index("Layer", layer, trace.n_layer)
    _check_index("Head", head, trace.n_head)
    _check_index("Token", position, trace.n_tokens)
    kv = trace.kv_head_of(head)
    q = trace.q_layers[layer][head, position].astype(np.float64)
    keys = trace.k_layers[layer][kv].astype(np.float64)
    values = trace.v_layers[layer][kv].astype(np.float64)
    raw = keys @ q
    scale = trace.scaling
    scaled = raw * scale
    mask = np.where(np.arange(trace.n_tokens) <= position, 0.0, -np.inf)
    logits = scaled + mask
    weights = np.exp(logits - logits.max())
    weights /= weights.sum()
    return HeadSteps(
        layer=layer,
        head=head,
        kv_head=kv,
        position=position,
        q=q,
        keys=keys,
        values=values,
        raw_scores=raw,
        scale=scale,
        scaled_scores=scaled,
        mask=mask,
        weights=weights,
        output=weights @ values,
        model_output=trace.head_output_layers[layer][position, head].astype(np.float64),
        model_weights=trace.attention_layers[layer][head, position].astype(np.float64),
    )


def all_heads_check(trace: Trace) -> CheckResult:
    """softmax(QKᵀ·scale + mask)·V against the model's head outputs, every layer, head and token: the
    layer that comes closest to (or past) float32 rounding."""
    return worst(_layer_head_checks(trace))


def _layer_head_checks(trace: Trace) -> list[CheckResult]:
    group = trace.n_head // trace.n_kv_head
    T, dh = trace.n_tokens, trace.q_layers[0].shape[-1]
    mask = np.triu(np.full((T, T), -np.inf), k=1)
    checks = []
    for layer in range(trace.n_layer):  # one layer at a time keeps memory at H·T² floats
        k = np.repeat(trace.k_layers[layer], group, axis=0).astype(np.float64)
        v = np.repeat(trace.v_layers[layer], group, axis=0).astype(np.float64)
        scaled_scores = (
            trace.q_layers[layer].astype(np.float64) @ k.transpose(0, 2, 1) * trace.scaling
        )  # [H, T, T]
        scores = scaled_scores + mask
        scores -= scores.max(-1, keepdims=True)
        weights = np.exp(scores)
        weights /= weights.sum(-1, keepdims=True)
        model = trace.head_output_layers[layer].transpose(1, 0, 2)  # [H, T, dh]
        # The scores came out of dh-term dot products; see HeadSteps.output_check.
        weights_tolerance = softmax_tolerance(scaled_scores, reduction_length=dh)
        tolerance = weights_tolerance * np.abs(v).max() + float32_tolerance(v, reduction_length=T)
        checks.append(check_within(weights @ v, model, tolerance))
    return checks


@dataclass(frozen=True)
class HeadPatterns:
    """Where each head looks, averaged over query tokens 1..T-1 (token 0 can only see itself)."""

    previous: np.ndarray  # [L, H] mean weight on the token just before the query
    first: np.ndarray  # [L, H] mean weight on the first token ("attention sink")
    self_: np.ndarray  # [L, H] mean weight on the query token itself
    entropy: np.ndarray  # [L, H] mean entropy of the attention row, in bits

    def hint(self, layer: int, head: int) -> str:
        """A one-line reading of the numbers; a hint, not a proof of what the head is for."""
        shares = {
            "the previous token": self.previous[layer, head],
            "the first token": self.first[layer, head],
            "itself": self.self_[layer, head],
        }
        where, share = max(shares.items(), key=lambda kv: kv[1])
        if share >= 0.5:
            kind = {
                "the previous token": "a previous-token head",
                "the first token": "mostly parked on the first token (an 'attention sink')",
                "itself": "a self-attending head",
            }[where]
            return f"Puts {share:.0%} of its attention on {where}: {kind}."
        return (
            f"Spreads its attention (entropy {self.entropy[layer, head]:.2f} bits; at most "
            f"{share:.0%} on {where}): it gathers from many tokens."
        )


def head_patterns(trace: Trace) -> HeadPatterns:
    """Attention shares on previous / first / self token for every head, from the weights alone."""
    L, H, T = trace.n_layer, trace.n_head, trace.n_tokens
    if T < 2:
        zeros = np.zeros((L, H))
        return HeadPatterns(zeros, np.ones((L, H)), np.ones((L, H)), zeros)
    rows = np.arange(1, T)
    previous, first, self_, entropy = (np.zeros((L, H)) for _ in range(4))
    for layer, A in enumerate(trace.attention_layers):  # A: [H, T, T]; one layer at a time
        previous[layer] = A[:, rows, rows - 1].mean(-1, dtype=np.float64)
        first[layer] = A[:, rows, 0].mean(-1, dtype=np.float64)
        self_[layer] = A[:, rows, rows].mean(-1, dtype=np.float64)
        p = A[:, 1:, :].astype(np.float64)
        entropy[layer] = -(p * np.log2(np.where(p > 0, p, 1.0))).sum(-1).mean(-1)
    return HeadPatterns(previous, first, self_, entropy)


@dataclass(frozen=True)
class QKVSplit:
    """How a family computes q, k and v from one block's input, recomputed and checked."""

    layout: str  # the family's layout in words, e.g. "one fused projection c_attn, laid out [q | k | v]"
    modules: tuple[tuple[str, tuple[int, ...]], ...]  # (attribute name, weight shape) of each projection
    check: CheckResult  # max |projections of norm(x), split − the trace's Q, K, V before rotary|


def qkv_split(loaded, trace: Trace, layer: int) -> QKVSplit:
    """Recompute layer `layer`'s q, k, v from its input: the attention norm, the family's projection(s),
    the family's split into heads. Compared with the trace's vectors before any rotary."""
    import torch

    family = family_of(loaded.model)
    parts = family.parts(loaded.model)
    info = loaded.info
    T = trace.n_tokens
    with torch.inference_mode():
        x = parts.attention_norm(layer)(torch.tensor(trace.residual[layer])[None])  # [1, T, d]
        outputs = [module(x) for module in parts.qkv_modules(layer)]
        q, k, v = (
            t[0].reshape(T, n, info.d_head).transpose(0, 1).numpy()  # [n, T, dh]
            for t, n in zip(
                family.split_qkv(outputs, info.n_head, info.n_kv_head, info.d_head),
                (info.n_head, info.n_kv_head, info.n_kv_head),
                strict=True,
            )
        )
    q_model = trace.q if trace.q_pre_rotary is None else trace.q_pre_rotary
    k_model = trace.k if trace.k_pre_rotary is None else trace.k_pre_rotary
    error = max(
        float(np.abs(ours - theirs[layer]).max())
        for ours, theirs in ((q, q_model), (k, k_model), (v, trace.v))
    )
    reference = max(float(np.abs(t).max()) for t in (q, k, v))
    return QKVSplit(
        layout=family.qkv_layout,
        modules=tuple(
            (name, tuple(module.weight.shape))
            for name, module in zip(family.qkv_attrs, parts.qkv_modules(layer), strict=True)
        ),
        # Every output is a d-term dot product of a row of norm(x) with a column of the projection.
        check=CheckResult(error=error, tolerance=float32_tolerance(reference, reduction_length=info.d_model)),
    )


def attention_grid_image(trace: Trace, window: slice, tile: int = 40, gap: int = 4) -> np.ndarray:
    """Every head's attention map for a token window, tiled layer × head into one RGB image.

    Returns uint8 [L·(tile+gap), H·(tile+gap), 3]; each map is scaled to its own maximum.
    """
    A = np.stack([layer[:, window, window] for layer in trace.attention_layers])  # [L, H, w, w]
    L, H, w, _ = A.shape
    if w == 0:
        raise InputError("The token window is empty.")
    repeat = max(1, tile // w)
    size = w * repeat
    image = np.full((L * (size + gap), H * (size + gap), 3), 255, dtype=np.uint8)
    peak = A.max(axis=(2, 3), keepdims=True)
    scaled = A / np.where(peak > 0, peak, 1.0)
    colours = _viridis(scaled)  # [L, H, w, w, 3]
    colours = colours.repeat(repeat, axis=2).repeat(repeat, axis=3)
    future = np.triu(np.ones((w, w), dtype=bool), k=1).repeat(repeat, 0).repeat(repeat, 1)
    for layer in range(L):
        for head in range(H):
            r, c = layer * (size + gap), head * (size + gap)
            tile_rgb = colours[layer, head].copy()
            tile_rgb[future] = (235, 235, 235)  # the causal mask: never attended
            image[r : r + size, c : c + size] = tile_rgb
    return image


_VIRIDIS = np.array(
    [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)], dtype=np.float64
)


def _viridis(x: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to viridis-like RGB (uint8), by linear interpolation of 5 anchors."""
    x = np.clip(x, 0.0, 1.0) * (len(_VIRIDIS) - 1)
    lo = np.floor(x).astype(int)
    hi = np.minimum(lo + 1, len(_VIRIDIS) - 1)
    frac = (x - lo)[..., None]
    return (_VIRIDIS[lo] * (1 - frac) + _VIRIDIS[hi] * frac).astype(np.uint8)
