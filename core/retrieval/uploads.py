"""What one upload into the index reports: how far it has got (`IndexProgress`, passed to an
`on_progress` callback after every stored batch, with the time left) and what it did (`IndexReport`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from core.retrieval.documents import FileError


@dataclass(frozen=True)
class DocumentInfo:
    """One indexed document, as listed on the page."""

    name: str
    content_hash: str
    kind: str
    n_chunks: int
    n_chars: int


@dataclass(frozen=True)
class Duplicate:
    """An upload skipped because the same text is already indexed (possibly under another name)."""

    name: str
    existing_name: str


@dataclass(frozen=True)
class IndexReport:
    """What one upload did to the index."""

    added: list[DocumentInfo] = field(default_factory=list)
    duplicates: list[Duplicate] = field(default_factory=list)
    errors: list[FileError] = field(default_factory=list)  # files rejected while parsing
    in_progress: list[str] = field(default_factory=list)  # names skipped: the same text is being
    # indexed by another upload in this process right now (another tab, or one still rolling back)

    @property
    def n_chunks(self) -> int:
        return sum(d.n_chunks for d in self.added)


@dataclass(frozen=True)
class IndexProgress:
    """How far one `add_documents` call has got; passed to `on_progress` after every stored batch."""

    done: int  # chunks stored so far
    total: int  # chunks this call stores
    tokens_done: int  # encoder tokens in the stored chunks
    tokens_total: int  # encoder tokens in all of this call's chunks
    elapsed_s: float  # seconds since the first chunk went to the encoder

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the rate so far, or None before anything is stored. The rate is counted in
        tokens: chunks are sent shortest first, so a rate in chunks would promise too little."""
        if self.done >= self.total:
            return 0.0
        if self.tokens_done == 0 or self.elapsed_s <= 0:
            return None
        return self.elapsed_s * (self.tokens_total - self.tokens_done) / self.tokens_done

    def describe(self) -> str:
        """A progress line: 'Embedded 120 of 3,812 chunks · about 6 min 10 s left'."""
        text = f"Embedded {self.done:,} of {self.total:,} chunks"
        eta = self.eta_s
        if eta is None:
            return text + " · estimating the time left…"
        return text + ("" if self.done >= self.total else f" · about {_duration(eta)} left")


def _duration(seconds: float) -> str:
    whole = max(1, round(seconds))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


ProgressCallback = Callable[[IndexProgress], None]
