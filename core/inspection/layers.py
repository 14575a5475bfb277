"""Station 4 maths: the residual stream through every block — sizes, drift, each block's contributions,
the logit lens (what every layer would predict), and what a normalisation layer does to one vector.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.errors import InputError
from core.inspection.trace import Trace
from core.model.families import family_of
from core.model.loading import LoadedModel
from core.tolerance import CheckResult, check_close, check_within, log_softmax_tolerance


@dataclass(frozen=True)
class ResidualStats:
    """Per layer and token: how big the vector is and how much each block turns it."""

    norms: np.ndarray  # [L+1, T] ‖residual‖ after each block (row 0: the block input)
    cos_prev: np.ndarray  # [L, T] cosine(residual after block ℓ, residual before it)
    attn_norms: np.ndarray  # [L, T] ‖attention contribution‖
    mlp_norms: np.ndarray  # [L, T] ‖MLP contribution‖
    sum_check: CheckResult  # previous + attention + MLP against next, every layer and token


def residual_stats(trace: Trace) -> ResidualStats:
    r = trace.residual.astype(np.float64)
    norms = np.linalg.norm(r, axis=-1)
    dots = (r[1:] * r[:-1]).sum(-1)
    cos_prev = dots / np.maximum(norms[1:] * norms[:-1], 1e-12)
    after_attention = r[:-1] + trace.attn_out  # [L, T, d] the block's first float32 addition
    # The block rounds twice (x + attention, then + MLP); each rounding is relative to its result.
    sum_check = check_close(
        after_attention + trace.mlp_out,
        r[1:],
        reduction_length=2,
        reference=np.maximum(np.abs(after_attention), np.abs(r[1:])),
    )
    return ResidualStats(
        norms=norms,
        cos_prev=cos_prev,
        attn_norms=np.linalg.norm(trace.attn_out, axis=-1),
        mlp_norms=np.linalg.norm(trace.mlp_out, axis=-1),
        sum_check=sum_check,
    )


@dataclass(frozen=True)
class LogitLens:
    """What each layer's residual would predict if the model stopped there, for a token window."""

    positions: np.ndarray  # [P] token positions read
    top_ids: np.ndarray  # [L+1, P, k] most likely next tokens per layer
    top_probs: np.ndarray  # [L+1, P, k]
    target_ids: np.ndarray  # [P] the actual next token (-1 after the last token)
    target_rank: np.ndarray  # [L+1, P] rank of the actual next token (0 = top; -1 where none)
    target_prob: np.ndarray  # [L+1, P] its probability (may underflow to 0; the rank never does)
    target_logprob: np.ndarray  # [L+1, P] its log-probability, natural log (-inf where none)
    final_check: CheckResult  # last layer's log-probabilities vs the model's own, over the window


MAX_LENS_POSITIONS = 64  # (L+1)·P·V logits are computed; more would take seconds on a CPU


def lens_top_columns(lens: LogitLens, strings, position_index: int) -> dict[str, list[str]]:
    """The lens's top-k at one of its positions as table columns: "top j" → "piece  (p%)" per depth."""
    depths = range(lens.top_ids.shape[0])
    return {
        f"top {j + 1}": [
            f"{strings[lens.top_ids[ell, position_index, j]]}  ({lens.top_probs[ell, position_index, j]:.1%})"
            for ell in depths
        ]
        for j in range(lens.top_ids.shape[-1])
    }


def rank_of_targets(logits, targets) -> np.ndarray:
    """Rank of each row's target among its logits: the number of tokens with a strictly larger logit.

    logits: [P, V]; targets: [P] token ids. Ranking by logits is exact, where ranking by float32
    probabilities is not: far down the list the probabilities underflow to 0 and all tie. A token tied
    with the target's logit does not count against it, so tied tokens share the best rank (0 = top).
    """
    logits = np.asarray(logits)
    targets = np.asarray(targets, dtype=np.int64)
    target_logits = np.take_along_axis(logits, targets[:, None], axis=1)  # [P, 1]
    return (logits > target_logits).sum(axis=-1).astype(np.int64)


def layer_labels(n_layer: int) -> list[str]:
    """Names of the L+1 residual-stream rows: the block input, then after every block."""
    return ["input"] + [f"after block {i}" for i in range(n_layer)]


def logit_lens(loaded: LoadedModel, trace: Trace, positions, k: int = 3, targets=None) -> LogitLens:
    """Final norm + unembedding applied to every layer's residual at `positions`.

    The token tracked at each position is the text's real next token, or `targets[i]` when given
    (-1: none). This is the one logit lens: the layers station and the before/after view both use it.
    """
    import torch

    from core.inspection.lens import final_norm_and_head

    positions = np.asarray(list(positions), dtype=int)
    if len(positions) == 0:
        raise InputError("Choose at least one token for the logit lens.")
    if len(positions) > MAX_LENS_POSITIONS:
        raise InputError(
            f"The logit lens reads at most {MAX_LENS_POSITIONS} tokens at a time; pick a window."
        )
    if positions.min() < 0 or positions.max() >= trace.n_tokens:
        raise InputError(f"Token positions must be within 0–{trace.n_tokens - 1}.")
    norm, head = final_norm_and_head(loaded)
    T = trace.n_tokens
    if targets is None:
        targets = np.array([trace.token_ids[p + 1] if p + 1 < T else -1 for p in positions])
    targets = np.asarray(targets, dtype=np.int64)
    if len(targets) != len(positions) or targets.max(initial=-1) >= trace.last_logits.shape[-1]:
        raise InputError("Each lens position needs one target token id inside the vocabulary (or -1).")
    n_layers = trace.residual.shape[0]
    top_ids = np.zeros((n_layers, len(positions), k), dtype=np.int64)
    top_probs = np.zeros((n_layers, len(positions), k), dtype=np.float32)
    rank = np.full((n_layers, len(positions)), -1, dtype=np.int64)
    logprob = np.full((n_layers, len(positions)), -np.inf, dtype=np.float32)
    has_target = targets >= 0
    safe_targets = np.where(has_target, targets, 0)
    with torch.inference_mode():
        for layer in range(n_layers):
            x = torch.tensor(trace.residual[layer, positions])
            logits = head(norm(x)).float()  # [P, V]
            log_p = torch.log_softmax(logits, dim=-1)
            lp_top, i_top = log_p.topk(k, dim=-1)
            top_ids[layer], top_probs[layer] = i_top.numpy(), lp_top.exp().numpy()
            lp_target = log_p.gather(1, torch.as_tensor(safe_targets)[:, None])[:, 0].numpy()
            logprob[layer] = np.where(has_target, lp_target, -np.inf)
            rank[layer] = np.where(has_target, rank_of_targets(logits.numpy(), safe_targets), -1)
    final_check = _lens_final_check(trace, positions, logits.numpy(), log_p.numpy(), k)
    prob = np.exp(logprob)  # 0 where there is no next token
    return LogitLens(positions, top_ids, top_probs, targets, rank, prob, logprob, final_check)


def _lens_final_check(trace: Trace, positions, logits, log_p, k: int) -> CheckResult:
    """The last layer's readings against the model's own output: its top-k and the actual next tokens.

    Both sides apply the same final norm and unembedding to the same last residual, with different
    matrix shapes (so different BLAS paths): the logits come out of reductions over d.
    """
    k = min(k, trace.top_ids.shape[1])
    ids = trace.top_ids[positions, :k]  # [P, k]
    # The trace keeps top-k probabilities (compared as such: they may underflow to 0, and |Δp| ≤
    # p·|Δ log p| stays within the same tolerance) and the next tokens' log-probabilities.
    ours = [np.exp(np.take_along_axis(log_p.astype(np.float64), ids, axis=1)).ravel()]
    theirs = [trace.top_probs[positions, :k].ravel()]
    rows = np.flatnonzero(positions < trace.n_tokens - 1)  # rows whose next token the trace scored
    scored = positions[rows]
    ours.append(log_p[rows, trace.token_ids[scored + 1]])
    theirs.append(trace.target_logprobs[scored])
    tolerance = log_softmax_tolerance(logits, reduction_length=trace.residual.shape[-1])
    return check_within(np.concatenate(ours), np.concatenate(theirs), tolerance)


@dataclass(frozen=True)
class NormEffect:
    """A block's first normalisation applied to one residual vector, step by step."""

    kind: str  # "LayerNorm" (GPT-2) or "RMSNorm" (Llama)
    before: np.ndarray  # [d] the residual vector
    normalised: np.ndarray  # [d] (x − mean)/std for LayerNorm, x/rms for RMSNorm — before γ, β
    after: np.ndarray  # [d] the module's own output
    gain: np.ndarray  # [d] γ
    bias: np.ndarray | None  # [d] β (LayerNorm only)
    mean_before: float
    var_before: float
    rms_before: float
    mean_after: float
    var_after: float
    rms_after: float
    formula_check: CheckResult  # our float64 formula against the module's float32 output


def norm_effect(loaded: LoadedModel, trace: Trace, layer: int, position: int) -> NormEffect:
    """Apply block `layer`'s pre-attention norm (ln_1 / input_layernorm) to one token's residual."""
    import torch

    if not 0 <= layer < trace.n_layer:
        raise InputError(f"Layer {layer} does not exist: choose 0–{trace.n_layer - 1}.")
    if not 0 <= position < trace.n_tokens:
        raise InputError(f"Token {position} does not exist: choose 0–{trace.n_tokens - 1}.")
    family = family_of(loaded.model)
    module = family.parts(loaded.model).attention_norm(layer)
    layer_norm = family.norm == "LayerNorm"  # else RMSNorm: no centring, no bias
    x = trace.residual[layer, position].astype(np.float64)
    with torch.inference_mode():
        after = module(torch.tensor(trace.residual[layer, position])).numpy().astype(np.float64)
    gain = module.weight.detach().numpy().astype(np.float64)
    bias = None
    if layer_norm:
        eps = module.eps
        spread = np.sqrt(x.var() + eps)  # σ
        normalised = (x - x.mean()) / spread
        bias = module.bias.detach().numpy().astype(np.float64)
        ours = normalised * gain + bias
        kind = "LayerNorm"
    else:
        eps = getattr(module, "variance_epsilon", getattr(module, "eps", 1e-6))
        spread = np.sqrt((x**2).mean() + eps)  # RMS
        normalised = x / spread
        ours = normalised * gain
        kind = "RMSNorm"

    def rms(v):
        return float(np.sqrt((v**2).mean()))

    return NormEffect(
        kind=kind,
        before=x,
        normalised=normalised,
        after=after,
        gain=gain,
        bias=bias,
        mean_before=float(x.mean()),
        var_before=float(x.var()),
        rms_before=rms(x),
        mean_after=float(after.mean()),
        var_after=float(after.var()),
        rms_after=rms(after),
        # The module reduces over d (mean, variance) and rounds x, x/σ and γ·x/σ: x's own rounding,
        # seen through /σ and ×γ, sets the size of every error.
        formula_check=check_close(
            ours,
            after,
            reduction_length=len(x),
            reference=np.abs(gain).max() * np.abs(x).max() / spread
            + (np.abs(bias).max() if bias is not None else 0.0),
        ),
    )
