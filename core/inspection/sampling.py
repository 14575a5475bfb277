"""How a next-token distribution is reshaped before a token is drawn: temperature, then top-k, then top-p.

Shapes: V = vocabulary size. All maths runs in float64 log-space on torch, so temperatures from 1e-4 to
100 (and beyond) never overflow into NaN; public results are numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from core.errors import InputError, SettingsError

LN2 = math.log(2.0)
# Top-p first looks for its cut among this many of the most likely tokens (×4 until the mass is
# reached), so a peaked distribution never pays for a full-vocabulary sort.
_TOP_P_FIRST_WINDOW = 256


@dataclass(frozen=True)
class SamplingConfig:
    """How to turn the model's logits into the distribution a token is drawn from (HF's order).

    `temperature` 0 (or `greedy`) means greedy decoding: the distribution becomes one-hot on the most
    likely token (the lowest token id on ties), and top-k / top-p have nothing left to cut.
    """

    temperature: float = 1.0  # divides the logits: <1 sharpens, >1 flattens, 0 = greedy (one-hot argmax)
    top_k: int = 0  # keep only the k most likely tokens (ties with the k-th are kept too); 0 = off
    top_p: float = 1.0  # keep the smallest most-likely set with mass ≥ top_p (exact ties at the cut: the
    # higher ids stay, as in HF); 1 = off, 0 = only the top one
    seed: int = 0  # seeds the torch.Generator that draws tokens, so a run can be repeated exactly
    greedy: bool = False  # always take the most likely token (same as temperature 0)

    def __post_init__(self) -> None:
        if not math.isfinite(self.temperature):
            raise SettingsError("temperature must be a finite number (try 1.0).")
        if self.temperature < 0:
            raise SettingsError(
                "temperature must be 0 or more (0 = always pick the most likely token; try 1.0)."
            )
        if self.top_k < 0:
            raise SettingsError("top_k must be 0 (off) or a positive number of tokens to keep (try 50).")
        if not 0.0 <= self.top_p <= 1.0:  # also rejects NaN
            raise SettingsError("top_p must be between 0 and 1 (1 = off; try 0.9).")
        if self.seed < 0:
            raise SettingsError("seed must be a whole number, 0 or more (try 0).")

    @property
    def is_greedy(self) -> bool:
        """True when no randomness is involved: the most likely token is always taken."""
        return self.greedy or self.temperature == 0


@dataclass(frozen=True)
class Entropy:
    """Shannon entropy of one distribution, in both units: bits = nats / ln 2."""

    nats: float
    bits: float

    @classmethod
    def from_nats(cls, nats: float) -> Entropy:
        return cls(nats=nats, bits=nats / LN2)


@dataclass(frozen=True)
class Distribution:
    """One next-token distribution at every stage of reshaping. Arrays are float64 numpy, [V]."""

    config: SamplingConfig
    original: np.ndarray  # [V] softmax(logits): the model's own distribution (temperature 1)
    tempered: np.ndarray  # [V] softmax(logits / T); one-hot on the argmax when greedy
    kept: np.ndarray  # [V] bool: survived top-k, then top-p (all True when both are off)
    final: np.ndarray  # [V] tempered, zero outside `kept`, renormalised: what the token is drawn from
    entropy_before: Entropy  # of `original`
    entropy_tempered: Entropy  # of `tempered`
    entropy_after: Entropy  # of `final`

    @property
    def vocab_size(self) -> int:
        return len(self.original)

    @property
    def n_kept(self) -> int:
        """How many tokens can still be drawn (those with non-zero final probability may be fewer)."""
        return int(self.kept.sum())


@dataclass(frozen=True)
class TokenChoice:
    """One candidate token and what reshaping did to its probability (a row of the bar chart)."""

    token_id: int
    text: str  # readable token text ('␣' marks a leading space)
    p_original: float  # model's probability at temperature 1
    p_tempered: float  # after temperature
    p_final: float  # after top-k / top-p and renormalising; 0 when cut
    kept: bool  # survived top-k and top-p


# --------------------------------------------------------------------------- torch core


@dataclass(frozen=True)
class Reshaped:
    """`reshape` on torch, for loops that stay on the model's device. Tensors are float64, [V]."""

    log_original: torch.Tensor  # [V] log softmax(logits)
    log_tempered: torch.Tensor  # [V] log softmax(logits / T); 0 at the argmax and -inf elsewhere if greedy
    kept: torch.Tensor  # [V] bool
    log_final: torch.Tensor  # [V] log of the final distribution (-inf where cut)
    top_id: int | None  # the argmax token when greedy, else None


def _check_logits(logits) -> torch.Tensor:
    """The logits as float64 [V], shifted so the largest is 0; refuses NaN, +inf and all -inf."""
    x = torch.as_tensor(logits).detach()
    if x.ndim != 1 or x.numel() == 0:
        raise ValueError(f"logits must be one non-empty vector [V], got shape {tuple(x.shape)}.")
    x = x.to(torch.float64)
    top = float(x.max())  # one pass: max is NaN if any entry is, +inf if any is, -inf if all are
    if math.isnan(top) or top == math.inf:
        raise InputError("The model produced NaN or infinite logits; its weights may be broken.")
    if top == -math.inf:
        raise InputError("Every logit is -inf: no token is possible.")
    return x - top  # the largest logit is now 0, so x / T cannot overflow for any T > 0


def _exclusive_cumsum(p: torch.Tensor) -> torch.Tensor:
    """Mass strictly before each entry of a sorted probability vector."""
    return torch.cat([p.new_zeros(1), torch.cumsum(p, 0)[:-1]])


def _top_p_keep(log_p: torch.Tensor, kept: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the most likely tokens until their mass reaches top_p (always at least one).

    Hugging Face's TopPLogitsWarper sorts the tokens by ascending probability, removes those whose
    cumulative mass from the bottom is ≤ 1 − top_p, and always keeps the top one. Read from the top,
    that keeps a token when the mass ranked above it is < top_p. Among tokens of exactly equal
    probability its ascending sort leaves the lower ids lower, so the cut removes the lower ids and
    keeps the higher ones; here ties are ranked highest id first to keep the same tokens. (torch's CPU
    sort is stable only up to 16 entries, so for larger vocabularies this is HF's rule with a stable
    sort: the one deterministic reading of it.)
    """
    n_kept = int(kept.sum())
    # Find a threshold below which the cut cannot fall: the k-th largest value once the top k hold
    # mass ≥ top_p. Taking every token ≥ that value keeps ties together.
    threshold = None
    k = _TOP_P_FIRST_WINDOW
    while k < n_kept:
        values = torch.topk(log_p, k).values
        if float(values.exp().sum()) >= top_p:
            threshold = values[-1]
            break
        k *= 4
    candidates = torch.nonzero(kept if threshold is None else log_p >= threshold).squeeze(1)
    candidates = candidates.flip(0)  # descending ids, so that the stable sort ranks ties highest id first
    order = torch.sort(log_p[candidates], descending=True, stable=True).indices
    ranked = candidates[order]
    p_sorted = log_p[ranked].exp()
    keep_sorted = _exclusive_cumsum(p_sorted) < top_p
    keep_sorted[0] = True  # HF's min_tokens_to_keep=1: top_p = 0 keeps exactly the top token
    out = torch.zeros_like(kept)
    out[ranked[keep_sorted]] = True
    return out


def reshape_torch(logits: torch.Tensor, config: SamplingConfig) -> Reshaped:
    """Temperature → top-k → top-p on one logits vector [V], in float64 on the logits' device."""
    x = _check_logits(logits)  # float64, shifted so its maximum is 0
    log_original = torch.log_softmax(x, dim=-1)
    if config.is_greedy:
        top = int(torch.argmax(x))  # first maximum: the lowest id on ties, like HF's greedy search
        one_hot = torch.full_like(x, -math.inf)
        one_hot[top] = 0.0
        kept = torch.zeros_like(x, dtype=torch.bool)
        kept[top] = True
        return Reshaped(log_original, one_hot, kept, one_hot, top)

    # x / 1 == x exactly, so temperature 1 reuses the model's own distribution.
    log_tempered = (
        log_original if config.temperature == 1.0 else torch.log_softmax(x / config.temperature, dim=-1)
    )
    if 0 < config.top_k < x.numel():
        kth = torch.topk(log_tempered, config.top_k).values[-1]
        kept = log_tempered >= kth  # ties with the k-th survive, as in HF's TopKLogitsWarper
        log_final = _renormalise(log_tempered, kept)
    else:  # top-k off, or asks for the whole vocabulary
        kept = torch.ones_like(x, dtype=torch.bool)
        log_final = log_tempered
    if config.top_p < 1.0:
        # HF's top-p sees the distribution renormalised over what top-k kept: that is log_final so far.
        kept = _top_p_keep(log_final, kept, config.top_p)
        log_final = _renormalise(log_tempered, kept)
    return Reshaped(log_original, log_tempered, kept, log_final, None)


def _renormalise(log_p: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """log_p restricted to `kept` and renormalised to sum to 1 (-inf elsewhere)."""
    return torch.log_softmax(log_p.masked_fill(~kept, -math.inf), dim=-1)


def draw_token(probs: torch.Tensor, generator: torch.Generator | None = None) -> int:
    """Draw one token id from probabilities [V] by inverting the cumulative sum at a uniform u in [0, 1).

    A token with probability 0 is never drawn: its cumulative sum equals its predecessor's.
    """
    cumulative = torch.cumsum(probs, dim=0)  # [V], last entry ≈ 1
    u = torch.rand((), generator=generator, device=probs.device, dtype=cumulative.dtype)
    index = int(torch.searchsorted(cumulative, u * cumulative[-1], right=True))
    if index >= len(probs) or float(probs[index]) == 0.0:  # u·total rounded up to the total
        index = int(torch.nonzero(probs).max())
    return index


def entropy_of_log(log_p: torch.Tensor, p: torch.Tensor | None = None) -> float:
    """Entropy in nats of a distribution given as log-probabilities [V] (-inf entries count as 0).

    Pass `p` = exp(log_p) when it is already at hand; the sum is one dot product.
    """
    p = log_p.exp() if p is None else p
    nats = -float(torch.dot(p, log_p))
    if math.isnan(nats):  # 0 · (-inf) where a token is impossible: those terms are 0
        nats = -float(torch.where(p > 0, p * log_p, torch.zeros_like(p)).sum())
    return max(0.0, nats)


# --------------------------------------------------------------------------- public numpy API


def entropy(probs) -> Entropy:
    """Shannon entropy of a probability vector [V] (zeros contribute 0), in nats and bits."""
    p = torch.as_tensor(np.asarray(probs, dtype=np.float64))
    nats = -float(torch.special.xlogy(p, p).sum())
    return Entropy.from_nats(max(0.0, nats))


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu").numpy()


def reshape(logits, config: SamplingConfig | None = None) -> Distribution:
    """Reshape one logits vector [V] (numpy or torch) by `config`: temperature → top-k → top-p.

    Raises ValueError for a wrong shape and InputError for NaN / +inf logits.
    """
    config = config or SamplingConfig()
    # A copy: cached logits are read-only, and torch warns on (and must not write into) those.
    r = reshape_torch(logits.clone() if torch.is_tensor(logits) else torch.tensor(np.asarray(logits)), config)
    # Stages the settings left unchanged are the same tensor: each distinct one is exponentiated once.
    stages: dict[int, tuple[torch.Tensor, Entropy]] = {}

    def stage(log_p: torch.Tensor) -> tuple[torch.Tensor, Entropy]:
        if id(log_p) not in stages:
            p = log_p.exp()
            stages[id(log_p)] = (p, Entropy.from_nats(entropy_of_log(log_p, p)))
        return stages[id(log_p)]

    (original, entropy_before), (tempered, entropy_tempered), (final, entropy_after) = (
        stage(r.log_original),
        stage(r.log_tempered),
        stage(r.log_final),
    )
    return Distribution(
        config=config,
        original=_np(original),
        tempered=_np(tempered),
        kept=_np(r.kept),
        final=_np(final),
        entropy_before=entropy_before,
        entropy_tempered=entropy_tempered,
        entropy_after=entropy_after,
    )


def top_entries(dist: Distribution, strings: list[str], n: int = 15) -> list[TokenChoice]:
    """The n most likely tokens under the model's own distribution, with every stage's probability.

    `strings` is the readable text of every token id (`core.inspection.tokens.vocab_strings`).
    Ties rank the lower id first. Cut-off tokens stay in the list (kept=False) so the chart can grey them out.
    """
    if n < 1:
        raise SettingsError("n must be at least 1 (try 15).")
    n = min(n, dist.vocab_size)
    ids = np.argsort(-dist.original, kind="stable")[:n]
    return [
        TokenChoice(
            token_id=int(i),
            text=strings[i] if i < len(strings) else f"<id {int(i)}>",
            p_original=float(dist.original[i]),
            p_tempered=float(dist.tempered[i]),
            p_final=float(dist.final[i]),
            kept=bool(dist.kept[i]),
        )
        for i in ids
    ]
