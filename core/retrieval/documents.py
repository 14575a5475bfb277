"""Turning uploads into `Document`s: check the file name and type, take the text out (core.retrieval.
formats, per kind) within the limits (core.retrieval.limits), or wrap pasted text; a bad file is named
and never stops the others.

Uploads are only read from memory; nothing here writes a file, so a hostile name cannot escape the
data directory. Names with path separators are rejected rather than silently shortened."""

from __future__ import annotations

import bisect
import hashlib
import logging
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field

from core.errors import InputError
from core.retrieval.formats import decode_text, docx_text, html_text, pdf_text
from core.retrieval.limits import ParseSettings, check_chars, mb

log = logging.getLogger(__name__)

SUPPORTED_SUFFIXES = (".txt", ".md", ".markdown", ".pdf", ".docx", ".html", ".htm")
MARKDOWN_KINDS = ("md", "html", "docx", "pdf")  # kinds whose text is Markdown (headings, lists, code)


@dataclass(frozen=True)
class Document:
    """The text of one upload, with its structure; chunks point into `text` by character offsets.

    HTML, .docx and PDF text is Markdown (see core.retrieval.formats): headings, lists and code blocks
    are kept, so chunks can follow sections. A PDF also says where each of its pages begins."""

    name: str  # the file name as uploaded (a plain name, never a path)
    kind: str  # "txt", "md", "pdf", "docx", "html" or "pasted"
    text: str  # extracted text, newlines normalised to "\n", outer whitespace stripped
    content_hash: str  # sha256 of `text`; the same text uploaded twice has the same hash
    page_starts: tuple[int, ...] = ()  # PDF: offset in `text` where each page with text begins
    page_numbers: tuple[int, ...] = ()  # PDF: the 1-based page number of each of those pages

    @property
    def n_chars(self) -> int:
        return len(self.text)

    @property
    def is_markdown(self) -> bool:
        """Whether `text` is Markdown whose headings mark its sections."""
        return self.kind in MARKDOWN_KINDS

    def page_at(self, offset: int) -> int:
        """The 1-based page holding character `offset`; 0 for documents without pages."""
        if not self.page_starts:
            return 0
        i = max(0, bisect.bisect_right(self.page_starts, offset) - 1)
        return self.page_numbers[i]


@dataclass(frozen=True)
class FileError:
    """Why one upload was rejected."""

    name: str
    message: str


@dataclass(frozen=True)
class ParseReport:
    """The outcome of parsing many uploads: one bad file loses nothing else."""

    documents: list[Document] = field(default_factory=list)
    errors: list[FileError] = field(default_factory=list)


def content_hash(text: str) -> str:
    """sha256 hex digest of `text` as UTF-8: the dedup key for documents."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def check_file_name(name: str) -> str:
    """Return `name` if it is a plain file name; reject paths, '..' and control characters."""
    if not isinstance(name, str) or not name.strip():
        raise InputError("An upload has no file name; give the file a name and upload it again.")
    if "/" in name or "\\" in name or name.strip() in {".", ".."}:
        raise InputError(
            f"{name!r} is not a plain file name (it contains a path separator or '..'); "
            "upload the file itself under a simple name."
        )
    if any(unicodedata.category(ch) == "Cc" for ch in name):
        raise InputError(f"{name!r} has control characters in its name; rename the file and upload it again.")
    if len(name) > 255:
        raise InputError(f"{name[:40]!r}... has a name longer than 255 characters; rename it.")
    return name


def parse_file(name: str, data: bytes, settings: ParseSettings | None = None) -> Document:
    """Extract the text of one upload, or raise `InputError` naming the file and what to do."""
    settings = settings or ParseSettings()
    name = check_file_name(name)
    suffix = _suffix(name)
    if suffix not in SUPPORTED_SUFFIXES:
        shown = suffix or "no extension"
        raise InputError(
            f"'{name}' has an unsupported type ({shown}); upload one of: {', '.join(SUPPORTED_SUFFIXES)}."
        )
    if len(data) == 0:
        raise InputError(f"'{name}' is empty (0 bytes); there is nothing to index.")
    if len(data) > settings.max_bytes:
        raise InputError(
            f"'{name}' is {mb(len(data))}; the limit is {mb(settings.max_bytes)}. "
            "Split it into smaller files."
        )
    pages: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())
    if suffix in (".txt", ".md", ".markdown"):
        text, kind = decode_text(name, data, settings), ("md" if suffix != ".txt" else "txt")
    elif suffix == ".pdf":
        pdf, kind = pdf_text(name, data, settings), "pdf"
        text, pages = pdf.text, (pdf.page_starts, pdf.page_numbers)  # already normalised and stripped
    elif suffix == ".docx":
        text, kind = docx_text(name, data, settings), "docx"
    else:
        text, kind = html_text(name, data), "html"
    text = _normalize(text)
    if not text:
        if kind == "pdf":
            raise InputError(f"'{name}' contains no text to index (a scanned PDF holds only images).")
        if kind in ("txt", "md"):
            raise InputError(f"'{name}' holds only whitespace; there is nothing to index.")
        raise InputError(f"'{name}' contains no text to index.")
    check_chars(name, len(text), settings)
    return Document(
        name=name,
        kind=kind,
        text=text,
        content_hash=content_hash(text),
        page_starts=pages[0],
        page_numbers=pages[1],
    )


def parse_text(text: str, name: str | None = None, settings: ParseSettings | None = None) -> Document:
    """Wrap pasted text as a Document (named `pasted-<hash8>` unless a name is given)."""
    settings = settings or ParseSettings()
    text = _normalize(text or "")
    if not text:
        raise InputError("The pasted text is empty; paste or type something first.")
    size = len(text.encode("utf-8"))
    if size > settings.max_bytes:
        raise InputError(
            f"The pasted text is {mb(size)}; the limit is {mb(settings.max_bytes)}. Paste less at once."
        )
    digest = content_hash(text)
    name = check_file_name(name) if name else f"pasted-{digest[:8]}"
    return Document(name=name, kind="pasted", text=text, content_hash=digest)


def parse_files(files: Iterable[tuple[str, bytes]], settings: ParseSettings | None = None) -> ParseReport:
    """Parse many (name, bytes) uploads; failures become `FileError`s instead of stopping the batch."""
    report = ParseReport()
    for name, data in files:
        try:
            report.documents.append(parse_file(name, data, settings))
        except InputError as e:
            log.info("Rejected upload %r: %s", name, e)
            report.errors.append(FileError(name=str(name), message=str(e)))
    return report


def _suffix(name: str) -> str:
    dot = name.rfind(".")
    return name[dot:].lower() if dot > 0 else ""


def _normalize(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()
