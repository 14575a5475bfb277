"""Measuring retrieval: for questions whose answering passage is known (a distinctive piece of its
text), recall@1, recall@3 and mean reciprocal rank of an index, for every search mode it offers and
across chunk sizes (each size indexed into a temporary collection that is removed afterwards)."""

from __future__ import annotations

import inspect
import json
import logging
import tempfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import InputError
from core.retrieval.chunking import ChunkSettings
from core.retrieval.documents import Document
from core.retrieval.encoders import Embedder
from core.retrieval.search import Hit

log = logging.getLogger(__name__)

DEPTH = 10  # hits read per question: a passage found lower than this counts as not found (rank 0)


@dataclass(frozen=True)
class EvalQuestion:
    """A question and the passage that answers it."""

    question: str
    answer: str  # a piece of the answering passage; a hit is right when its chunk holds it
    doc: str = ""  # optionally, the document the passage must come from ("" = any)

    def __post_init__(self) -> None:
        if not self.question.strip():
            raise InputError("A question is empty; write the question or remove the row.")
        if not self.answer.strip():
            raise InputError(
                f"{self.question!r} has no answer passage; paste a piece of the text that answers it."
            )

    def answered_by(self, doc_name: str, text: str) -> bool:
        """Whether a chunk holds the answer (spacing aside: a PDF breaks lines anywhere)."""
        return (not self.doc or doc_name == self.doc) and _squash(self.answer) in _squash(text)


@dataclass(frozen=True)
class QuestionOutcome:
    question: EvalQuestion
    rank: int  # 1-based rank of the first hit holding the answer; 0 = not within DEPTH
    top: str  # where the first hit came from ("document › section"), to see what won instead


@dataclass(frozen=True)
class EvalResult:
    """One mode at one chunk size over all questions."""

    mode: str  # "dense", "sparse" or "hybrid"
    max_tokens: int  # the chunk size the collection was cut with
    outcomes: list[QuestionOutcome]

    @property
    def n(self) -> int:
        return len(self.outcomes)

    def recall_at(self, k: int) -> float:
        """Share of questions whose passage is among the first k hits."""
        return sum(1 for o in self.outcomes if 0 < o.rank <= k) / max(self.n, 1)

    @property
    def recall_at_1(self) -> float:
        return self.recall_at(1)

    @property
    def recall_at_3(self) -> float:
        return self.recall_at(3)

    @property
    def mrr(self) -> float:
        """Mean of 1/rank over the questions (0 for a passage not found within DEPTH)."""
        return sum(1 / o.rank for o in self.outcomes if o.rank) / max(self.n, 1)

    def row(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "chunk tokens": self.max_tokens,
            "recall@1": round(self.recall_at_1, 3),
            "recall@3": round(self.recall_at_3, 3),
            "MRR": round(self.mrr, 3),
            "questions": self.n,
        }


EvalProgress = Callable[[int, int, str], None]  # (steps done, steps in all, what is being done)


def temporary_client() -> Any:
    """An in-memory Chroma client for throw-away collections: nothing reaches the data folder."""
    import chromadb
    from chromadb.config import Settings

    return chromadb.EphemeralClient(settings=Settings(anonymized_telemetry=False))


def load_questions(path: Path) -> list[EvalQuestion]:
    """Questions from a JSON list of {"question", "answer", "doc"} objects."""
    rows = json.loads(Path(path).read_text(encoding="utf-8"))
    return [EvalQuestion(r["question"], r["answer"], r.get("doc", "")) for r in rows]


def search_modes(index: Any) -> tuple[str, ...]:
    """The modes `index.search` offers: those of core.retrieval.fusion when it takes `mode`."""
    if "mode" not in inspect.signature(index.search).parameters:
        return ("dense",)
    from core.retrieval.fusion import SEARCH_MODES

    return tuple(SEARCH_MODES)


def answer_rank(hits: Sequence[Hit], question: EvalQuestion) -> int:
    """1-based rank of the first hit holding the answer; 0 when none does."""
    return next((h.rank for h in hits if question.answered_by(h.doc_name, h.text)), 0)


def evaluate_index(
    index: Any,
    questions: Sequence[EvalQuestion],
    modes: Sequence[str] | None = None,
    on_question: Callable[[], None] | None = None,
) -> list[EvalResult]:
    """Every question against `index` in each mode (all it offers by default)."""
    if not questions:
        raise InputError("Write at least one question with its answer passage first.")
    modes = tuple(modes or search_modes(index))
    offered = search_modes(index)
    if unknown := [m for m in modes if m not in offered]:
        raise InputError(f"This index cannot search in mode {unknown[0]!r}; it offers {', '.join(offered)}.")
    results = []
    for mode in modes:
        outcomes = []
        for question in questions:
            kwargs = {"mode": mode} if offered != ("dense",) else {}
            try:
                hits = index.search(question.question, DEPTH, **kwargs).hits
            except InputError:  # e.g. BM25 finds no shared word: nothing retrieved
                hits = []
            top = hits[0].source if hits and hasattr(hits[0], "source") else ""
            outcomes.append(QuestionOutcome(question, answer_rank(hits, question), top))
            if on_question:
                on_question()
        results.append(EvalResult(mode=mode, max_tokens=index.settings.chunk.max_tokens, outcomes=outcomes))
    return results


def evaluate_chunk_sizes(
    client: Any,
    embedder: Embedder,
    documents: Sequence[Document],
    questions: Sequence[EvalQuestion],
    sizes: Sequence[int],
    overlap_tokens: int = 0,
    modes: Sequence[str] | None = None,
    on_progress: EvalProgress | None = None,
) -> list[EvalResult]:
    """Index `documents` once per chunk size into a temporary collection of `client`, evaluate every
    mode on it, and delete it again (also when stopped half-way, e.g. by Cancel)."""
    from core.retrieval.collections import delete_collection
    from core.retrieval.index import DocumentIndex, IndexSettings

    if not documents:
        raise InputError("Add at least one document to evaluate on.")
    if not sizes:
        raise InputError("Choose at least one chunk size.")
    settings = [
        ChunkSettings(max_tokens=int(s), overlap_tokens=min(overlap_tokens, int(s) // 4)) for s in sizes
    ]
    results: list[EvalResult] = []
    with tempfile.TemporaryDirectory(prefix="vectorlab-eval-") as sparse_dir:
        for i, chunk in enumerate(settings):
            name = f"eval-{chunk.max_tokens}-{uuid.uuid4().hex[:12]}"
            index = DocumentIndex(
                client,
                embedder,
                IndexSettings(collection=name, chunk=chunk),
                recover=False,
                sparse_dir=Path(sparse_dir),
            )
            try:
                results += _evaluate_size(
                    index, documents, questions, modes, _Steps(i, len(settings), on_progress)
                )
            finally:  # not index.delete_collection: that leaves its own collection behind, empty
                delete_collection(client, name, Path(sparse_dir))
        if on_progress:
            on_progress(len(settings), len(settings), "Done")
    log.info("Evaluated %d questions at chunk sizes %s", len(questions), list(sizes))
    return results


@dataclass
class _Steps:
    """Progress within one chunk size, reported as (size index, sizes, what is being done)."""

    size_index: int
    n_sizes: int
    on_progress: EvalProgress | None
    done: int = 0

    def say(self, text: str) -> None:
        if self.on_progress:
            self.on_progress(self.size_index, self.n_sizes, text)


def _evaluate_size(
    index: Any,
    documents: Sequence[Document],
    questions: Sequence[EvalQuestion],
    modes: Sequence[str] | None,
    steps: _Steps,
) -> list[EvalResult]:
    size = index.settings.chunk.max_tokens
    steps.say(f"Indexing chunks of {size} tokens…")
    index.add_documents(documents)
    mode_list = tuple(modes or search_modes(index))
    total = len(mode_list) * len(questions)

    def tick() -> None:
        steps.done += 1
        steps.say(f"Chunks of {size} tokens: question {steps.done} of {total}")

    return evaluate_index(index, questions, mode_list, on_question=tick)


def _squash(text: str) -> str:
    return " ".join(text.split()).casefold()
