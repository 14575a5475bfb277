"""Station 4 maths: the residual stream through every block — sizes, drift, each block's contributions,
the logit lens (what every layer would predict), and what a normalisation layer does to one vector.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.errors import InputError
from core.models import GPT2_FAMILY, LoadedModel
from core.trace import Trace


@dataclass(frozen=True)
class ResidualStats:
    """Per layer and token: how big the vector is and how much each block turns it."""

    norms: np.ndarray  # [L+1, T] ‖residual‖ after each block (row 0: the block input)
    cos_prev: np.ndarray  # [L, T] cosine(residual after block ℓ, residual before it)
    attn_norms: np.ndarray  # [L, T] ‖attention contribution‖
    mlp_norms: np.ndarray  # [L, T] ‖MLP contribution‖
    sum_error: float  # max |previous + attention + MLP − next| / max |residual|


def residual_stats(trace: Trace) -> ResidualStats:
    r = trace.residual.astype(np.float64)
    norms = np.linalg.norm(r, axis=-1)
    dots = (r[1:] * r[:-1]).sum(-1)
    cos_prev = dots / np.maximum(norms[1:] * norms[:-1], 1e-12)
    step = r[:-1] + trace.attn_out + trace.mlp_out - r[1:]
    return ResidualStats(
        norms=norms,
        cos_prev=cos_prev,
        attn_norms=np.linalg.norm(trace.attn_out, axis=-1),
        mlp_norms=np.linalg.norm(trace.mlp_out, axis=-1),
        sum_error=float(np.abs(step).max() / max(np.abs(r).max(), 1e-12)),
    )


@dataclass(frozen=True)
class LogitLens:
    """What each layer's residual would predict if the model stopped there, for a token window."""

    positions: np.ndarray  # [P] token positions read
    top_ids: np.ndarray  # [L+1, P, k] most likely next tokens per layer
    top_probs: np.ndarray  # [L+1, P, k]
    target_ids: np.ndarray  # [P] the actual next token (-1 after the last token)
    target_rank: np.ndarray  # [L+1, P] rank of the actual next token (0 = top; -1 where none)
    target_prob: np.ndarray  # [L+1, P] its probability
    final_error: float  # max |last layer's lens probabilities − the model's own| over the window


MAX_LENS_POSITIONS = 64  # (L+1)·P·V logits are computed; more would take seconds on a CPU


def logit_lens(loaded: LoadedModel, trace: Trace, positions, k: int = 3) -> LogitLens:
    """Final norm + unembedding applied to every layer's residual at `positions`."""
    import torch

    from core.lens import final_norm_and_head

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
    targets = np.array([trace.token_ids[p + 1] if p + 1 < T else -1 for p in positions])
    n_layers = trace.residual.shape[0]
    top_ids = np.zeros((n_layers, len(positions), k), dtype=np.int64)
    top_probs = np.zeros((n_layers, len(positions), k), dtype=np.float32)
    rank = np.full((n_layers, len(positions)), -1, dtype=np.int64)
    prob = np.zeros((n_layers, len(positions)), dtype=np.float32)
    has_target = targets >= 0
    target_index = torch.as_tensor(np.where(has_target, targets, 0))
    with torch.inference_mode():
        for layer in range(n_layers):
            x = torch.as_tensor(trace.residual[layer, positions])
            probs = torch.softmax(head(norm(x)).float(), dim=-1)  # [P, V]
            p_top, i_top = probs.topk(k, dim=-1)
            top_ids[layer], top_probs[layer] = i_top.numpy(), p_top.numpy()
            p_target = probs.gather(1, target_index[:, None])[:, 0]
            prob[layer] = np.where(has_target, p_target.numpy(), 0.0)
            ranks = (probs > p_target[:, None]).sum(-1).numpy()
            rank[layer] = np.where(has_target, ranks, -1)
    final_error = float(np.abs(top_probs[-1] - trace.top_probs[positions, :k]).max())
    return LogitLens(positions, top_ids, top_probs, targets, rank, prob, final_error)


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
    formula_error: float  # max |our formula − the module's output|


def norm_effect(loaded: LoadedModel, trace: Trace, layer: int, position: int) -> NormEffect:
    """Apply block `layer`'s pre-attention norm (ln_1 / input_layernorm) to one token's residual."""
    import torch

    if not 0 <= layer < trace.n_layer:
        raise InputError(f"Layer {layer} does not exist: choose 0–{trace.n_layer - 1}.")
    if not 0 <= position < trace.n_tokens:
        raise InputError(f"Token {position} does not exist: choose 0–{trace.n_tokens - 1}.")
    gpt2 = loaded.info.family == GPT2_FAMILY
    block = loaded.model.transformer.h[layer] if gpt2 else loaded.model.model.layers[layer]
    module = block.ln_1 if gpt2 else block.input_layernorm
    x = trace.residual[layer, position].astype(np.float64)
    with torch.inference_mode():
        after = module(torch.as_tensor(trace.residual[layer, position])).numpy().astype(np.float64)
    gain = module.weight.detach().numpy().astype(np.float64)
    bias = None
    if gpt2:
        eps = module.eps
        normalised = (x - x.mean()) / np.sqrt(x.var() + eps)
        bias = module.bias.detach().numpy().astype(np.float64)
        ours = normalised * gain + bias
        kind = "LayerNorm"
    else:
        eps = getattr(module, "variance_epsilon", getattr(module, "eps", 1e-6))
        normalised = x / np.sqrt((x**2).mean() + eps)
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
        formula_error=float(np.abs(ours - after).max()),
    )
