"""Original and changed run side by side: the shared base of every "What if?" experiment.

Contract (stable):

    from core.experiments.compare import Intervention, Hook, applied, compare

    steer = Intervention.of("add 4·v at block 3", ("blocks.3.out", "forward", lambda x: x + 4 * v))
    with applied(loaded, steer):          # hooks registered through ModelParts.hook_module,
        loaded.model(input_ids=ids)       # acting only on this thread's calls; always removed
    result = compare(loaded, text, steer, k=10, target_id=None, n_continue=12)

- A hook is (point, kind, fn): point a hook point name of core.model.families ("embed", "pos",
  "blocks.{i}.in|attn|qkv|heads|mlp|out", "final_norm"), kind "forward" (fn sees the output, the first
  element of a tuple output) or "pre" (fn sees the input: "blocks.{i}.in", "blocks.{i}.heads").
  fn(activation [B, T, ...]) returns the replacement tensor, or None for "unchanged".
- `compare` runs the prompt once as it is and once with the intervention, then continues each greedily
  for `n_continue` tokens (the intervention stays applied for the changed continuation; every step
  re-runs the whole sequence, so T grows: a hook that touches given positions must index them itself).
- `Comparison` gives both runs' top-k next tokens, the probability of one target token in each
  (default: the original top-1), KL(original‖changed) in nats over the whole vocabulary, and
  max |Δlogit| of the last position. `Comparison.unchanged_check` is the identity check: the "do
  nothing" version of an experiment must reproduce the original exactly (max |Δlogit| = 0).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from core.errors import InputError, SettingsError
from core.experiments.hooks import FORWARD, PRE, Hook, Intervention, applied, captured
from core.inspection.tokens import readable
from core.inspection.trace import tokenize
from core.model.loading import LoadedModel
from core.tolerance import CheckResult, check_within

__all__ = [
    "FORWARD",
    "PRE",
    "Comparison",
    "Hook",
    "Intervention",
    "RunSide",
    "TokenProb",
    "applied",
    "captured",
    "compare",
    "kl_nats",
    "prompt_ids",
]

log = logging.getLogger(__name__)

MAX_CONTINUE = 64  # longest greedy continuation compare() makes


@dataclass(frozen=True)
class TokenProb:
    """One candidate next token."""

    id: int
    piece: str  # readable text of the token (leading space shown as ␣)
    prob: float  # its probability at the last position


@dataclass(frozen=True)
class RunSide:
    """One of the two runs (original or changed)."""

    top: tuple[TokenProb, ...]  # the k most likely next tokens, most likely first
    target_prob: float  # probability of the chosen target token
    continuation: str  # greedy continuation text
    continuation_ids: tuple[int, ...]
    logits: np.ndarray  # [V] logits of the last prompt position (read-only)


@dataclass(frozen=True)
class Comparison:
    """The same prompt without and with an intervention."""

    label: str  # the intervention's label
    text: str  # the prompt
    pieces: tuple[str, ...]  # the prompt's tokens (readable)
    target: TokenProb  # the token whose probability is followed (prob: in the original run)
    original: RunSide
    changed: RunSide
    kl: float  # KL(original ‖ changed) in nats over the whole vocabulary, last position
    max_abs_dlogit: float  # max |changed − original| over the last position's logits

    @property
    def unchanged_check(self) -> CheckResult:
        """The identity check: the changed logits equal the original ones exactly."""
        return check_within(self.changed.logits, self.original.logits, 0.0)


def prompt_ids(loaded: LoadedModel, text: str, extra: int = 0):
    """The prompt's token ids [T] and readable pieces; InputError when it (plus `extra`) is too long."""
    ids, pieces, _offsets, n_total = tokenize(loaded, text)
    limit = loaded.info.max_positions
    if n_total + extra > limit:
        raise InputError(
            f"The prompt is {n_total} tokens long; with {extra} more this model accepts at most {limit}. "
            "Shorten it."
        )
    return ids, tuple(readable(p) for p in pieces)


def kl_nats(logits_p, logits_q) -> float:
    """KL(p‖q) in nats of the distributions softmax(logits_p), softmax(logits_q), computed in float64."""
    import torch

    lp = torch.log_softmax(torch.as_tensor(logits_p, dtype=torch.float64), dim=-1)
    lq = torch.log_softmax(torch.as_tensor(logits_q, dtype=torch.float64), dim=-1)
    return float(max(0.0, (lp.exp() * (lp - lq)).sum().item()))


def _last_logits(loaded: LoadedModel, ids):
    import torch

    device = next(loaded.model.parameters()).device
    out = loaded.model(input_ids=torch.as_tensor(np.asarray(ids), device=device)[None], use_cache=False)
    return out.logits[0, -1].float()


def _side(loaded: LoadedModel, ids, k: int, target_id: int, n_continue: int, logits) -> RunSide:
    import torch

    probs = torch.softmax(logits.double(), dim=-1)
    top_p, top_i = probs.topk(k)
    tok = loaded.tokenizer
    top = tuple(
        TokenProb(int(i), readable(tok.decode([int(i)])), float(p))
        for p, i in zip(top_p.tolist(), top_i.tolist(), strict=True)
    )
    eos = tok.eos_token_id
    seq = list(int(i) for i in ids)
    new: list[int] = []
    step_logits = logits
    for step in range(n_continue):
        token = int(step_logits.argmax())
        new.append(token)
        if token == eos or step + 1 == n_continue:
            break
        seq.append(token)
        step_logits = _last_logits(loaded, seq)
    frozen = logits.detach().cpu().numpy().copy()
    frozen.setflags(write=False)
    return RunSide(
        top=top,
        target_prob=float(probs[target_id]),
        continuation=tok.decode(new),
        continuation_ids=tuple(new),
        logits=frozen,
    )


def compare(
    loaded: LoadedModel,
    text: str,
    intervention: Intervention,
    *,
    k: int = 10,
    target_id: int | None = None,
    n_continue: int = 12,
) -> Comparison:
    """Run `text` as it is and with `intervention` applied; see the module docstring."""
    import torch

    vocab = loaded.model.config.vocab_size
    if not 1 <= k <= vocab:
        raise SettingsError(f"k must be between 1 and {vocab} (try 10).")
    if not 0 <= n_continue <= MAX_CONTINUE:
        raise SettingsError(f"n_continue must be between 0 and {MAX_CONTINUE} (try 12).")
    if target_id is not None and not 0 <= target_id < vocab:
        raise InputError(f"Token id {target_id} is outside the vocabulary (0 to {vocab - 1}).")
    ids, pieces = prompt_ids(loaded, text, n_continue)
    with torch.inference_mode():
        original_logits = _last_logits(loaded, ids)
        target = int(original_logits.argmax()) if target_id is None else int(target_id)
        original = _side(loaded, ids, k, target, n_continue, original_logits)
        with applied(loaded, intervention):
            changed_logits = _last_logits(loaded, ids)
            changed = _side(loaded, ids, k, target, n_continue, changed_logits)
    o, c = original.logits.astype(np.float64), changed.logits.astype(np.float64)
    target_prob = float(torch.softmax(torch.as_tensor(o), dim=-1)[target])
    result = Comparison(
        label=intervention.label,
        text=text,
        pieces=pieces,
        target=TokenProb(target, readable(loaded.tokenizer.decode([target])), target_prob),
        original=original,
        changed=changed,
        kl=kl_nats(o, c),
        max_abs_dlogit=float(np.abs(c - o).max()),
    )
    log.info(
        "compare %r: KL %.4g nats, max |Δlogit| %.3g", intervention.label, result.kl, result.max_abs_dlogit
    )
    return result
