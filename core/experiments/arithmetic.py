"""Embedding arithmetic `a − b + c`: on the model's token embedding rows (nearest tokens by cosine over
the whole vocabulary) and on MiniLM sentence vectors (nearest among candidates the user gives), with
an honest verdict: where the expected answer ranks, and whether c alone already finds it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.errors import InputError, SettingsError
from core.retrieval.embeddings import cosines_to_rows, row_norms
from core.tolerance import CheckResult, check_close

MEAN = "mean"  # a word that splits into several tokens is the average of its pieces' rows
FIRST = "first"  # ... or its first piece's row
PIECE_MODES = (MEAN, FIRST)
SLOTS = ("a", "b", "c")


@dataclass(frozen=True)
class WordTokens:
    """One word of the analogy as the model's tokenizer splits it."""

    word: str  # as typed
    token_ids: tuple[int, ...]  # its pieces, in order (with the leading space when asked)
    pieces: tuple[str, ...]  # readable text of each piece
    how: str  # which row stands for it: "its one token", "the mean of its 3 pieces", "its first piece"

    @property
    def splits(self) -> bool:
        return len(self.token_ids) > 1


@dataclass(frozen=True)
class Hit:
    """One candidate near the result vector."""

    index: int  # vocabulary id (tokens) or position in the candidate list (sentences)
    text: str
    cosine: float  # cosine similarity to the query vector


@dataclass(frozen=True)
class ExpectedRank:
    """Where the answer the user expected lands, for `a − b + c` and for c alone (the baseline)."""

    text: str
    index: int | None  # its vocabulary id / candidate position; None when it cannot be ranked
    rank: int | None  # 1 = top hit, among the candidates left after excluding a, b, c
    cosine: float | None
    baseline_rank: int | None  # the same rank when the query is c alone
    note: str  # why it cannot be ranked, or which piece was ranked ("" when nothing to say)

    @property
    def found(self) -> bool:
        return self.rank == 1

    def verdict(self) -> str:
        """One honest sentence on whether the analogy worked."""
        if self.rank is None:
            return f"'{self.text}' cannot be ranked: {self.note}"
        where = f"c alone ranks it #{self.baseline_rank}"
        if self.rank == 1 and self.baseline_rank == 1:
            return (
                f"'{self.text}' is the top hit — but {where} too: the nearest neighbour of c already "
                "finds it, so this says little about a − b (the classic analogy caveat)."
            )
        if self.rank == 1:
            return f"'{self.text}' is the top hit, and {where}: adding a − b moved it to the top."
        moved = "up" if self.rank < self.baseline_rank else "not up"
        return (
            f"The analogy fails here: '{self.text}' is at rank {self.rank} ({where}; a − b moved it {moved})."
        )


@dataclass(frozen=True)
class Analogy:
    """`a − b + c` and the candidates nearest to it."""

    words: tuple[str, str, str]  # a, b, c as typed
    vector: np.ndarray  # [d] float64: the result a − b + c
    hits: tuple[Hit, ...]  # the k nearest candidates by cosine, a, b and c excluded
    baseline: tuple[Hit, ...]  # the k nearest to c alone, the same exclusions
    excluded: tuple[int, ...]  # candidates left out because they are a, b or c
    expected: ExpectedRank | None
    tokens: tuple[WordTokens, WordTokens, WordTokens] | None  # token arithmetic: how each word split


# --------------------------------------------------------------------------- ranking


def cosines(candidates: np.ndarray, norms: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Cosine of every candidate row ([N, d], lengths `norms` [N]) with `query` [d] -> [N] float64."""
    q = np.asarray(query, dtype=np.float64)
    if not np.any(q):
        raise InputError("a − b + c is the zero vector (a and b cancel c): it has no direction to compare.")
    return cosines_to_rows(candidates, norms, q).astype(np.float64)


def _nearest(sims: np.ndarray, excluded: Sequence[int], labels: Sequence[str], k: int) -> tuple[Hit, ...]:
    sims = sims.copy()
    sims[list(excluded)] = -np.inf
    k = min(k, len(sims) - len(set(excluded)))
    if k <= 0:
        return ()
    top = np.argpartition(-sims, k - 1)[:k]
    top = top[np.argsort(-sims[top], kind="stable")]
    return tuple(Hit(int(i), labels[i], float(sims[i])) for i in top)


def rank_of(sims: np.ndarray, index: int, excluded: Sequence[int]) -> int:
    """1 + the number of candidates (excluded ones left out) with a strictly higher cosine."""
    mask = np.ones(len(sims), dtype=bool)
    mask[list(excluded)] = False
    return 1 + int(np.count_nonzero(sims[mask] > sims[index]))


def _expected(
    text: str, index: int | None, note: str, sims: np.ndarray, base: np.ndarray, excluded: Sequence[int]
) -> ExpectedRank:
    if index is None:
        return ExpectedRank(text, None, None, None, None, note)
    if index in set(excluded):
        why = "it is one of a, b, c, which are excluded from the hits (or the answer would be trivial)"
        return ExpectedRank(text, index, None, None, None, why)
    return ExpectedRank(
        text, index, rank_of(sims, index, excluded), float(sims[index]), rank_of(base, index, excluded), note
    )


def _check_k(k: int) -> None:
    if k < 1:
        raise SettingsError(f"Ask for at least one nearest candidate, not {k}.")


# --------------------------------------------------------------------------- token embedding rows


def word_tokens(tokenizer, word: str, strings: Sequence[str], leading_space: bool, mode: str, slot: str):
    """How `word` splits into the model's tokens, and which row stands for it (see PIECE_MODES)."""
    if mode not in PIECE_MODES:
        raise SettingsError(f"Unknown piece mode {mode!r}; use one of {', '.join(PIECE_MODES)}.")
    word = (word or "").strip()
    if not word:
        raise InputError(f"Type a word for {slot}.")
    text = " " + word if leading_space else word
    ids = tuple(int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"])
    if not ids:
        raise InputError(f"'{word}' ({slot}) gives no tokens.")
    if len(ids) == 1:
        how = "its one token"
    elif mode == MEAN:
        how = f"the mean of its {len(ids)} pieces"
    else:
        how = f"its first piece of {len(ids)}"
    return WordTokens(word, ids, tuple(strings[i] for i in ids), how)


def word_row(embeddings: np.ndarray, word: WordTokens, mode: str) -> np.ndarray:
    """The embedding row standing for `word` [d] float64: its token's row, the mean of its pieces'
    rows, or its first piece's row."""
    rows = np.asarray(embeddings[list(word.token_ids)], dtype=np.float64)  # [pieces, d]
    return rows.mean(axis=0) if mode == MEAN else rows[0]


def token_analogy(
    tokenizer,
    strings: Sequence[str],
    norms: np.ndarray,
    embeddings: np.ndarray,
    a: str,
    b: str,
    c: str,
    expected: str = "",
    k: int = 10,
    leading_space: bool = True,
    mode: str = MEAN,
) -> Analogy:
    """`E[a] − E[b] + E[c]` on the token embedding table and its nearest tokens over the whole
    vocabulary, the tokens of a, b and c excluded.

    `embeddings` [V, d] are the raw rows, `norms` [V] their lengths, `strings` [V] their readable text
    (ui.state.vocabulary gives all three). With `leading_space`, each word is tokenized as " word",
    the form it takes inside a sentence.
    """
    _check_k(k)
    words = tuple(
        word_tokens(tokenizer, w, strings, leading_space, mode, slot)
        for w, slot in zip((a, b, c), SLOTS, strict=True)
    )
    ra, rb, rc = (word_row(embeddings, w, mode) for w in words)
    vector = ra - rb + rc  # [d] float64
    excluded = tuple(sorted({i for w in words for i in w.token_ids}))
    sims = cosines(embeddings, norms, vector)
    base = cosines(embeddings, norms, rc)
    found = None
    if expected.strip():
        target = word_tokens(tokenizer, expected, strings, leading_space, mode, "the expected answer")
        note = ""
        if target.splits:
            note = (
                f"'{target.word}' splits into {len(target.token_ids)} tokens "
                f"({' + '.join(target.pieces)}); no single row is that word, so its first piece "
                f"'{target.pieces[0]}' is ranked."
            )
        found = _expected(target.word, target.token_ids[0], note, sims, base, excluded)
    return Analogy(
        words=(words[0].word, words[1].word, words[2].word),
        vector=vector,
        hits=_nearest(sims, excluded, strings, k),
        baseline=_nearest(base, excluded, strings, k),
        excluded=excluded,
        expected=found,
        tokens=words,
    )


def vector_check(model, analogy: Analogy, mode: str) -> CheckResult:
    """Our `a − b + c` (float64, from the cached table) against the same sum of the rows the model's
    own embedding layer returns for those token ids (float32): a few additions apart."""
    import torch

    if analogy.tokens is None:
        raise InputError("Only token arithmetic has embedding rows to check.")
    rows = []
    with torch.inference_mode():
        for word in analogy.tokens:
            ids = torch.as_tensor(word.token_ids)[None]
            own = model.get_input_embeddings()(ids)[0]  # [pieces, d]
            rows.append(own.mean(dim=0) if mode == MEAN else own[0])
        theirs = (rows[0] - rows[1] + rows[2]).double().numpy()
    pieces = max(len(w.token_ids) for w in analogy.tokens)
    reference = np.stack([r.double().numpy() for r in rows])
    return check_close(analogy.vector, theirs, reduction_length=pieces + 2, reference=reference)


# --------------------------------------------------------------------------- sentence vectors


def candidates_from_text(text: str) -> list[str]:
    """One candidate per non-empty line, duplicates dropped (first kept)."""
    seen: dict[str, None] = {}
    for line in (text or "").splitlines():
        line = line.strip()
        if line:
            seen.setdefault(line, None)
    return list(seen)


def sentence_analogy(
    embedder, a: str, b: str, c: str, candidates: Sequence[str], expected: str = "", k: int = 5
) -> Analogy:
    """`v(a) − v(b) + v(c)` on sentence vectors (`embedder.encode`, e.g. MiniLM), ranked by cosine
    among `candidates`; a candidate equal to a, b or c is excluded. An expected answer missing from
    the candidates is added to them, so it can be ranked."""
    _check_k(k)
    words = tuple((w or "").strip() for w in (a, b, c))
    for word, slot in zip(words, SLOTS, strict=True):
        if not word:
            raise InputError(f"Type a word or sentence for {slot}.")
    candidates = [s.strip() for s in candidates if s and s.strip()]
    expected = (expected or "").strip()
    note = ""
    if expected and expected not in candidates:
        candidates.append(expected)
        note = "it was not among the candidates, so it was added to them"
    if not candidates:
        raise InputError("Give at least one candidate (one per line) to rank against a − b + c.")
    vectors = np.asarray(embedder.encode([*words, *candidates]), dtype=np.float64)  # [3 + N, d]
    va, vb, vc = vectors[:3]
    candidate_vectors = vectors[3:]  # [N, d]
    candidate_norms = row_norms(candidate_vectors)
    vector = va - vb + vc
    excluded = tuple(i for i, s in enumerate(candidates) if s in words)
    if len(excluded) == len(candidates):
        raise InputError("Every candidate is a, b or c itself: add candidates that are none of them.")
    sims = cosines(candidate_vectors, candidate_norms, vector)
    base = cosines(candidate_vectors, candidate_norms, vc)
    found = None
    if expected:
        found = _expected(expected, candidates.index(expected), note, sims, base, excluded)
    return Analogy(
        words=words,
        vector=vector,
        hits=_nearest(sims, excluded, candidates, k),
        baseline=_nearest(base, excluded, candidates, k),
        excluded=excluded,
        expected=found,
        tokens=None,
    )
