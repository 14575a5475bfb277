"""One token followed end to end through one trace: its embedding row, its position, its q/k/v and
where it attends, the residual stream at every depth and the model's final distribution for it.

Shapes: d = model width, L = layers, dh = head width, k = next-token candidates kept by the trace.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.errors import InputError
from core.inspection.attention import HeadSteps, head_steps
from core.inspection.positions import pair_angles, rotate
from core.inspection.trace import Trace
from core.model.loading import LoadedModel
from core.tolerance import CheckResult, check_close, check_within, log_softmax_tolerance


def _check_position(trace: Trace, position: int) -> None:
    if not 0 <= position < trace.n_tokens:
        raise InputError(f"Token {position} does not exist: choose 0–{trace.n_tokens - 1}.")


@dataclass(frozen=True)
class EmbeddingStop:
    """The token's row of the embedding matrix and how it enters the first block."""

    position: int
    token_id: int
    piece: str  # the token's text as it appears in the traced text
    embedding: np.ndarray  # [d] the row the model looked up (from the trace)
    embedding_norm: float
    lookup_check: CheckResult  # the trace's row against E[id] read from the weights: a copy, exact
    position_vector: np.ndarray | None  # [d] P[t] (learned positions); None for rotary models
    block_input: np.ndarray  # [d] what block 0 received for this token
    input_check: CheckResult  # E[id] (+ P[t]) against the block input
    angles: np.ndarray | None  # [dh/2] rotary angle of every pair at this position; None when learned


def embedding_stop(trace: Trace, position: int, embedding_row: np.ndarray) -> EmbeddingStop:
    """The token at `position`: its embedding row, and the check that `embedding_row` (E[id] read from
    the model's weights) is the row the model used."""
    _check_position(trace, position)
    row = trace.token_embeddings[position]
    learned = trace.position_vectors is not None
    if learned:
        position_vector = trace.position_vectors[position]
        # One float32 addition, rounded once.
        input_check = check_close(row + position_vector, trace.block_input[position], reduction_length=1)
    else:
        position_vector = None
        input_check = check_close(row, trace.block_input[position], reduction_length=0)
    angles = None
    if trace.rotary is not None:
        angles = pair_angles(np.array([position]), trace.rotary.inv_freq)[0]
    return EmbeddingStop(
        position=position,
        token_id=int(trace.token_ids[position]),
        piece=trace.pieces[position],
        embedding=row,
        embedding_norm=float(np.linalg.norm(row.astype(np.float64))),
        lookup_check=check_close(row, np.asarray(embedding_row), reduction_length=0),
        position_vector=position_vector,
        block_input=trace.block_input[position],
        input_check=input_check,
        angles=angles,
    )


@dataclass(frozen=True)
class Attended:
    """One token the chosen token attends to."""

    position: int
    piece: str
    weight: float  # the model's attention weight


@dataclass(frozen=True)
class AttentionStop:
    """The token's query, key and value in one layer and head, and where that head sends it."""

    layer: int
    head: int
    q: np.ndarray  # [dh] the query the model used (after rotary where it applies)
    k: np.ndarray  # [dh] the token's own key, from the K/V head this query head reads
    v: np.ndarray  # [dh] its value
    top: tuple[Attended, ...]  # the most attended tokens, largest weight first
    steps: HeadSteps  # softmax(q·Kᵀ·scale + mask)·V recomputed here, with its checks
    rotary_check: CheckResult | None  # our RoPE of the pre-rotary q against the model's q (rotary only)


def attention_stop(trace: Trace, position: int, layer: int, head: int, k: int = 5) -> AttentionStop:
    """q, k, v of the token at `position` in (`layer`, `head`) and its `k` most attended tokens."""
    steps = head_steps(trace, layer, head, position)  # validates layer, head and position
    kv = trace.kv_head_of(head)
    weights = trace.attention_layers[layer][head, position]  # [T]; the model's own row
    order = np.argsort(-weights[: position + 1], kind="stable")[:k]
    rotary = None
    if trace.rotary is not None and trace.q_pre_rotary_layers is not None:
        rotary = rotary_token_check(trace, position, layer, head)
    return AttentionStop(
        layer=layer,
        head=head,
        q=trace.q_layers[layer][head, position],
        k=trace.k_layers[layer][kv, position],
        v=trace.v_layers[layer][kv, position],
        top=tuple(Attended(int(j), trace.pieces[j], float(weights[j])) for j in order),
        steps=steps,
        rotary_check=rotary,
    )


def rotary_token_check(trace: Trace, position: int, layer: int, head: int) -> CheckResult:
    """Our RoPE at `position` of the token's pre-rotary q against the model's q (one head).

    The rotated width may be less than dh (partial rotary): the dimensions after it pass unrotated.
    Rounding as in `core.inspection.positions.rotary_check`: the model's float32 angle t·θ_i is off by up
    to t·θ_i·eps, so the reference is max|q| · (1 + the largest angle), over 2 rounded terms.
    """
    if trace.rotary is None or trace.q_pre_rotary_layers is None:
        raise InputError("This trace has no rotary positions (its model adds a position vector instead).")
    inv_freq = trace.rotary.inv_freq
    half = len(inv_freq)
    q_pre = trace.q_pre_rotary_layers[layer][head, position].astype(np.float64)
    ours = np.concatenate([rotate(q_pre[: 2 * half], position, inv_freq), q_pre[2 * half :]])
    reference = np.abs(q_pre).max() * (1.0 + position * float(np.max(inv_freq)))
    return check_close(ours, trace.q_layers[layer][head, position], reduction_length=2, reference=reference)


@dataclass(frozen=True)
class ResidualStop:
    """The token's vector after every block: its size, its turn, and the two updates that made it."""

    norms: np.ndarray  # [L+1] ‖x_ℓ‖ (row 0: the block input)
    cos_prev: np.ndarray  # [L] cosine(x_(ℓ+1), x_ℓ)
    attn_norms: np.ndarray  # [L] ‖attention update‖
    mlp_norms: np.ndarray  # [L] ‖MLP update‖
    sum_check: CheckResult  # x_ℓ + attention + MLP against x_(ℓ+1), every layer, this token


def residual_stop(trace: Trace, position: int) -> ResidualStop:
    """The residual stream of one token through every block, from the trace alone."""
    _check_position(trace, position)
    r = trace.residual[:, position].astype(np.float64)  # [L+1, d]
    norms = np.linalg.norm(r, axis=-1)
    cos_prev = (r[1:] * r[:-1]).sum(-1) / np.maximum(norms[1:] * norms[:-1], 1e-300)
    attn = np.stack([a[position] for a in trace.attn_out_layers]).astype(np.float64)  # [L, d]
    mlp = np.stack([m[position] for m in trace.mlp_out_layers]).astype(np.float64)
    after_attention = r[:-1] + attn
    # Two float32 additions per block, each rounded relative to its own result.
    sum_check = check_close(
        after_attention + mlp,
        r[1:],
        reduction_length=2,
        reference=np.maximum(np.abs(after_attention), np.abs(r[1:])),
    )
    return ResidualStop(
        norms=norms,
        cos_prev=cos_prev,
        attn_norms=np.linalg.norm(attn, axis=-1),
        mlp_norms=np.linalg.norm(mlp, axis=-1),
        sum_check=sum_check,
    )


@dataclass(frozen=True)
class FinalStop:
    """What the model predicts after the token: the trace's top-k, checked by recomputing them."""

    top_ids: np.ndarray  # [k] the model's most likely next tokens (from the trace)
    top_probs: np.ndarray  # [k] their probabilities (from the trace)
    next_id: int | None  # the text's actual next token; None after the last token
    next_prob: float | None  # its probability (from the trace)
    check: CheckResult  # softmax(W_U · norm(x_L)) computed here against the model's top-k probabilities


def final_stop(loaded: LoadedModel, trace: Trace, position: int) -> FinalStop:
    """The trace's next-token candidates at `position`, and the final norm + unembedding of the last
    residual recomputed here against them."""
    import torch

    from core.inspection.lens import final_norm_and_head

    _check_position(trace, position)
    norm, head = final_norm_and_head(loaded)
    with torch.inference_mode():
        logits = head(norm(torch.tensor(trace.residual[-1, position]))).float().numpy()  # [V]
    z = logits.astype(np.float64)
    log_p = z - z.max() - np.log(np.exp(z - z.max()).sum())
    ids = trace.top_ids[position]
    # The logits are d-term dot products; a logit off by Δ moves a log-probability by ≤ 2Δ, and a
    # probability p by ≤ p·2Δ (see core.tolerance.softmax_tolerance).
    tolerance = log_softmax_tolerance(logits, reduction_length=trace.residual.shape[-1])
    check = check_within(np.exp(log_p[ids]), trace.top_probs[position], tolerance)
    has_next = position + 1 < trace.n_tokens
    return FinalStop(
        top_ids=ids,
        top_probs=trace.top_probs[position],
        next_id=int(trace.token_ids[position + 1]) if has_next else None,
        next_prob=float(np.exp(trace.target_logprobs[position])) if has_next else None,
        check=check,
    )
