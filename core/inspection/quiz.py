"""Predict, then reveal: questions about the live model and text, whose options and answers are computed
from the trace (never written down), with the numbers that decide them."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from core.errors import InputError
from core.inspection.attention import HeadPatterns
from core.inspection.layers import LogitLens, ResidualStats
from core.inspection.positions import PositionEffect
from core.inspection.sampling import SamplingConfig, reshape
from core.inspection.tokens import readable
from core.inspection.trace import Trace
from core.retrieval.embeddings import cosine_reduction_length, cosines_to_rows, row_norms
from core.tolerance import float32_tolerance, float64_tolerance

TOP_K_REACHED = 10  # "reaches the top 10": rank 0–9 among the logits
TOP_P_BINS = ((1, 1), (2, 10), (11, 100), (101, 1000), (1001, None))  # n_kept ranges for the top-p question


@dataclass(frozen=True)
class Question:
    """One question: the learner picks an option, then the page reveals `answer` and `evidence`."""

    id: str  # stable name, e.g. "attention.previous_head"; answers are kept under it
    station: int  # the station that asks it
    prompt: str
    options: tuple[str, ...]
    answer: int  # index into options
    explanation: str  # one sentence: why that option, with the deciding numbers
    evidence: tuple[tuple[str, str], ...]  # (what, number) rows behind the answer

    def __post_init__(self) -> None:
        if not 0 <= self.answer < len(self.options):
            raise ValueError(f"answer {self.answer} is not one of the {len(self.options)} options.")
        if len(set(self.options)) != len(self.options):
            raise ValueError(f"options must differ: {self.options}")

    def is_correct(self, choice: str) -> bool:
        return choice == self.options[self.answer]


def _distinct_label(text: str, taken: set[str], token_id: int) -> str:
    """A token's readable text, with its id added when another option reads the same."""
    label = readable(text)
    return label if label not in taken else f"{label} (id {token_id})"


# --------------------------------------------------------------------------- station 1


def focus_token(trace: Trace) -> int:
    """The token a station-1 question is about: the last one that holds two letters or more (a word
    rather than punctuation), else the last token."""
    for position in range(trace.n_tokens - 1, -1, -1):
        if len(re.findall(r"[^\W\d_]", trace.pieces[position])) >= 2:
            return position
    return trace.n_tokens - 1


def _nearest_candidates(embeddings: np.ndarray, norms: np.ndarray, token_id: int, n: int) -> np.ndarray:
    """Ids (ascending) that hold the `n` other rows of highest float64 cosine to row `token_id`, found with
    one float32 pass over the table instead of a float64 copy of it (`norms`: the rows' lengths).

    Each float32 cosine lies within `tol` of its float64 value, so the n-th largest float32 cosine is at
    most the n-th float64 one + tol, and every row of the float64 top n (ties included) has a float32
    cosine ≥ that n-th float32 value − 2·tol.
    """
    V, d = embeddings.shape
    if n >= V:
        return np.arange(V)
    sims = cosines_to_rows(embeddings, norms, embeddings[token_id])  # [V], float32
    sims[token_id] = -np.inf  # the row itself is no neighbour: it must not take one of the n places
    tol = float32_tolerance(1.0, cosine_reduction_length(d))  # cosines are at most 1 in size
    nth = np.partition(sims, V - n)[V - n]
    return np.flatnonzero(sims >= nth - 2 * tol)


def nearest_neighbour_question(
    trace: Trace, embeddings: np.ndarray, norms: np.ndarray, strings, distractor_ranks=(25, 250, 2500)
) -> Question:
    """Which vocabulary row is the closest (by cosine) to the focus token's row? The options are the
    real nearest neighbour and the rows ranked `distractor_ranks` by the same cosine (`embeddings` [V, d]
    and their lengths `norms` [V], `core.retrieval.embeddings.row_norms`)."""
    position = focus_token(trace)
    token_id = int(trace.token_ids[position])
    V, d = embeddings.shape
    ranks = [0] + [min(r, V - 2) for r in distractor_ranks]
    candidates = _nearest_candidates(embeddings, norms, token_id, max(ranks) + len(ranks))
    rows = embeddings[candidates].astype(np.float64)
    sims = np.full(V, -np.inf)  # [V], float64 cosines of the candidates, -inf elsewhere
    sims[candidates] = cosines_to_rows(rows, row_norms(rows), embeddings[token_id].astype(np.float64))
    sims[token_id] = -np.inf
    order = candidates[np.argsort(-sims[candidates], kind="stable")]  # ties: lower id first
    picked: list[int] = []
    for r in ranks:
        while int(order[r]) in picked:
            r += 1
        picked.append(int(order[r]))
    labels: list[str] = []
    for i in picked:
        labels.append(_distinct_label(strings[i], set(labels), i))
    shown = sorted(range(len(picked)), key=lambda j: labels[j])  # alphabetical: the order gives nothing away
    piece = readable(trace.pieces[position])
    return Question(
        id="tokens.nearest",
        station=1,
        prompt=f"Which of these tokens has the embedding row closest (by cosine) to '{piece}' "
        f"(id {token_id})?",
        options=tuple(labels[j] for j in shown),
        answer=shown.index(0),
        explanation=f"'{labels[0]}' is the nearest of all {V - 1:,} other rows, at cosine "
        f"{sims[picked[0]]:.3f}.",
        evidence=tuple((f"cos('{piece}', '{labels[j]}')", f"{sims[picked[j]]:.4f}") for j in shown),
    )


def largest_norm_question(trace: Trace, n_options: int = 4) -> Question:
    """Which token of the text has the longest embedding row ‖E[id]‖? Options: up to `n_options`
    distinct tokens of the text, always including the longest."""
    norms = np.linalg.norm(trace.token_embeddings.astype(np.float64), axis=-1)  # [T]
    first_of: dict[int, int] = {}
    for position, token_id in enumerate(trace.token_ids.tolist()):
        first_of.setdefault(token_id, position)
    candidates = list(first_of.values())  # one position per distinct token
    if len(candidates) < 2:
        raise InputError("This question needs a text with at least two different tokens.")
    best = max(candidates, key=lambda p: (norms[p], -p))
    # The others are spread over the rest, from the shortest up, so they are not all near the top.
    rest = sorted((p for p in candidates if p != best), key=lambda p: (norms[p], p))
    step = max(1, len(rest) // (n_options - 1))
    chosen = [best] + rest[::step][: n_options - 1]
    labels: list[str] = []
    for p in chosen:
        labels.append(_distinct_label(trace.pieces[p], set(labels), int(trace.token_ids[p])))
    shown = sorted(range(len(chosen)), key=lambda j: chosen[j])  # in text order
    return Question(
        id="tokens.largest_norm",
        station=1,
        prompt="Which of these tokens of your text has the longest embedding row, ‖E[id]‖?",
        options=tuple(labels[j] for j in shown),
        answer=shown.index(0),
        explanation=f"'{labels[0]}' has ‖E[id]‖ = {norms[best]:.3f}, the longest of the tokens in the text.",
        evidence=tuple((f"‖E['{labels[j]}']‖", f"{norms[chosen[j]]:.4f}") for j in shown),
    )


# --------------------------------------------------------------------------- station 2


def positions_top_question(effect: PositionEffect) -> Question:
    """Does the top next-token prediction change when the positions are removed?"""
    kept, removed = effect.kept.top[0], effect.removed.top[0]
    changed = kept.token_id != removed.token_id
    options = ("Yes, it changes", "No, it stays the same")
    return Question(
        id="positions.top_changes",
        station=2,
        prompt="Run the text again with its positions removed: does the most likely next token change?",
        options=options,
        answer=0 if changed else 1,
        explanation=(
            f"With positions the top token is '{readable(kept.text)}' ({kept.prob:.1%}); without them it "
            f"is '{readable(removed.text)}' ({removed.prob:.1%}). The distributions are "
            f"{effect.kl_nats:.3g} nats apart (KL)."
        ),
        evidence=(
            ("top token with positions", f"{readable(kept.text)} (id {kept.token_id}, p = {kept.prob:.4f})"),
            (
                "top token without positions",
                f"{readable(removed.text)} (id {removed.token_id}, p = {removed.prob:.4f})",
            ),
            ("KL(with ‖ without)", f"{effect.kl_nats:.4g} nats"),
        ),
    )


# --------------------------------------------------------------------------- station 3


def previous_token_question(patterns: HeadPatterns) -> Question:
    """Which head of one layer puts the most attention on the previous token? The layer asked about is
    the one whose best previous-token head stands out most (largest share)."""
    previous = np.asarray(patterns.previous, dtype=np.float64)  # [L, H]
    layer = int(np.argmax(previous.max(axis=1)))
    row = previous[layer]
    best = int(np.argmax(row))
    return Question(
        id="attention.previous_head",
        station=3,
        prompt=f"Which head in layer {layer} looks most at the previous token (mean attention weight on "
        "the token just before the query)?",
        options=tuple(f"head {h}" for h in range(len(row))),
        answer=best,
        explanation=f"Head {best} puts {row[best]:.1%} of its attention on the previous token, on average "
        "over the query tokens after the first.",
        evidence=tuple((f"layer {layer}, head {h}", f"{row[h]:.4f}") for h in range(len(row))),
    )


def last_token_focus_question(trace: Trace, layer: int | None = None, n_options: int = 4) -> Question:
    """In one layer, averaged over its heads, which token does the last token attend to most?
    Default layer: the last one."""
    if trace.n_tokens < 2:
        raise InputError("This question needs a text of at least two tokens.")
    layer = trace.n_layer - 1 if layer is None else layer
    weights = trace.attention_layers[layer][:, -1, :].astype(np.float64).mean(axis=0)  # [T]
    order = np.argsort(-weights, kind="stable")
    chosen = sorted(int(p) for p in order[:n_options])  # the strongest few, in text order
    labels = tuple(f"{p}: {readable(trace.pieces[p])}" for p in chosen)
    best = int(order[0])
    return Question(
        id="attention.last_focus",
        station=3,
        prompt=f"In layer {layer}, averaged over its {trace.n_head} heads, which token does the last token "
        f"('{readable(trace.pieces[-1])}') attend to most?",
        options=labels,
        answer=chosen.index(best),
        explanation=f"Token {best} ('{readable(trace.pieces[best])}') receives {weights[best]:.1%} of the "
        "last token's attention, averaged over the heads.",
        evidence=tuple((labels[j], f"{weights[p]:.4f}") for j, p in enumerate(chosen)),
    )


# --------------------------------------------------------------------------- station 4


def first_top10_question(lens: LogitLens, layer_names, after: str = "", target: str = "") -> Question:
    """At which depth does the text's real next token first enter the logit lens's top 10? Read at the
    lens's first position (the page asks for the token before the last, whose next token is known);
    `after` and `target` name that token and its real next token in the prompt."""
    if lens.target_ids[0] < 0:
        raise InputError("This question needs a token whose next token is in the text.")
    ranks = lens.target_rank[:, 0]
    inside = np.flatnonzero(ranks < TOP_K_REACHED)
    options = tuple(layer_names) + ("never",)
    answer = int(inside[0]) if len(inside) else len(options) - 1
    where = (
        f"first reaches the top {TOP_K_REACHED} at '{options[answer]}'"
        if len(inside)
        else (f"never reaches the top {TOP_K_REACHED} (best rank {int(ranks.min())})")
    )
    return Question(
        id="layers.first_top10",
        station=4,
        prompt=f"Read through the logit lens after '{readable(after)}', at which depth does the real next "
        f"token '{readable(target)}' first reach the top {TOP_K_REACHED}?"
        if after and target
        else f"Read through the logit lens, at which depth does the real next token first reach the top "
        f"{TOP_K_REACHED}?",
        options=options,
        answer=answer,
        explanation=f"The next token {where}; its rank counts the tokens with a strictly larger logit.",
        evidence=tuple((name, f"rank {int(r)}") for name, r in zip(layer_names, ranks, strict=True)),
    )


def biggest_turn_question(stats: ResidualStats, position: int) -> Question:
    """Which block turns the token's residual vector the most (lowest cosine to its input)?"""
    cos = np.asarray(stats.cos_prev[:, position], dtype=np.float64)  # [L]
    best = int(np.argmin(cos))
    return Question(
        id="layers.biggest_turn",
        station=4,
        prompt="For the last token, which block turns its residual vector the most (lowest cosine between "
        "the vector before and after the block)?",
        options=tuple(f"block {i}" for i in range(len(cos))),
        answer=best,
        explanation=f"Block {best} leaves the vector at cosine {cos[best]:.3f} to where it was; the other "
        "blocks turn it less.",
        evidence=tuple((f"block {i}", f"cos = {c:.4f}") for i, c in enumerate(cos)),
    )


# --------------------------------------------------------------------------- station 5


def temperature_entropy_question(logits, temperature: float = 2.0) -> Question:
    """Will sampling at `temperature` raise or lower the entropy of the next-token distribution?"""
    before = reshape(logits, SamplingConfig()).entropy_before
    after = reshape(logits, SamplingConfig(temperature=temperature)).entropy_tempered
    n = np.asarray(logits).shape[-1]
    # Both entropies are float64 sums over the vocabulary; closer than their rounding counts as equal.
    same = abs(after.nats - before.nats) <= float64_tolerance(max(before.nats, after.nats, 1.0), n)
    options = ("raise it", "lower it", "leave it unchanged")
    answer = 2 if same else (0 if after.nats > before.nats else 1)
    return Question(
        id="output.temperature_entropy",
        station=5,
        prompt=f"Dividing the logits by temperature {temperature:g}: will the entropy of the next-token "
        "distribution go up or down?",
        options=options,
        answer=answer,
        explanation=f"The entropy goes from {before.bits:.3f} bits at temperature 1 to {after.bits:.3f} bits "
        f"at {temperature:g}.",
        evidence=(
            ("entropy at temperature 1", f"{before.bits:.4f} bits"),
            (f"entropy at temperature {temperature:g}", f"{after.bits:.4f} bits"),
        ),
    )


def _bin_label(low: int, high: int | None) -> str:
    if high is None:
        return f"more than {low - 1:,}"
    return str(low) if low == high else f"{low:,}–{high:,}"


def top_p_question(logits, top_p: float = 0.9) -> Question:
    """How many tokens does top-p keep (at temperature 1)? Answered in ranges."""
    dist = reshape(logits, SamplingConfig(top_p=top_p))
    n_kept = dist.n_kept
    options = tuple(_bin_label(low, high) for low, high in TOP_P_BINS)
    answer = next(
        i for i, (low, high) in enumerate(TOP_P_BINS) if n_kept >= low and (high is None or n_kept <= high)
    )
    top_mass = float(np.sort(dist.original)[::-1][0])
    return Question(
        id="output.top_p_kept",
        station=5,
        prompt=f"Top-p = {top_p:g} keeps the most likely tokens until their probability reaches {top_p:g}. "
        "How many tokens survive here?",
        options=options,
        answer=answer,
        explanation=f"{n_kept:,} of the {dist.vocab_size:,} tokens are needed to reach {top_p:g} "
        f"(the most likely one alone holds {top_mass:.1%}).",
        evidence=(
            ("tokens kept", f"{n_kept:,}"),
            ("their probability mass", f"{float(dist.original[dist.kept].sum()):.4f}"),
        ),
    )
