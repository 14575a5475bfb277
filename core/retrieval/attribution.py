"""Where each sentence of an answer came from: every answer sentence is matched, by MiniLM cosine, to
the sentences of the retrieved chunks; its source is the chunk holding its closest sentence, and it
is "not supported" when no chunk sentence reaches `AttributionSettings.support_threshold`. Works
whether or not the model wrote [k] markers. Sentences that only restate the question are dropped."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.errors import InputError, SettingsError
from core.retrieval.encoders import Embedder
from core.retrieval.search import Hit

# Both thresholds measured with MiniLM (tests/test_attribution.py re-measures the first). Unsupported:
# a sentence's best cosine against the sentences of documents on other topics (tests/data/corpus) has
# its 99th percentile at 0.53 and its maximum at 0.545. Supported: on tests/data/manuals a question's
# answering passage reaches its own document's sentences at 0.59 (25th percentile) and 0.68 (median).
SUPPORT_THRESHOLD = 0.55
# A question and its answering passage (tests/data/manuals) reach at most 0.76; restating the
# question in other words lands above 0.85.
RESTATE_THRESHOLD = 0.85
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_MARKER = re.compile(r"\s*\[[\d,\s]+\]")
_LEADING_MARKERS = re.compile(r"((?:\[[\d,\s]+\]\s*)+)")


@dataclass(frozen=True)
class AttributionSettings:
    """When an answer sentence counts as supported, and when it only restates the question."""

    support_threshold: float = SUPPORT_THRESHOLD  # least cosine to a source sentence to count as support
    restate_threshold: float = RESTATE_THRESHOLD  # cosine to the question above which a sentence is dropped

    def __post_init__(self) -> None:
        for name in ("support_threshold", "restate_threshold"):
            value = getattr(self, name)
            if not -1.0 <= value <= 1.0:
                raise SettingsError(f"{name} is a cosine, between -1 and 1; got {value}.")


@dataclass(frozen=True)
class Attribution:
    """One answer sentence and the source it is closest to."""

    sentence: str  # as the model wrote it, markers included
    source: int | None  # source number (1-based, as in the prompt) of the closest chunk; None: unsupported
    score: float  # best cosine between the sentence and any sentence of that source (or of any source)
    evidence: str  # the source sentence it is closest to ("" when unsupported)
    scores: tuple[float, ...]  # [n_sources]: best cosine per source

    @property
    def supported(self) -> bool:
        return self.source is not None


@dataclass(frozen=True)
class AttributedAnswer:
    sentences: list[Attribution]  # the kept sentences, in order
    dropped: list[str]  # sentences left out because they only restate the question
    settings: AttributionSettings

    @property
    def n_unsupported(self) -> int:
        return sum(not a.supported for a in self.sentences)


def split_sentences(text: str) -> list[str]:
    """Sentences of `text`: cut after . ! ? followed by white space, and at line breaks."""
    sentences: list[str] = []
    for piece in _SENTENCE_END.split(text):
        piece = piece.strip()
        if not piece.strip("-*\t "):
            continue
        lead = _LEADING_MARKERS.match(piece)
        if sentences and lead:  # "Moons pull tides. [2] Next ..." : the [2] belongs to the sentence before
            sentences[-1] = f"{sentences[-1]} {lead.group(1).strip()}"
            piece = piece[lead.end() :].strip()
        if piece:
            sentences.append(piece)
    return sentences


def _strip_markers(sentence: str) -> str:
    return _MARKER.sub("", sentence).strip()


def attribute(
    answer: str,
    question: str,
    sources: Sequence[Hit],
    embedder: Embedder,
    settings: AttributionSettings | None = None,
) -> AttributedAnswer:
    """Attribute every sentence of `answer` to the source (hit) whose sentences it is closest to."""
    settings = settings or AttributionSettings()
    if not sources:
        raise InputError("There are no sources to attribute the answer to.")
    sentences = split_sentences(answer)
    if not sentences:
        return AttributedAnswer([], [], settings)
    source_sentences: list[str] = []
    owner: list[int] = []  # [M]: source index of each source sentence
    for i, hit in enumerate(sources):
        for s in split_sentences(hit.text) or [hit.text]:
            source_sentences.append(s)
            owner.append(i)
    cleaned = [_strip_markers(s) or s for s in sentences]
    vectors = embedder.encode([*cleaned, question, *source_sentences])  # unit rows [A + 1 + M, d]
    a, q, m = vectors[: len(cleaned)], vectors[len(cleaned)], vectors[len(cleaned) + 1 :]
    to_sources = a @ m.T  # [A, M]
    to_question = a @ q  # [A]
    owners = np.asarray(owner)
    kept: list[Attribution] = []
    dropped: list[str] = []
    for row, sentence in enumerate(sentences):
        per_source = tuple(float(to_sources[row, owners == i].max()) for i in range(len(sources)))
        best = int(np.argmax(to_sources[row]))
        score = float(to_sources[row, best])
        restates = to_question[row] >= settings.restate_threshold and to_question[row] > score
        if restates:
            dropped.append(sentence)
            continue
        supported = score >= settings.support_threshold
        kept.append(
            Attribution(
                sentence=sentence,
                source=owner[best] + 1 if supported else None,
                score=score,
                evidence=source_sentences[best] if supported else "",
                scores=per_source,
            )
        )
    return AttributedAnswer(kept, dropped, settings)
