"""Cutting documents into chunks the encoder reads whole: the settings, the token-counting splitter
(Markdown documents are cut at headings first, then paragraphs, then sentences), each chunk's heading
path and page, the preview the upload page shows, and joining stored chunks back into their document."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from core.errors import SettingsError, VectorLabError
from core.retrieval.documents import Document


@dataclass
class ChunkSettings:
    """How documents are cut into pieces the encoder embeds one at a time."""

    max_tokens: int = 128  # encoder tokens per chunk incl. [CLS]/[SEP]; MiniLM truncates at 256
    overlap_tokens: int = 16  # tokens a chunk may share with the previous one, so no idea is cut in two

    def __post_init__(self) -> None:
        if not 8 <= self.max_tokens <= 512:
            raise SettingsError(f"max_tokens must be between 8 and 512, got {self.max_tokens}; try 128.")
        if not 0 <= self.overlap_tokens < self.max_tokens:
            raise SettingsError(
                f"overlap_tokens must be at least 0 and smaller than max_tokens ({self.max_tokens}), "
                f"got {self.overlap_tokens}; try {self.max_tokens // 8}."
            )


SECTION_SEPARATOR = " › "


def with_heading_path(heading_path: Sequence[str], text: str) -> str:
    """A chunk's text as search reads it (embedded and keyword-indexed): its heading path, a blank line,
    the text; the text alone outside any heading."""
    return f"{SECTION_SEPARATOR.join(heading_path)}\n\n{text}" if heading_path else text


def source_label(doc_name: str, heading_path: Sequence[str] = (), page: int = 0, last_page: int = 0) -> str:
    """ "document › section › subsection › p. 3": where a chunk comes from, as hits and citations show it."""
    parts = [doc_name, *heading_path]
    if page:
        parts.append(f"p. {page}" if last_page in (0, page) else f"pp. {page}–{last_page}")
    return SECTION_SEPARATOR.join(parts)


@dataclass(frozen=True)
class Chunk:
    """One piece of a document: `document.text[char_start:char_end] == text`."""

    doc_name: str
    doc_hash: str  # Document.content_hash of the source
    index: int  # 0-based position within the document
    char_start: int  # offset of the first character in the document text
    char_end: int  # offset one past the last character
    text: str
    n_tokens: int  # encoder tokens of `embedding_text`, counting [CLS] and [SEP] as the encoder does
    heading_path: tuple[str, ...] = ()  # the headings the chunk sits under, outermost first
    page: int = 0  # PDF: the 1-based page the chunk starts on; 0 for documents without pages
    last_page: int = 0  # PDF: the page it ends on

    @property
    def section(self) -> str:
        """The heading path as one line: "Installation › udev rules › plugdev" ("" outside any)."""
        return SECTION_SEPARATOR.join(self.heading_path)

    @property
    def embedding_text(self) -> str:
        """What the encoder embeds: the heading path, a blank line, the chunk's text."""
        return with_heading_path(self.heading_path, self.text)

    @property
    def source(self) -> str:
        """ "document › section › p. 3"."""
        return source_label(self.doc_name, self.heading_path, self.page, self.last_page)


@dataclass(frozen=True)
class Heading:
    """One Markdown heading: where its line starts, its level (1-6) and its plain title."""

    offset: int
    level: int
    title: str


_ATX = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


def markdown_headings(text: str) -> list[Heading]:
    """Every ATX (`## Title`) and setext (`Title` over `===`/`---`) heading outside code fences."""
    headings: list[Heading] = []
    fence: str | None = None
    offset, previous, previous_offset = 0, "", 0  # `previous`: the last line that may be a setext title
    for line in text.split("\n"):
        candidate = ""
        opened = _FENCE.match(line)
        if fence is not None:  # nothing inside a fence is a heading, nor underlines one
            if opened and opened.group(1)[0] == fence[0] and len(opened.group(1)) >= len(fence):
                fence = None
        elif opened:
            fence = opened.group(1)
        elif atx := _ATX.match(line):
            headings.append(Heading(offset, len(atx.group(1)), _plain(atx.group(2))))
        elif (setext := _SETEXT.match(line)) and previous.strip():
            headings.append(Heading(previous_offset, 1 if setext.group(1)[0] == "=" else 2, _plain(previous)))
        else:
            candidate = line
        previous, previous_offset = candidate, offset
        offset += len(line) + 1
    return [h for h in headings if h.title]


def _content_start(text: str, start: int, end: int, heading_starts: set[int]) -> int:
    """Offset of the first non-blank line of text[start:end] that is not a heading (`end` if none)."""
    offset = start
    for line in text[start:end].split("\n"):
        if line.strip() and offset not in heading_starts:
            return offset
        offset += len(line) + 1
    return end


def _only_headings(text: str, start: int, end: int, heading_starts: set[int]) -> bool:
    """Whether every non-blank line of text[start:end] is a heading line."""
    return _content_start(text, start, end, heading_starts) >= end


def _plain(title: str) -> str:
    """A heading's text without inline Markdown marks (`code`, *emphasis*) or extra spacing."""
    return " ".join(re.sub(r"[`*]", "", title).split())


def heading_path_at(headings: Sequence[Heading], offset: int) -> tuple[str, ...]:
    """Titles of the headings in force at `offset` (a heading starting there counts), outermost first."""
    stack: list[Heading] = []
    for heading in headings:
        if heading.offset > offset:
            break
        while stack and stack[-1].level >= heading.level:
            stack.pop()
        stack.append(heading)
    return tuple(h.title for h in stack)


class Chunker:
    """Splits documents into chunks of at most `max_tokens` encoder tokens, heading path included.

    Uses `semantic-text-splitter` with the encoder's own tokenizer, so a chunk never exceeds what the
    encoder reads. Markdown documents (.md, and HTML, .docx and PDF once parsed) are cut at headings
    first, then paragraphs, then sentences; plain text at paragraphs, then sentences. Every chunk of a
    Markdown document carries the headings it sits under, embedded with its text: the splitter leaves
    room for the longest heading path of the document (at most a third of the chunk)."""

    def __init__(self, tokenizer: Any, settings: ChunkSettings | None = None) -> None:
        """`tokenizer` is a `tokenizers.Tokenizer` with truncation off (see SentenceEmbedder.tokenizer())."""
        try:
            import semantic_text_splitter  # noqa: F401
        except ImportError as e:
            raise VectorLabError(
                "Chunking needs the `semantic-text-splitter` package: pip install semantic-text-splitter"
            ) from e

        self.settings = settings or ChunkSettings()
        self.tokenizer = tokenizer
        # The splitter counts tokens without [CLS]/[SEP]; leave room for them so every chunk fits.
        self.n_special = len(tokenizer.encode("").ids)
        self._splitters: dict[tuple[bool, int], Any] = {}

    def count_tokens(self, text: str) -> int:
        """Tokens the encoder sees for `text`, including its special tokens."""
        return len(self.tokenizer.encode(text).ids)

    def _splitter(self, markdown: bool, size: int) -> Any:
        from semantic_text_splitter import MarkdownSplitter, TextSplitter

        key = (markdown, size)
        if key not in self._splitters:
            kind = MarkdownSplitter if markdown else TextSplitter
            overlap = min(self.settings.overlap_tokens, size - 1)
            self._splitters[key] = kind.from_huggingface_tokenizer(self.tokenizer, size, overlap=overlap)
        return self._splitters[key]

    def _path_tokens(self, path: Sequence[str]) -> int:
        """Tokens the heading path adds in front of a chunk's text (no special tokens)."""
        return self.count_tokens(SECTION_SEPARATOR.join(path) + "\n\n") - self.n_special if path else 0

    def chunk(self, document: Document) -> list[Chunk]:
        """Cut one document into chunks in reading order."""
        size = self.settings.max_tokens - self.n_special
        headings = markdown_headings(document.text) if document.is_markdown else []
        paths = {heading_path_at(headings, h.offset) for h in headings}
        reserve = min(max((self._path_tokens(p) for p in paths), default=0), size // 3)
        splitter = self._splitter(document.is_markdown, size - reserve)
        spans = [(start, start + len(piece)) for start, piece in splitter.chunk_indices(document.text)]
        chunks = []
        for i, (start, end) in enumerate(self._headings_with_their_text(document, spans, headings, reserve)):
            chunks.append(self._make_chunk(document, i, start, end, headings, reserve))
        return chunks

    def _headings_with_their_text(
        self, document: Document, spans: list[tuple[int, int]], headings: Sequence[Heading], reserve: int
    ) -> list[tuple[int, int]]:
        """`spans` with every span that holds only headings joined to the span after it (a section too
        long for one chunk is otherwise cut right after its heading), or dropped when the two do not fit
        in one chunk; a document's last span is always kept."""
        heading_starts = {h.offset for h in headings}
        merged: list[tuple[int, int]] = []
        pending: tuple[int, int] | None = None
        for start, end in spans:
            if pending is not None:
                joined = self._make_chunk(document, 0, pending[0], end, headings, reserve)
                if joined.n_tokens <= self.settings.max_tokens:
                    start = pending[0]
                # else the heading line is left out: it fits with none of its text, and the heading
                # path of every chunk after it, embedded with that chunk, names it already
                pending = None
            if _only_headings(document.text, start, end, heading_starts):
                pending = (start, end)
            else:
                merged.append((start, end))
        if pending is not None:
            merged.append(pending)
        return merged

    def _make_chunk(
        self, document: Document, index: int, start: int, end: int, headings: Sequence[Heading], reserve: int
    ) -> Chunk:
        # The headings over the chunk's first line of text: a chunk that opens with "## A" and "### B"
        # belongs to B.
        path = heading_path_at(
            headings, _content_start(document.text, start, end, {h.offset for h in headings})
        )
        while path and self._path_tokens(path) > reserve:  # keep the innermost headings that fit
            path = path[1:]
        chunk = Chunk(
            doc_name=document.name,
            doc_hash=document.content_hash,
            index=index,
            char_start=start,
            char_end=end,
            text=document.text[start:end],
            n_tokens=0,
            heading_path=path,
            page=document.page_at(start),
            last_page=document.page_at(end - 1),
        )
        return replace(chunk, n_tokens=self.count_tokens(chunk.embedding_text))


@dataclass(frozen=True)
class ChunkPreview:
    """What the upload page shows before indexing: how a document will be cut."""

    doc_name: str
    n_chunks: int
    total_tokens: int
    max_chunk_tokens: int  # the largest chunk's tokens (<= settings.max_tokens)
    chunks: list[Chunk]  # the first `max_rows` chunks
    overlap_chars: list[int]  # per shown chunk: characters shared with the previous chunk (0 for the first)
    has_pages: bool = False  # the document has page numbers (a PDF)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per shown chunk, ready for a table."""
        rows = []
        for c, overlap in zip(self.chunks, self.overlap_chars, strict=True):
            row: dict[str, Any] = {"chunk": c.index, "section": c.section}
            if self.has_pages:
                row["page"] = c.page if c.last_page == c.page else f"{c.page}–{c.last_page}"
            row |= {"tokens": c.n_tokens, "chars": f"{c.char_start}-{c.char_end}", "overlap chars": overlap}
            rows.append(row | {"text": c.text})
        return rows


def preview_chunks(document: Document, chunker: Chunker, max_rows: int = 50) -> ChunkPreview:
    """Chunk `document` and summarise the result for display."""
    chunks = chunker.chunk(document)
    pairs = zip(chunks, chunks[1:], strict=False)
    overlaps = [0] + [max(0, prev.char_end - cur.char_start) for prev, cur in pairs]
    return ChunkPreview(
        doc_name=document.name,
        n_chunks=len(chunks),
        total_tokens=sum(c.n_tokens for c in chunks),
        max_chunk_tokens=max((c.n_tokens for c in chunks), default=0),
        chunks=chunks[:max_rows],
        overlap_chars=overlaps[:max_rows],
        has_pages=bool(document.page_starts),
    )


def merge_chunks(chunks: Sequence[Chunk]) -> str:
    """Join chunks of one document back into its text using their character spans.

    Chunks may overlap (ChunkSettings.overlap_tokens); each character is taken once, from the first
    chunk that covers it. Gaps between chunks (whitespace the splitter dropped) become one space.
    """
    text = ""
    end = 0  # character position in the document that `text` has reached
    for chunk in sorted(chunks, key=lambda c: c.char_start):
        if chunk.char_end <= end:
            continue
        if chunk.char_start > end and text:
            text += " "
        skip = max(0, end - chunk.char_start)
        text += chunk.text[skip:]
        end = chunk.char_end
    return text


def location_metadata(chunk: Chunk) -> dict[str, Any]:
    """A chunk's heading path and pages as store metadata (flat strings and ints)."""
    return {"heading_path": chunk.section, "page": chunk.page, "last_page": chunk.last_page}


def location_from_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    """`heading_path`, `page` and `last_page` back from store metadata; chunks stored before headings
    were kept have none."""
    path = str(meta.get("heading_path") or "")
    return {
        "heading_path": tuple(path.split(SECTION_SEPARATOR)) if path else (),
        "page": int(meta.get("page") or 0),
        "last_page": int(meta.get("last_page") or 0),
    }
