"""Answer attribution: each answer sentence goes to the retrieved chunk it is closest to (MiniLM
cosine against the chunk's sentences), unrelated sentences are "not supported", restatements of the
question are dropped, and the support threshold sits where the measured cosines say it should."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from core.errors import InputError, SettingsError
from core.retrieval.attribution import (
    SUPPORT_THRESHOLD,
    AttributionSettings,
    attribute,
    split_sentences,
)
from core.retrieval.documents import parse_file
from core.retrieval.search import Hit
from core.tolerance import float32_tolerance
from tests.fixtures_search import CORPUS, DATA, minilm  # noqa: F401  (fixtures)

MANUALS = DATA / "manuals"


def make_hit(rank: int, path: Path) -> Hit:
    text = parse_file(path.name, path.read_bytes()).text[:1500]
    return Hit(rank, f"id{rank}", path.name, "hash", 0, 0, len(text), text, cosine=0.5, dot=0.5, l2=1.0)


@pytest.fixture(scope="module")
def sources() -> list[Hit]:
    return [
        make_hit(i, CORPUS / name) for i, name in enumerate(["honeybees.txt", "glaciers.txt", "jazz.txt"], 1)
    ]


def test_split_sentences_cuts_after_stops_and_at_line_breaks():
    text = "One. Two? [2] Three!\nFour [1]\n\n- \nFive"
    assert split_sentences(text) == ["One.", "Two? [2]", "Three!", "Four [1]", "Five"]


def test_a_copied_sentence_goes_to_its_chunk_and_an_unrelated_one_is_unsupported(sources, minilm):  # noqa: F811
    copied = split_sentences(sources[1].text)[2]
    unrelated = "The quarterly earnings call is scheduled for Thursday afternoon."
    result = attribute(f"{copied} [3]\n{unrelated}", "How do glaciers move?", sources, minilm)
    first, second = result.sentences
    assert first.source == 2  # the marker [3] the "model" wrote does not decide it
    assert first.evidence == copied
    assert abs(first.score - 1.0) <= float32_tolerance(1.0, reduction_length=384)
    assert first.scores[1] == max(first.scores)
    assert second.source is None and not second.supported and second.evidence == ""
    assert second.score < SUPPORT_THRESHOLD
    assert result.n_unsupported == 1 and result.dropped == []


def test_a_sentence_that_restates_the_question_is_dropped(sources, minilm):  # noqa: F811
    copied = split_sentences(sources[0].text)[1]
    question = "How do honeybees tell each other where flowers are?"
    result = attribute(
        f"How do honeybees tell each other where flowers are? {copied}", question, sources, minilm
    )
    assert result.dropped == ["How do honeybees tell each other where flowers are?"]
    assert [a.sentence for a in result.sentences] == [copied]
    assert result.sentences[0].source == 1


def test_attribution_needs_sources_and_sane_thresholds(sources, minilm):  # noqa: F811
    with pytest.raises(InputError, match=re.escape("There are no sources to attribute the answer to.")):
        attribute("Anything.", "Why?", [], minilm)
    assert attribute("   ", "Why?", sources, minilm).sentences == []
    with pytest.raises(
        SettingsError, match=re.escape("support_threshold is a cosine, between -1 and 1; got 1.5.")
    ):
        AttributionSettings(support_threshold=1.5)


def test_the_support_threshold_separates_the_measured_cosines(minilm):  # noqa: F811
    """Unsupported: a sentence's best match among documents on other topics. Supported: a manual's
    answering passage against its own document's sentences."""
    docs = {p.name: split_sentences(p.read_text(encoding="utf-8")) for p in sorted(CORPUS.glob("*.txt"))}
    sentences = [s for ss in docs.values() for s in ss]
    owner = np.array([i for i, ss in enumerate(docs.values()) for _ in ss])
    vectors = minilm.encode(sentences)
    cos = vectors @ vectors.T
    other_topics = np.array([cos[i, owner != owner[i]].max() for i in range(len(sentences))])
    assert np.percentile(other_topics, 99) < SUPPORT_THRESHOLD

    questions = json.loads((MANUALS / "questions.json").read_text(encoding="utf-8"))
    manuals = {
        p.name: minilm.encode(split_sentences(parse_file(p.name, p.read_bytes()).text))
        for p in MANUALS.iterdir()
        if p.suffix != ".json"
    }
    answers = minilm.encode([q["answer"] for q in questions])
    own = [float((manuals[q["doc"]] @ a).max()) for q, a in zip(questions, answers, strict=True)]
    assert np.median(own) > SUPPORT_THRESHOLD
