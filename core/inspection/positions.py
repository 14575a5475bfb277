"""Station 2 maths: learned position tables, the sinusoidal encoding, rotary (RoPE) rotations, and the
model run with its positions removed."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np

from core.errors import InputError, SettingsError
from core.inspection.trace import Trace
from core.model.families import model_parts
from core.model.loading import LoadedModel
from core.tolerance import CheckResult, check_close, float64_tolerance


def sinusoidal(n_positions: int, d: int, base: float = 10000.0) -> np.ndarray:
    """The original Transformer's encoding, [n_positions, d]: sin on even dims, cos on odd dims."""
    positions = np.arange(n_positions)[:, None]
    rates = base ** (-np.arange(0, d, 2) / d)  # [ceil(d/2)]
    table = np.zeros((n_positions, d), dtype=np.float32)
    table[:, 0::2] = np.sin(positions * rates)
    table[:, 1::2] = np.cos(positions * rates[: d // 2])
    return table


def block_input_check(trace: Trace) -> CheckResult:
    """Expected vs actual block input: token + position (GPT-2: one float32 addition, rounded once) or
    the token embedding itself (rotary: a copy, so it must match exactly)."""
    if trace.position_vectors is None:
        return check_close(trace.token_embeddings, trace.block_input, reduction_length=0)
    expected = trace.token_embeddings + trace.position_vectors
    return check_close(expected, trace.block_input, reduction_length=1)


def rotate(x: np.ndarray, position: float, inv_freq: np.ndarray) -> np.ndarray:
    """Apply RoPE at `position` to a head vector x [dh], in the Llama "rotate half" layout.

    Dimension i is paired with i + dh/2 and that pair is turned by the angle position·inv_freq[i].
    """
    half = len(inv_freq)
    angles = position * np.asarray(inv_freq, dtype=np.float64)  # [dh/2], float64: our reference maths
    cos, sin = np.cos(angles), np.sin(angles)
    x = np.asarray(x, dtype=np.float64)
    first, second = x[:half], x[half:]
    return np.concatenate([first * cos - second * sin, first * sin + second * cos])


@dataclass(frozen=True)
class OffsetCheck:
    """q·k for the same q and k placed at several (query, key) position pairs."""

    pairs: tuple[tuple[int, int], ...]  # (query position, key position)
    dots: tuple[float, ...]  # rotated q · rotated k at each pair
    offsets: tuple[int, ...]  # query − key
    tolerance: float  # float64 rounding of these dots: ‖q‖·‖k‖·(1 + largest angle), reduced over dh

    def spread(self, offset: int) -> CheckResult:
        """max − min of q·k over the pairs `offset` apart: rotary says 0, up to rounding."""
        same = [dot for dot, o in zip(self.dots, self.offsets, strict=True) if o == offset]
        if not same:
            raise SettingsError(f"No pair is {offset} apart.")
        return CheckResult(error=max(same) - min(same), tolerance=self.tolerance)


def rotary_offset_check(q: np.ndarray, k: np.ndarray, inv_freq: np.ndarray, pairs) -> OffsetCheck:
    """Rotate q and k to each position pair and dot them: equal offsets give equal dot products."""
    pairs = tuple((int(m), int(n)) for m, n in pairs)
    q, k = np.asarray(q, dtype=np.float64), np.asarray(k, dtype=np.float64)
    dots = tuple(float(rotate(q, m, inv_freq) @ rotate(k, n, inv_freq)) for m, n in pairs)
    # An angle a is rounded to a·(1 ± eps), which turns a pair by up to a·eps: the dot moves by up to
    # ‖q‖·‖k‖·a·eps, on top of the dot product's own rounding over dh terms.
    largest_angle = max(max(m, n) for m, n in pairs) * float(np.max(inv_freq)) if pairs else 0.0
    scale = np.linalg.norm(q) * np.linalg.norm(k) * (1.0 + largest_angle)
    tolerance = float64_tolerance(scale, reduction_length=len(q))
    return OffsetCheck(pairs, dots, tuple(m - n for m, n in pairs), tolerance)


def rotary_check(trace: Trace) -> CheckResult:
    """Our RoPE of the trace's pre-rotary q against the model's rotated q, every layer/head/token.

    The model takes the angle t·θ_i in float32, so an angle a is off by up to a·eps and the rotated
    pair by up to ‖pair‖·a·eps; then two products and a sum are rounded. The reference is therefore
    max|q| · (1 + the largest angle), over 2 rounded terms.
    """
    if trace.rotary is None or trace.q_pre_rotary is None:
        raise InputError("This trace has no rotary positions (its model adds a position vector instead).")
    inv_freq = trace.rotary.inv_freq
    positions = trace.rotary.positions
    half = len(inv_freq)  # pairs rotated; partial rotary (GPT-NeoX) passes the other dims through
    angles = positions[:, None] * inv_freq[None, :]  # [T, rotary_dim/2]
    cos, sin = np.cos(angles), np.sin(angles)
    first, second = trace.q_pre_rotary[..., :half], trace.q_pre_rotary[..., half : 2 * half]
    passed = trace.q_pre_rotary[..., 2 * half :]
    ours = np.concatenate([first * cos - second * sin, first * sin + second * cos, passed], axis=-1)
    largest_angle = float(np.max(positions, initial=0)) * float(np.max(inv_freq))
    reference = np.abs(trace.q_pre_rotary).max() * (1.0 + largest_angle)
    return check_close(ours, trace.q, reduction_length=2, reference=reference)


def pair_angles(positions: np.ndarray, inv_freq: np.ndarray) -> np.ndarray:
    """Rotation angle (radians, wrapped to [0, 2π)) of every pair at every position, [P, dh/2]."""
    return np.mod(positions[:, None] * inv_freq[None, :], 2 * np.pi)


def learned_position_table(model, n_positions: int) -> np.ndarray:
    """The first `n_positions` rows of GPT-2's learned position table wpe, [n_positions, d]."""
    table = model.transformer.wpe.weight
    return table[:n_positions].detach().cpu().numpy()


# --------------------------------------------------------------------------- positions removed


@contextmanager
def positions_removed(loaded: LoadedModel) -> Iterator[None]:
    """While the block runs, the model gets no position information (this thread's calls only).

    GPT-2: the learned position vectors become zeros, so every block input is the token embedding.
    Rotary: the rotary embedding is asked for position 0 at every token, whose rotation is the
    identity, so q and k stay unrotated. The causal mask is untouched: token t still sees tokens ≤ t.
    (position_ids of zeros passed to the model would not do: transformers reads a position id that
    does not count up as the start of another packed sequence, and masks the tokens off each other.)
    The model is shared between sessions, so the hooks change only calls made from this thread.
    """
    import torch

    owner = threading.get_ident()
    parts = model_parts(loaded.model)
    if parts.position_embedding is not None:

        def zero_position_vectors(_module, _args, output):
            return torch.zeros_like(output) if threading.get_ident() == owner else None

        handle = parts.position_embedding.register_forward_hook(zero_position_vectors)
    else:

        def position_zero(_module, args, kwargs):
            if threading.get_ident() != owner:
                return None
            if "position_ids" in kwargs:
                return args, {**kwargs, "position_ids": torch.zeros_like(kwargs["position_ids"])}
            return (args[0], torch.zeros_like(args[1]), *args[2:]), kwargs

        handle = parts.rotary_embedding.register_forward_pre_hook(position_zero, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@dataclass(frozen=True)
class NextToken:
    """One candidate for the token after a text."""

    token_id: int
    text: str  # decoded token text
    prob: float


@dataclass(frozen=True)
class PositionRun:
    """One text through the model, with position information kept or removed."""

    text: str
    token_ids: np.ndarray  # [T] int64
    positions_kept: bool
    logits: np.ndarray  # [V] float32 after the last token, as the model returned them
    log_probs: np.ndarray  # [V] float64 log softmax of `logits`
    first_block_last: np.ndarray  # [d] float32 residual after block 0 at the last token
    top: tuple[NextToken, ...]  # the k most likely next tokens


@dataclass(frozen=True)
class PositionEffect:
    """The same text as the model runs it and with its positions removed."""

    kept: PositionRun
    removed: PositionRun
    kl_nats: float  # KL(kept ‖ removed) between the two next-token distributions


@dataclass(frozen=True)
class OrderEffect:
    """Two texts, each run with positions kept and removed: does the model see their word order?"""

    a: PositionEffect
    b: PositionEffect
    same_tokens: bool  # b holds exactly a's tokens, reordered
    same_last_token: bool  # both end in the same token (the one whose prediction is compared)
    kl_kept: float  # KL(a ‖ b) between the next-token distributions, positions kept
    kl_removed: float  # the same with positions removed
    first_block_kept: CheckResult  # block 0's output at the last token, a against b, positions kept
    first_block_removed: CheckResult  # the same with positions removed

    @property
    def prefix_permuted(self) -> bool:
        """b reorders only tokens before a shared last token: one block without positions cannot tell."""
        return self.same_tokens and self.same_last_token


def kl_divergence(log_p: np.ndarray, log_q: np.ndarray) -> float:
    """KL(p ‖ q) = Σ p·(log p − log q) in nats, for log-probabilities [V] (float64)."""
    p = np.exp(log_p)
    terms = np.where(p > 0, p * (log_p - np.where(p > 0, log_q, 0.0)), 0.0)
    return max(0.0, float(terms.sum()))


def position_run(loaded: LoadedModel, text: str, keep_positions: bool, k: int = 5) -> PositionRun:
    """Run `text` once (up to the trace's token limit) and keep its last position's prediction."""
    import torch

    from core.inspection.trace import TraceConfig, tokenize

    max_tokens = min(TraceConfig().max_tokens, loaded.info.max_positions)
    ids, _, _, _ = tokenize(loaded, text, max_tokens)
    owner = threading.get_ident()
    captured = {}

    def keep_first_block(_module, _args, output):
        if threading.get_ident() == owner:
            captured["x"] = (output[0] if isinstance(output, tuple) else output)[0, -1]

    handle = model_parts(loaded.model).blocks[0].register_forward_hook(keep_first_block)
    try:
        with nullcontext() if keep_positions else positions_removed(loaded), torch.inference_mode():
            logits = loaded.model(input_ids=torch.as_tensor(ids)[None], use_cache=False).logits[0, -1]
    finally:
        handle.remove()
    log_probs = torch.log_softmax(logits.double(), dim=-1).numpy()
    top = np.argsort(-log_probs, kind="stable")[:k]
    return PositionRun(
        text=text,
        token_ids=ids,
        positions_kept=keep_positions,
        logits=logits.float().numpy(),
        log_probs=log_probs,
        first_block_last=captured["x"].float().numpy(),
        top=tuple(
            NextToken(int(i), loaded.tokenizer.decode([int(i)]), float(np.exp(log_probs[i]))) for i in top
        ),
    )


def position_effect(loaded: LoadedModel, text: str, k: int = 5) -> PositionEffect:
    """`text` with positions kept and removed; the next-token predictions and how far apart they are."""
    kept = position_run(loaded, text, keep_positions=True, k=k)
    removed = position_run(loaded, text, keep_positions=False, k=k)
    return PositionEffect(kept, removed, kl_divergence(kept.log_probs, removed.log_probs))


def order_effect(loaded: LoadedModel, text_a: str, text_b: str, k: int = 5) -> OrderEffect:
    """Run two texts with and without positions and compare what each predicts after its last token.

    Without positions, one causal attention layer sees the tokens before the last one as a set: when
    b only reorders those, block 0's output at the last token is the same up to rounding (the sums are
    taken in another order). Deeper layers still tell the orders apart — each earlier token saw a
    different prefix — so the final prediction changes even then.
    """
    if not text_a.strip() or not text_b.strip():
        raise InputError("Type a text into both A and B to compare their word order.")
    a, b = position_effect(loaded, text_a, k), position_effect(loaded, text_b, k)
    ids_a, ids_b = a.kept.token_ids, b.kept.token_ids
    same_tokens = len(ids_a) == len(ids_b) and sorted(ids_a.tolist()) == sorted(ids_b.tolist())
    # The first block reduces over the T attended tokens, then over d and the MLP's width: every
    # reordered sum rounds differently, and those roundings add up along the path.
    n = len(ids_a) + 2 * loaded.info.d_model + mlp_width(loaded)

    def first_block(kept: bool) -> CheckResult:
        x_a = (a.kept if kept else a.removed).first_block_last
        x_b = (b.kept if kept else b.removed).first_block_last
        return check_close(x_a, x_b, reduction_length=n, reference=np.maximum(np.abs(x_a), np.abs(x_b)))

    return OrderEffect(
        a=a,
        b=b,
        same_tokens=same_tokens,
        same_last_token=bool(ids_a[-1] == ids_b[-1]),
        kl_kept=kl_divergence(a.kept.log_probs, b.kept.log_probs),
        kl_removed=kl_divergence(a.removed.log_probs, b.removed.log_probs),
        first_block_kept=first_block(True),
        first_block_removed=first_block(False),
    )


def mlp_width(loaded: LoadedModel) -> int:
    """The MLP's hidden width (GPT-2's n_inner defaults to 4·d)."""
    config = loaded.model.config
    width = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None)
    return int(width or 4 * loaded.info.d_model)
