"""Station 2 maths: learned position tables, the sinusoidal encoding, and rotary (RoPE) rotations."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.trace import Trace


def sinusoidal(n_positions: int, d: int, base: float = 10000.0) -> np.ndarray:
    """The original Transformer's encoding, [n_positions, d]: sin on even dims, cos on odd dims."""
    positions = np.arange(n_positions)[:, None]
    rates = base ** (-np.arange(0, d, 2) / d)  # [ceil(d/2)]
    table = np.zeros((n_positions, d), dtype=np.float32)
    table[:, 0::2] = np.sin(positions * rates)
    table[:, 1::2] = np.cos(positions * rates[: d // 2])
    return table


def block_input_error(trace: Trace) -> float:
    """max |expected − actual block input|: token + position (GPT-2) or the token embedding (rotary)."""
    expected = trace.token_embeddings
    if trace.position_vectors is not None:
        expected = expected + trace.position_vectors
    return float(np.abs(expected - trace.block_input).max())


def rotate(x: np.ndarray, position: float, inv_freq: np.ndarray) -> np.ndarray:
    """Apply RoPE at `position` to a head vector x [dh], in the Llama "rotate half" layout.

    Dimension i is paired with i + dh/2 and that pair is turned by the angle position·inv_freq[i].
    """
    half = len(inv_freq)
    angles = position * inv_freq  # [dh/2]
    cos, sin = np.cos(angles), np.sin(angles)
    first, second = x[:half], x[half:]
    return np.concatenate([first * cos - second * sin, first * sin + second * cos])


@dataclass(frozen=True)
class OffsetCheck:
    """q·k for the same q and k placed at several (query, key) position pairs."""

    pairs: tuple[tuple[int, int], ...]  # (query position, key position)
    dots: tuple[float, ...]  # rotated q · rotated k at each pair
    offsets: tuple[int, ...]  # query − key


def rotary_offset_check(q: np.ndarray, k: np.ndarray, inv_freq: np.ndarray, pairs) -> OffsetCheck:
    """Rotate q and k to each position pair and dot them: equal offsets give equal dot products."""
    pairs = tuple((int(m), int(n)) for m, n in pairs)
    dots = tuple(float(rotate(q, m, inv_freq) @ rotate(k, n, inv_freq)) for m, n in pairs)
    return OffsetCheck(pairs, dots, tuple(m - n for m, n in pairs))


def rotary_table_error(trace: Trace) -> float:
    """max |our RoPE of the trace's pre-rotary q − the model's rotated q| over every layer/head/token."""
    if trace.rotary is None or trace.q_pre_rotary is None:
        raise ValueError("This trace has no rotary positions (a GPT-2 model adds a position vector instead).")
    inv_freq = trace.rotary.inv_freq
    positions = trace.rotary.positions
    half = len(inv_freq)
    angles = positions[:, None] * inv_freq[None, :]  # [T, dh/2]
    cos, sin = np.cos(angles), np.sin(angles)
    first, second = trace.q_pre_rotary[..., :half], trace.q_pre_rotary[..., half:]
    ours = np.concatenate([first * cos - second * sin, first * sin + second * cos], axis=-1)
    return float(np.abs(ours - trace.q).max())


def pair_angles(positions: np.ndarray, inv_freq: np.ndarray) -> np.ndarray:
    """Rotation angle (radians, wrapped to [0, 2π)) of every pair at every position, [P, dh/2]."""
    return np.mod(positions[:, None] * inv_freq[None, :], 2 * np.pi)


def learned_position_table(model, n_positions: int) -> np.ndarray:
    """The first `n_positions` rows of GPT-2's learned position table wpe, [n_positions, d]."""
    table = model.transformer.wpe.weight
    return table[:n_positions].detach().cpu().numpy()
