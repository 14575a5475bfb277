"""Token-by-token generation with a KV cache that records every step's distribution, and the surprisal
(bits per token, perplexity) of a traced text. Shapes: P = prompt tokens, N = new tokens, V = vocabulary.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from core.errors import InputError, SettingsError
from core.inspection.sampling import (
    LN2,
    Entropy,
    SamplingConfig,
    TokenChoice,
    draw_token,
    entropy_of_log,
    reshape_torch,
)
from core.inspection.tokens import readable
from core.inspection.trace import Trace, tokenize
from core.model.loading import LoadedModel

log = logging.getLogger(__name__)

MAX_NEW_TOKENS = 512  # one run of the station generates at most this many tokens


@dataclass(frozen=True)
class GenStep:
    """One generated token and the distribution it was drawn from."""

    step: int  # 0-based index among the generated tokens
    token_id: int
    text: str  # what this token added to the continuation ('' while a multi-byte character is unfinished)
    prob: float  # p(token) under the final distribution it was drawn from (1.0 when greedy)
    prob_model: float  # p(token) under the model's own distribution (temperature 1)
    entropy_before: Entropy  # of the model's own distribution at this step
    entropy_after: Entropy  # of the final distribution (0 when greedy)
    n_kept: int  # tokens that survived top-k / top-p (1 when greedy)
    candidates: tuple[TokenChoice, ...]  # the model's top_n tokens, with every stage's probability


@dataclass(frozen=True)
class GenerationResult:
    """A whole generation: the prompt, every step, and the continuation as text."""

    prompt: str
    prompt_ids: np.ndarray  # [P] int64
    config: SamplingConfig
    steps: tuple[GenStep, ...]  # [N]
    token_ids: np.ndarray  # [N] int64, the generated tokens
    text: str  # the continuation as text (== "".join(step.text for step in steps))
    stopped_at_eos: bool  # True when the last token is an end-of-sequence token
    seconds: float  # wall time of the whole generation, prefill included
    final_probs: np.ndarray | None  # [N, V] float64 final distribution per step; only if asked for

    @property
    def n_new(self) -> int:
        return len(self.steps)

    @property
    def tokens_per_second(self) -> float:
        return self.n_new / self.seconds if self.seconds > 0 else math.inf


@dataclass(frozen=True)
class Surprisal:
    """How surprised the model is by each token of a text, given the tokens before it."""

    token_ids: np.ndarray  # [T-1] int64, tokens 1..T-1 (the first token has no prediction to score)
    pieces: tuple[str, ...]  # [T-1] their text
    positions: np.ndarray  # [T-1] int64, their positions in the text, 1..T-1
    probs: np.ndarray  # [T-1] float64, p(token t | tokens < t)
    bits: np.ndarray  # [T-1] float64, surprisal −log2 p
    mean_bits: float | None  # average surprisal; None when nothing could be scored
    mean_nats: float | None  # the same in nats: the language-modelling loss
    perplexity: float | None  # exp(mean_nats) = 2**mean_bits; None when nothing could be scored
    message: str  # a sentence for the page: what the numbers mean, or why there are none


StepCallback = Callable[[GenStep], None]


def _eos_ids(loaded: LoadedModel) -> set[int]:
    eos = getattr(getattr(loaded.model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = loaded.tokenizer.eos_token_id
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, list | tuple) else [eos])}


class _Pieces:
    """Turns generated ids into the text each one adds, holding back unfinished UTF-8 characters.

    Decoding starts from the last few prompt tokens, so a tokenizer that drops the leading space of
    the first decoded token (SentencePiece) still gives the continuation its space.
    """

    CONTEXT = 4  # prompt tokens decoded in front of the continuation

    def __init__(self, tokenizer, prompt_ids=()) -> None:
        self.tokenizer = tokenizer
        self.context = [int(i) for i in list(prompt_ids)[-self.CONTEXT :]]
        self.prefix = tokenizer.decode(self.context) if self.context else ""
        self.ids: list[int] = []
        self.committed = ""  # continuation text handed out so far

    def text(self) -> str:
        """The whole continuation so far."""
        full = self.tokenizer.decode(self.context + self.ids)
        if full.startswith(self.prefix):
            return full[len(self.prefix) :]
        return self.tokenizer.decode(self.ids)

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        full = self.text()
        if full.endswith("\ufffd"):  # byte-level BPE: this token ends half-way through a character
            return ""
        if not full.startswith(self.committed):  # a tokenizer that rewrites earlier text on decode
            self.committed += (piece := self.tokenizer.decode([token_id]))
            return piece
        piece, self.committed = full[len(self.committed) :], full
        return piece


def _check_length(loaded: LoadedModel, n_prompt: int, max_new_tokens: int) -> None:
    limit = loaded.info.max_positions
    if n_prompt + max_new_tokens > limit:
        raise InputError(
            f"The text has {n_prompt} tokens; with {max_new_tokens} new ones it would pass "
            f"{loaded.info.name}'s limit of {limit} positions. Shorten the text or ask for fewer tokens."
        )


@dataclass(frozen=True)
class _StepNumbers:
    """What one step records, as plain Python numbers (computed on the model's device)."""

    token_id: int
    prob: float  # under the final distribution
    prob_model: float  # under the model's own distribution
    nats_before: float
    nats_after: float
    n_kept: int
    # (ids, p_original, p_tempered, p_final, kept), each a list of top_n entries
    candidates: tuple[list[int], list[float], list[float], list[float], list[bool]]
    final: torch.Tensor | None  # [V] final probabilities; None when greedy (one-hot on token_id)

    def final_probs(self, vocab_size: int) -> np.ndarray:
        if self.final is not None:
            return self.final.cpu().numpy()
        one_hot = np.zeros(vocab_size)
        one_hot[self.token_id] = 1.0
        return one_hot


def _greedy_numbers(logits: torch.Tensor, top_n: int) -> _StepNumbers:
    """Greedy step without building one-hot vectors: the same numbers `reshape` gives for greedy.

    Only whole-row kernels touch the V logits (softmax, log_softmax, topk, one dot product), which
    keeps the per-token cost a small fraction of a forward pass.
    """
    log_p = torch.log_softmax(logits, dim=-1, dtype=torch.float64)  # [V]
    top_lp, top_ids = torch.topk(log_p, min(max(top_n, 2), log_p.numel()))
    best = float(top_lp[0])
    if not math.isfinite(best):
        raise InputError("The model produced NaN or infinite logits; its weights may be broken.")
    token = int(top_ids[0])
    if len(top_lp) > 1 and float(top_lp[1]) == best:  # a tie: take the first maximum, as argmax does
        token = int(torch.argmax(logits))
    top_lp, top_ids = top_lp[:top_n], top_ids[:top_n]
    ids = top_ids.tolist()
    chosen = [i == token for i in ids]
    one_hot = [1.0 if c else 0.0 for c in chosen]
    return _StepNumbers(
        token_id=token,
        prob=1.0,
        prob_model=math.exp(float(log_p[token])),
        nats_before=entropy_of_log(log_p, torch.softmax(logits, dim=-1, dtype=torch.float64)),
        nats_after=0.0,
        n_kept=1,
        candidates=(ids, top_lp.exp().tolist(), one_hot, one_hot, chosen),
        final=None,
    )


def _sampled_numbers(
    logits: torch.Tensor, config: SamplingConfig, generator: torch.Generator | None, top_n: int
) -> _StepNumbers:
    """Reshape (temperature → top-k → top-p) and draw one token with `generator`."""
    r = reshape_torch(logits, config)
    final = r.log_final.exp()  # [V]
    token = draw_token(final, generator)
    top_lp, top_ids = torch.topk(r.log_original, min(top_n, r.log_original.numel()))
    return _StepNumbers(
        token_id=token,
        prob=float(final[token]),
        prob_model=math.exp(float(r.log_original[token])),
        nats_before=entropy_of_log(r.log_original),
        nats_after=entropy_of_log(r.log_final, final),
        n_kept=int(r.kept.sum()),
        candidates=(
            top_ids.tolist(),
            top_lp.exp().tolist(),
            r.log_tempered[top_ids].exp().tolist(),
            final[top_ids].tolist(),
            r.kept[top_ids].tolist(),
        ),
        final=final,
    )


def generate_steps(
    loaded: LoadedModel,
    text: str,
    max_new_tokens: int = 32,
    config: SamplingConfig | None = None,
    on_step: StepCallback | None = None,
    *,
    stop_at_eos: bool = True,
    top_n: int = 10,
    keep_distributions: bool = False,
) -> GenerationResult:
    """Continue `text` (plain continuation, no chat template) one token at a time with a KV cache.

    Every step records the chosen token, its probability, entropy and the model's `top_n` candidates;
    `on_step(step)` is called as each token arrives. Greedy (config.is_greedy) takes the argmax like
    `model.generate(do_sample=False)`; otherwise tokens are drawn with a torch.Generator seeded by
    `config.seed`, so the same seed gives the same tokens. `keep_distributions` also keeps the full
    final distribution of every step (N·V floats; for tests and small runs).
    """
    config = config or SamplingConfig()
    if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise SettingsError(f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS} (try 32).")
    if top_n < 1:
        raise SettingsError("top_n must be at least 1 (try 10).")
    ids, _pieces, _offsets, _n = tokenize(loaded, text)
    _check_length(loaded, len(ids), max_new_tokens)

    from transformers import DynamicCache

    model, tokenizer = loaded.model, loaded.tokenizer
    device = next(model.parameters()).device
    eos_ids = _eos_ids(loaded) if stop_at_eos else set()
    generator = None
    if not config.is_greedy:
        generator = torch.Generator(device=device).manual_seed(config.seed)
    strings: dict[int, str] = {}  # readable text of candidate ids, decoded once each

    def text_of(token_id: int) -> str:
        if token_id not in strings:
            strings[token_id] = readable(tokenizer.decode([token_id]))
        return strings[token_id]

    pieces = _Pieces(tokenizer, ids)
    steps: list[GenStep] = []
    finals: list[np.ndarray] = []
    stopped = False
    start = time.perf_counter()
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        input_ids = torch.as_tensor(ids, device=device)[None]  # [1, P]
        out = model(input_ids=input_ids, cache=cache, use_cache=True, logits_to_keep=1)
        for step in range(max_new_tokens):
            logits = out.logits[0, -1]  # [V]
            if config.is_greedy:
                numbers = _greedy_numbers(logits, top_n)
            else:
                numbers = _sampled_numbers(logits, config, generator, top_n)
            token = numbers.token_id
            record = GenStep(
                step=step,
                token_id=token,
                text=pieces.add(token),
                prob=numbers.prob,
                prob_model=numbers.prob_model,
                entropy_before=Entropy.from_nats(numbers.nats_before),
                entropy_after=Entropy.from_nats(numbers.nats_after),
                n_kept=numbers.n_kept,
                candidates=tuple(
                    TokenChoice(i, text_of(i), po, pt, pf, k)
                    for i, po, pt, pf, k in zip(*numbers.candidates, strict=True)
                ),
            )
            steps.append(record)
            if keep_distributions:
                finals.append(numbers.final_probs(len(logits)))
            if on_step is not None:
                on_step(record)
            if token in eos_ids:
                stopped = True
                break
            if step + 1 < max_new_tokens:
                next_ids = torch.tensor([[token]], device=device)  # [1, 1]
                out = model(input_ids=next_ids, cache=cache, use_cache=True)
    seconds = time.perf_counter() - start

    new_ids = [s.token_id for s in steps]
    full_text = pieces.text()
    handed_out = "".join(s.text for s in steps[:-1])
    if steps and handed_out + steps[-1].text != full_text and full_text.startswith(handed_out):
        # The last token left a character unfinished: give the held-back text to the last step.
        steps[-1] = _with_text(steps[-1], full_text[len(handed_out) :])
    log.info("generated %d tokens in %.2f s (%s)", len(steps), seconds, loaded.info.name)
    return GenerationResult(
        prompt=text,
        prompt_ids=np.asarray(ids, dtype=np.int64),
        config=config,
        steps=tuple(steps),
        token_ids=np.asarray(new_ids, dtype=np.int64),
        text=full_text,
        stopped_at_eos=stopped,
        seconds=seconds,
        final_probs=np.stack(finals) if keep_distributions else None,
    )


def _with_text(step: GenStep, text: str) -> GenStep:
    from dataclasses import replace

    return replace(step, text=text)


def surprisal(trace: Trace) -> Surprisal:
    """Per-token surprisal −log2 p(token t | tokens < t) for t = 1..T-1, its mean, and perplexity.

    A one-token text has nothing to score (the first token is never predicted): instead of raising,
    the result has empty arrays, None for mean and perplexity, and a `message` that says why.
    """
    logprobs = np.asarray(trace.target_logprobs, dtype=np.float64)  # [T-1] natural log
    T = trace.n_tokens
    if len(logprobs) == 0:
        return Surprisal(
            token_ids=np.zeros(0, dtype=np.int64),
            pieces=(),
            positions=np.zeros(0, dtype=np.int64),
            probs=np.zeros(0),
            bits=np.zeros(0),
            mean_bits=None,
            mean_nats=None,
            perplexity=None,
            message=(
                "The text is a single token, so there is no next token to score and perplexity is "
                "undefined. Type at least two tokens."
            ),
        )
    nats = -logprobs
    mean_nats = float(nats.mean())
    perplexity = math.exp(mean_nats)
    return Surprisal(
        token_ids=np.asarray(trace.token_ids[1:], dtype=np.int64),
        pieces=tuple(trace.pieces[1:]),
        positions=np.arange(1, T, dtype=np.int64),
        probs=np.exp(logprobs),
        bits=nats / LN2,
        mean_bits=mean_nats / LN2,
        mean_nats=mean_nats,
        perplexity=perplexity,
        message=(
            f"On average each of the {T - 1} scored tokens cost {mean_nats / LN2:.2f} bits: as hard to "
            f"guess as a fair pick among {perplexity:.1f} tokens (the perplexity)."
        ),
    )
