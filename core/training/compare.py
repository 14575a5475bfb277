"""Before/after views of a fine-tuned model: next-token distributions with their KL divergence, the
change in every attention head, the logit-lens trajectory through the layers, and weight drift."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from core.errors import InputError, UnsupportedModelError
from core.model.capture import RECORDING
from core.training.parts import layer_groups


@dataclass(frozen=True)
class TokenShift:
    """One candidate next token and its probability before and after fine-tuning."""

    token_id: int
    token: str  # decoded text of the token (may start with a space)
    p_before: float
    p_after: float


@dataclass(frozen=True)
class NextTokenComparison:
    """The next-token distribution for the end of a prompt, before and after training."""

    prompt: str
    p_before: np.ndarray  # [vocab] probabilities from the base model
    p_after: np.ndarray  # [vocab] probabilities from the fine-tuned model
    top: list[TokenShift]  # the union of both models' top-k tokens, most likely after training first
    kl_after_before: float  # KL(after ‖ before) in nats: how surprised the base model is by the new one
    kl_before_after: float  # KL(before ‖ after) in nats (KL is not symmetric)


@dataclass(frozen=True)
class AttentionChange:
    """How much every head's attention pattern moved on one prompt."""

    tokens: list[str]  # the prompt's tokens, decoded one by one
    before: np.ndarray  # [layer, head, query_pos, key_pos] attention weights of the base model
    after: np.ndarray  # [layer, head, query_pos, key_pos] of the fine-tuned model
    mean_abs_delta: np.ndarray  # [layer, head] mean |after - before| over the causal (key ≤ query) cells


@dataclass(frozen=True)
class LogitLens:
    """What each layer's residual stream would predict at one position if decoding stopped there.

    Layer i's hidden state goes through the final norm and the unembedding (GPT-2 `transformer.ln_f`,
    Llama `model.norm`, then `lm_head`); the last entry is the model's real output distribution.
    """

    prompt: str
    position: int  # token position read (negative values count from the end)
    layers: list[str]  # "embeddings", "block 0" … "block L-1"  (n_layer + 1 entries)
    top_token_ids: list[int]  # [n_layer + 1] most likely next token per layer
    top_tokens: list[str]  # the same, decoded
    top_probs: np.ndarray  # [n_layer + 1] probability of that token
    target_token_id: int | None  # token whose probability is tracked (None: none asked for)
    target_token: str | None
    target_probs: np.ndarray | None  # [n_layer + 1] probability of the target token per layer


@dataclass(frozen=True)
class LogitLensComparison:
    before: LogitLens
    after: LogitLens


@dataclass(frozen=True)
class WeightDrift:
    """Relative change of the weights per layer group: ‖W_after − W_before‖ / ‖W_before‖ (Frobenius)."""

    groups: list[str]  # "embeddings", "block 0" … "block L-1", "final norm/head"
    relative: np.ndarray  # [group] ‖ΔW‖/‖W‖ (exactly 0 for a frozen group)
    delta_norm: np.ndarray  # [group] ‖ΔW‖
    base_norm: np.ndarray  # [group] ‖W‖ of the base model


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def _encode(tokenizer: Any, prompt: str) -> torch.Tensor:
    if not prompt or not prompt.strip():
        raise InputError("Type a prompt to compare the models on.")
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=True)["input_ids"]  # [1, T]
    if ids.shape[1] == 0:
        raise InputError("The prompt produced no tokens.")
    return ids


@torch.no_grad()
def _forward(model: Any, ids: torch.Tensor, **kwargs: Any) -> Any:
    was_training = model.training
    model.eval()
    try:
        return model(input_ids=ids.to(_device(model)), **kwargs)
    finally:
        model.train(was_training)


def next_token_probs(model: Any, tokenizer: Any, prompt: str) -> np.ndarray:
    """[vocab] probabilities of the token after `prompt`."""
    logits = _forward(model, _encode(tokenizer, prompt)).logits  # [1, T, vocab]
    return torch.softmax(logits[0, -1].double(), dim=-1).cpu().numpy()


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    mask = p > 0
    return float(np.sum(p[mask] * (np.log(p[mask]) - np.log(np.maximum(q[mask], 1e-300)))))


def compare_next_token(
    before: Any, after: Any, tokenizer: Any, prompt: str, top_k: int = 10
) -> NextTokenComparison:
    """Next-token distributions of the base and the fine-tuned model side by side, with KL both ways."""
    p_before = next_token_probs(before, tokenizer, prompt)
    p_after = next_token_probs(after, tokenizer, prompt)
    ids = set(np.argsort(-p_after)[:top_k].tolist()) | set(np.argsort(-p_before)[:top_k].tolist())
    top = [
        TokenShift(i, tokenizer.decode([i]), float(p_before[i]), float(p_after[i]))
        for i in sorted(ids, key=lambda i: -p_after[i])
    ]
    return NextTokenComparison(
        prompt=prompt,
        p_before=p_before,
        p_after=p_after,
        top=top,
        kl_after_before=_kl(p_after, p_before),
        kl_before_after=_kl(p_before, p_after),
    )


@contextmanager
def _eager_attention(model: Any):
    """Run with eager attention (fused kernels return no weights), restoring the previous choice. The
    trace's recording implementation (core.model.capture) is eager attention already: left alone, so a
    trace running in another thread keeps recording and finds its own implementation to restore."""
    previous = getattr(model.config, "_attn_implementation", None)
    if previous in ("eager", RECORDING):
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def attention_maps(model: Any, tokenizer: Any, prompt: str) -> np.ndarray:
    """[layer, head, query_pos, key_pos] attention weights of `model` on `prompt`."""
    ids = _encode(tokenizer, prompt)
    with _eager_attention(model):
        attentions = _forward(model, ids, output_attentions=True).attentions
    if not attentions:
        raise UnsupportedModelError("This model returned no attention weights, even with eager attention.")
    return torch.stack([a[0].float() for a in attentions]).cpu().numpy()


def attention_change(before: Any, after: Any, tokenizer: Any, prompt: str) -> AttentionChange:
    """Every head's attention before and after, and the mean |ΔA| over its causal cells."""
    a_before = attention_maps(before, tokenizer, prompt)
    a_after = attention_maps(after, tokenizer, prompt)
    T = a_before.shape[-1]
    causal = np.tril(np.ones((T, T), dtype=bool))  # the cells a causal head can use (key ≤ query)
    delta = np.abs(a_after - a_before)[..., causal]  # [layer, head, n_causal]
    ids = _encode(tokenizer, prompt)[0].tolist()
    return AttentionChange(
        tokens=[tokenizer.decode([i]) for i in ids],
        before=a_before,
        after=a_after,
        mean_abs_delta=delta.mean(axis=-1),
    )


def _target_id(tokenizer: Any, target: str | int | None) -> int | None:
    if target is None:
        return None
    if isinstance(target, int):
        return target
    ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    if not ids:
        raise InputError(f"The target {target!r} produced no tokens.")
    return ids[0]  # a multi-token target is tracked by its first token


def _traced(model: Any, tokenizer: Any, prompt: str):
    """One trace of `prompt` through `model` in eval mode with eager attention (its mode restored)."""
    from core.inspection.trace import run_trace
    from core.model.loading import wrap

    _encode(tokenizer, prompt)  # the same messages for an empty prompt as every other view
    was_training = model.training
    try:
        with _eager_attention(model):
            loaded = wrap(model, tokenizer, spec="before/after", name="before/after")
            return loaded, run_trace(loaded, prompt)
    finally:
        model.train(was_training)


def logit_lens(
    model: Any, tokenizer: Any, prompt: str, target: str | int | None = None, position: int = -1
) -> LogitLens:
    """Decode every layer's residual stream at `position` through the final norm and the head.

    The lens of the layers station (`core.inspection.layers.logit_lens`) over a trace of the prompt;
    `target` (text or token id) is tracked across layers; text is reduced to its first token.
    """
    from core.inspection.layers import layer_labels
    from core.inspection.layers import logit_lens as lens_over_trace

    loaded, trace = _traced(model, tokenizer, prompt)
    if not -trace.n_tokens <= position < trace.n_tokens:
        raise InputError(f"position {position} is outside the prompt's {trace.n_tokens} tokens.")
    target_id = _target_id(tokenizer, target)
    if target_id is not None and not 0 <= target_id < trace.last_logits.shape[-1]:
        raise InputError(f"token id {target_id} is outside the vocabulary.")
    lens = lens_over_trace(
        loaded, trace, [position % trace.n_tokens], k=1, targets=[-1 if target_id is None else target_id]
    )
    top_ids = lens.top_ids[:, 0, 0].tolist()  # [L+1]
    return LogitLens(
        prompt=prompt,
        position=position,
        layers=layer_labels(trace.n_layer),
        top_token_ids=top_ids,
        top_tokens=[tokenizer.decode([i]) for i in top_ids],
        top_probs=lens.top_probs[:, 0, 0].astype(np.float64),
        target_token_id=target_id,
        target_token=None if target_id is None else tokenizer.decode([target_id]),
        target_probs=None if target_id is None else lens.target_prob[:, 0].astype(np.float64),
    )


def compare_logit_lens(
    before: Any, after: Any, tokenizer: Any, prompt: str, target: str | int | None = None, position: int = -1
) -> LogitLensComparison:
    """The logit-lens trajectory of the base and the fine-tuned model on the same prompt and target."""
    return LogitLensComparison(
        before=logit_lens(before, tokenizer, prompt, target, position),
        after=logit_lens(after, tokenizer, prompt, target, position),
    )


@torch.no_grad()
def weight_drift(before: Any, after: Any) -> WeightDrift:
    """‖ΔW‖/‖W‖ per layer group between two models of the same architecture."""
    groups = layer_groups(after)
    base = dict(before.named_parameters())
    tuned = dict(after.named_parameters())
    delta_norm, base_norm = [], []
    for names in groups.values():
        d2 = w2 = 0.0
        for name in names:
            if name not in base or base[name].shape != tuned[name].shape:
                raise InputError(f"The two models differ at {name}: compare a model with its own base.")
            w = base[name].detach().double()
            d2 += float((tuned[name].detach().double().to(w.device) - w).square().sum())
            w2 += float(w.square().sum())
        delta_norm.append(d2**0.5)
        base_norm.append(w2**0.5)
    delta, norm = np.array(delta_norm), np.array(base_norm)
    return WeightDrift(
        groups=list(groups),
        relative=np.divide(delta, norm, out=np.zeros_like(delta), where=norm > 0),
        delta_norm=delta,
        base_norm=norm,
    )


@dataclass(frozen=True)
class BeforeAfter:
    """Every before/after view of one prompt, for one base model and one fine-tuned model."""

    prompt: str
    next_token: NextTokenComparison
    attention: AttentionChange
    lens: LogitLensComparison
    drift: WeightDrift


def compare_models(
    base: Any, tuned: Any, tokenizer: Any, prompt: str, target: str | int | None = None
) -> BeforeAfter:
    """All the before/after views of `base` (the model a run started from) and `tuned` (the model it
    produced) on `prompt`. Both are given explicitly: whatever model the app has loaded meanwhile
    (the new checkpoint, say) plays no part. They must share an architecture and `tokenizer`."""
    return BeforeAfter(
        prompt=prompt,
        next_token=compare_next_token(base, tuned, tokenizer, prompt),
        attention=attention_change(base, tuned, tokenizer, prompt),
        lens=compare_logit_lens(base, tuned, tokenizer, prompt, target),
        drift=weight_drift(base, tuned),
    )
