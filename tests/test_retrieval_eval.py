"""Retrieval quality, measured: recall@1/@3 and MRR computed right, temporary collections always
removed, and floors on the manuals corpus (tests/data/manuals) for dense, sparse and hybrid search."""

from __future__ import annotations

import re
from pathlib import Path

import chromadb
import pytest
from chromadb.config import Settings

from core.errors import InputError
from core.retrieval.documents import parse_file
from core.retrieval.evaluation import (
    EvalQuestion,
    EvalResult,
    QuestionOutcome,
    answer_rank,
    evaluate_chunk_sizes,
    load_questions,
)
from core.retrieval.search import Hit
from tests.fixtures_search import minilm  # noqa: F401  (fixture)

MANUALS = Path(__file__).resolve().parent / "data" / "manuals"


def manuals():
    return [parse_file(p.name, p.read_bytes()) for p in sorted(MANUALS.glob("tidelog-*"))]


def client():
    return chromadb.EphemeralClient(settings=Settings(anonymized_telemetry=False))


def hit(rank: int, doc: str, text: str) -> Hit:
    return Hit(rank, f"id{rank}", doc, "h", 0, 0, len(text), text, 0.5, 0.5, 1.0)


def test_metrics_from_known_ranks():
    q = EvalQuestion("q?", "a")
    result = EvalResult("dense", 128, [QuestionOutcome(q, rank, "") for rank in (1, 2, 0, 3, 1)])
    assert result.recall_at_1 == pytest.approx(2 / 5)
    assert result.recall_at_3 == pytest.approx(4 / 5)
    assert result.mrr == pytest.approx((1 + 1 / 2 + 0 + 1 / 3 + 1) / 5)
    assert result.row() == {
        "mode": "dense",
        "chunk tokens": 128,
        "recall@1": 0.4,
        "recall@3": 0.8,
        "MRR": round(result.mrr, 3),
        "questions": 5,
    }


def test_a_hit_counts_only_when_its_chunk_holds_the_answer_passage():
    question = EvalQuestion("How do I fix clock skew?", "chronyc makestep", doc="guide.pdf")
    hits = [
        hit(1, "guide.pdf", "E310 CLOCK_SKEW: the clocks differ."),  # the right section, not the passage
        hit(2, "other.pdf", "run chronyc makestep"),  # the passage, but in another document
        hit(3, "guide.pdf", "for example with chronyc\nmakestep, then"),  # a PDF line break inside it
    ]
    assert answer_rank(hits, question) == 3
    assert answer_rank(hits[:2], question) == 0
    assert answer_rank(hits, EvalQuestion("q", "chronyc makestep")) == 2  # any document


def test_questions_need_a_question_and_an_answer():
    with pytest.raises(
        InputError, match=re.escape("A question is empty; write the question or remove the row.")
    ):
        EvalQuestion(" ", "x")
    with pytest.raises(
        InputError,
        match=re.escape("'Why?' has no answer passage; paste a piece of the text that answers it."),
    ):
        EvalQuestion("Why?", "")


def test_every_answer_passage_is_in_exactly_one_manual():
    questions = load_questions(MANUALS / "questions.json")
    assert len(questions) >= 20
    docs = manuals()
    for q in questions:
        holders = [d.name for d in docs if q.answered_by(d.name, d.text)]
        assert holders == [q.doc], q.question


def test_temporary_collections_are_removed_even_when_cancelled(minilm):  # noqa: F811
    store = client()
    before = {c.name for c in store.list_collections()}
    docs = [parse_file("a.md", b"# Keys\n\nallow_root lets the daemon run as root.")]
    questions = [EvalQuestion("Can it run as root?", "allow_root lets")]

    class Cancelled(Exception):
        pass

    seen: list[str] = []

    def cancel_on_searching(done: int, total: int, text: str) -> None:
        seen.append(text)
        if "question" in text:
            raise Cancelled

    with pytest.raises(Cancelled):
        evaluate_chunk_sizes(store, minilm, docs, questions, [64, 128], on_progress=cancel_on_searching)
    assert {c.name for c in store.list_collections()} == before
    assert seen == ["Indexing chunks of 64 tokens…", "Chunks of 64 tokens: question 1 of 3"]

    steps: list[tuple[int, int, str]] = []
    results = evaluate_chunk_sizes(
        store, minilm, docs, questions, [64, 128], modes=["dense"], on_progress=lambda *a: steps.append(a)
    )
    assert [(r.mode, r.max_tokens, r.recall_at_1) for r in results] == [
        ("dense", 64, 1.0),
        ("dense", 128, 1.0),
    ]
    assert steps[-1] == (2, 2, "Done")
    assert {c.name for c in store.list_collections()} == before


def test_a_mode_the_index_lacks_is_refused(minilm):  # noqa: F811
    docs = [parse_file("a.md", b"# Keys\n\nallow_root lets the daemon run as root.")]
    questions = [EvalQuestion("Can it run as root?", "allow_root lets")]
    message = "This index cannot search in mode 'fuzzy'; it offers dense, sparse, hybrid."
    with pytest.raises(InputError, match=re.escape(message)):
        evaluate_chunk_sizes(client(), minilm, docs, questions, [64], modes=["fuzzy"])


def test_retrieval_floors_on_the_manuals(minilm):  # noqa: F811
    """Hybrid search finds the answering passage first for at least 85% of the questions (and never less
    often than dense alone) and among the first three for at least 95%, at the default chunk size."""
    questions = load_questions(MANUALS / "questions.json")
    results = evaluate_chunk_sizes(client(), minilm, manuals(), questions, [128], overlap_tokens=16)
    by_mode = {r.mode: r for r in results}
    assert set(by_mode) == {"dense", "sparse", "hybrid"}
    hybrid, dense = by_mode["hybrid"], by_mode["dense"]
    assert hybrid.recall_at_1 >= 0.85
    assert hybrid.recall_at_1 >= dense.recall_at_1
    assert hybrid.recall_at_3 >= 0.95
    assert all(r.n == len(questions) for r in results)


def test_the_chunking_lab_measures_the_indexed_documents(tiny_gpt2_dir, tmp_path, monkeypatch):
    from core.retrieval.store import CHROMA_HOST_ENV, CHROMA_PORT_ENV
    from tests.test_pages import app_test, assert_clean
    from ui.search import lab

    monkeypatch.setenv("VECTORLAB_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv(CHROMA_HOST_ENV, raising=False)
    monkeypatch.delenv(CHROMA_PORT_ENV, raising=False)
    at = app_test("pages/7_search.py", str(tiny_gpt2_dir)).run()
    name = "tidelog-configuration.html"
    at.file_uploader(key="search_files").set_value([(name, (MANUALS / name).read_bytes(), "text/html")]).run()
    at.button(key="search_index_go").click().run()
    at.session_state[lab.QUESTIONS] = [
        {"question": "Is buffer_size given in bytes?", "answer passage": "counted in readings, not bytes"},
        {
            "question": "What do environment variables override?",
            "answer passage": "take precedence over values",
        },
    ]
    at.multiselect(key="lab_sizes").set_value([64, 128]).run()
    at.button(key="lab_go").click().run()
    assert_clean(at)
    table = next(df.value for df in at.dataframe if "recall@1" in df.value.columns)
    assert sorted(zip(table["chunk tokens"], table["mode"], strict=True)) == [
        (size, mode) for size in (64, 128) for mode in ("dense", "hybrid", "sparse")
    ]
    assert set(table["questions"]) == {2}
    assert all(0 <= v <= 1 for column in ("recall@1", "recall@3", "MRR") for v in table[column])
    assert (table["recall@3"] >= table["recall@1"]).all()
