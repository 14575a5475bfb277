"""Turning uploads into text and text into chunks: parse .txt/.md/.pdf/.docx/.html or pasted text
(rejecting what cannot be used, with the file named), then split by encoder tokens with overlap.

Uploads are only read from memory; nothing here writes a file, so a hostile name cannot escape the
data directory. Names with path separators are rejected rather than silently shortened. A .docx is a
zip archive: its declared unpacked sizes are checked before anything is unpacked."""

from __future__ import annotations

import codecs
import hashlib
import html
import io
import logging
import re
import unicodedata
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from core.errors import InputError, VectorLabError

log = logging.getLogger(__name__)

SUPPORTED_SUFFIXES = (".txt", ".md", ".markdown", ".pdf", ".docx", ".html", ".htm")
_TEXT_CONTROL_OK = {"\t", "\n", "\r", "\f", "\v"}
# Byte-order marks and their codecs, longest first: UTF-32 LE's mark begins with UTF-16 LE's.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32", "UTF-32"),
    (codecs.BOM_UTF32_BE, "utf-32", "UTF-32"),
    (codecs.BOM_UTF8, "utf-8-sig", "UTF-8"),
    (codecs.BOM_UTF16_LE, "utf-16", "UTF-16"),
    (codecs.BOM_UTF16_BE, "utf-16", "UTF-16"),
)

MAX_UPLOAD_MB = 10  # per file, in MiB; .streamlit/config.toml's server.maxUploadSize must say the same
_MB = 1024 * 1024
_RATIO_FLOOR_BYTES = 4 * _MB  # zip members smaller than this unpacked are never refused for their ratio


@dataclass
class ParseSettings:
    """Limits applied to every upload."""

    max_bytes: int = MAX_UPLOAD_MB * _MB  # larger uploads are rejected, never truncated
    max_chars: int = MAX_UPLOAD_MB * _MB  # text one upload may yield: as much as the largest .txt
    max_unpacked_bytes: int = 4 * MAX_UPLOAD_MB * _MB  # what a .docx (a zip) may unpack to, in all
    max_compression_ratio: float = 100.0  # a zip member of 4 MB or more packed tighter than this is
    # refused unread: Word's XML packs about 10:1, zip bombs about 1000:1
    max_control_ratio: float = 0.05  # a "text" file with more control characters than this is binary

    def __post_init__(self) -> None:
        defaults = {f.name: f.default for f in fields(self)}
        for limit in ("max_bytes", "max_unpacked_bytes"):
            if getattr(self, limit) < 1:
                raise ValueError(
                    f"{limit} must be positive, got {getattr(self, limit)}; "
                    f"the default is {_mb(defaults[limit])}."
                )
        if self.max_chars < 1:
            raise ValueError(
                f"max_chars must be positive, got {self.max_chars}; the default is {defaults['max_chars']:,}."
            )
        if self.max_compression_ratio < 1:
            raise ValueError(
                f"max_compression_ratio must be at least 1, got {self.max_compression_ratio}; try 100."
            )
        if not 0.0 <= self.max_control_ratio <= 1.0:
            raise ValueError(
                f"max_control_ratio must be between 0 and 1, got {self.max_control_ratio}; try 0.05."
            )


@dataclass(frozen=True)
class Document:
    """The plain text of one upload; chunks point into `text` by character offsets."""

    name: str  # the file name as uploaded (a plain name, never a path)
    kind: str  # "txt", "md", "pdf", "docx", "html" or "pasted"
    text: str  # extracted text, newlines normalised to "\n", outer whitespace stripped
    content_hash: str  # sha256 of `text`; the same text uploaded twice has the same hash

    @property
    def n_chars(self) -> int:
        return len(self.text)


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
            f"'{name}' is {_mb(len(data))}; the limit is {_mb(settings.max_bytes)}. "
            "Split it into smaller files."
        )
    if suffix in (".txt", ".md", ".markdown"):
        text, kind = _decode_text(name, data, settings), ("md" if suffix != ".txt" else "txt")
    elif suffix == ".pdf":
        text, kind = _pdf_text(name, data, settings), "pdf"
    elif suffix == ".docx":
        text, kind = _docx_text(name, data, settings), "docx"
    else:
        text, kind = _html_text(name, data), "html"
    text = _normalize(text)
    if not text:
        if kind == "pdf":
            raise InputError(f"'{name}' contains no text to index (a scanned PDF holds only images).")
        if kind in ("txt", "md"):
            raise InputError(f"'{name}' holds only whitespace; there is nothing to index.")
        raise InputError(f"'{name}' contains no text to index.")
    _check_chars(name, len(text), settings)
    return Document(name=name, kind=kind, text=text, content_hash=content_hash(text))


def parse_text(text: str, name: str | None = None, settings: ParseSettings | None = None) -> Document:
    """Wrap pasted text as a Document (named `pasted-<hash8>` unless a name is given)."""
    settings = settings or ParseSettings()
    text = _normalize(text or "")
    if not text:
        raise InputError("The pasted text is empty; paste or type something first.")
    size = len(text.encode("utf-8"))
    if size > settings.max_bytes:
        raise InputError(
            f"The pasted text is {_mb(size)}; the limit is {_mb(settings.max_bytes)}. Paste less at once."
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


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / _MB:,.1f} MB" if n_bytes >= _MB else f"{n_bytes / 1024:,.0f} KB"


def _check_chars(name: str, n_chars: int, settings: ParseSettings) -> None:
    if n_chars > settings.max_chars:
        raise InputError(
            f"'{name}' holds more than {settings.max_chars:,} characters of text, the most one upload may "
            "add; split it into smaller files."
        )


def _normalize(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def _decode_text(name: str, data: bytes, settings: ParseSettings) -> str:
    """UTF-8, or UTF-16/UTF-32 when the file starts with their byte-order mark."""
    codec, label = _encoding(data)
    if codec == "utf-8" and b"\x00" in data:
        raise InputError(f"'{name}' looks like a binary file (it contains NUL bytes), not text.")
    try:
        text = data.decode(codec)
    except UnicodeDecodeError as e:
        raise InputError(
            f"'{name}' is not valid {label} (byte 0x{data[e.start]:02x} at position {e.start}); "
            "save it as UTF-8 and upload it again."
        ) from e
    if "\x00" in text:
        raise InputError(f"'{name}' looks like a binary file (it contains NUL characters), not text.")
    control = sum(1 for ch in text if unicodedata.category(ch) == "Cc" and ch not in _TEXT_CONTROL_OK)
    if text and control / len(text) > settings.max_control_ratio:
        raise InputError(
            f"'{name}' looks like a binary file ({control / len(text):.0%} control characters), not text."
        )
    return text


def _pdf_text(name: str, data: bytes, settings: ParseSettings) -> str:
    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            try:  # many PDFs are "encrypted" with an empty user password and open fine
                opened = bool(reader.decrypt(""))
            except Exception:
                opened = False
            if not opened:
                raise InputError(
                    f"'{name}' is encrypted (password-protected); save an unprotected copy and upload that."
                )
        pages, n_chars = [], 0
        for page in reader.pages:  # stop as soon as the text is too long to be indexed anyway
            pages.append(page.extract_text() or "")
            n_chars += len(pages[-1])
            _check_chars(name, n_chars, settings)
    except InputError:
        raise
    except Exception as e:  # pypdf raises many types for broken files; all mean "cannot read"
        raise InputError(
            f"'{name}' could not be read as a PDF ({_reason(e)}); the file may be damaged."
        ) from e
    return "\n\n".join(page.strip() for page in pages if page.strip())


def _docx_text(name: str, data: bytes, settings: ParseSettings) -> str:
    import docx

    _check_zip(name, data, settings)
    try:
        document = docx.Document(io.BytesIO(data))
    except Exception as e:  # not a zip, or a zip without word/document.xml
        raise InputError(
            f"'{name}' could not be read as a Word .docx file ({_reason(e)}); "
            "old .doc files must be saved as .docx first."
        ) from e
    parts = [p.text for p in document.paragraphs]
    for table in document.tables:
        for row in table.rows:
            parts.append("\t".join(cell.text for cell in row.cells))
    return "\n".join(parts)


def _check_zip(name: str, data: bytes, settings: ParseSettings) -> None:
    """Refuse a zip that would unpack to too much, reading only its directory, never a member.

    The declared sizes bound what `zipfile` will unpack: it stops at a member's declared size (and
    fails its CRC check), so a member that lies about its size cannot unpack to more."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError):
        return  # not a readable zip: python-docx says so in its own words
    total = sum(m.file_size for m in members)
    if total > settings.max_unpacked_bytes:
        raise InputError(
            f"'{name}' would unpack to {_mb(total)} (it is a zip archive of {_mb(len(data))}); "
            f"the limit is {_mb(settings.max_unpacked_bytes)}. It was not unpacked."
        )
    for member in members:
        ratio = member.file_size / max(member.compress_size, 1)
        if member.file_size >= _RATIO_FLOOR_BYTES and ratio > settings.max_compression_ratio:
            raise InputError(
                f"'{name}' holds {_printable(member.filename)!r}, packed {ratio:,.0f}:1 "
                f"({_mb(member.compress_size)} unpacking to {_mb(member.file_size)}); more than "
                f"{settings.max_compression_ratio:,.0f}:1 is refused as a likely zip bomb. "
                "It was not unpacked."
            )


def _printable(text: str) -> str:
    """`text` with control characters written as escapes, safe to show."""
    return "".join(
        ch if unicodedata.category(ch) != "Cc" else ch.encode("unicode_escape").decode() for ch in text
    )


def _encoding(data: bytes) -> tuple[str, str]:
    """(codec, name) from the byte-order mark; UTF-8 without one."""
    return next(((codec, label) for bom, codec, label in _BOMS if data.startswith(bom)), ("utf-8", "UTF-8"))


def _html_text(name: str, data: bytes) -> str:
    from bs4 import BeautifulSoup

    if _encoding(data)[0] == "utf-8" and b"\x00" in data:  # UTF-16/32 text is full of NUL bytes
        raise InputError(f"'{name}' looks like a binary file (it contains NUL bytes), not HTML.")
    soup = BeautifulSoup(data, "html.parser")  # bytes in: bs4 detects the encoding itself (BOMs too)
    for tag in soup(["script", "style", "noscript", "template", "head"]):
        tag.decompose()
    lines = [line.strip() for line in soup.get_text(separator="\n").splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines))


def _reason(error: Exception) -> str:
    message = str(error).strip() or type(error).__name__
    return message if len(message) <= 120 else message[:117] + "..."


# --- chunking -------------------------------------------------------------------------------------


@dataclass
class ChunkSettings:
    """How documents are cut into pieces the encoder embeds one at a time."""

    max_tokens: int = 128  # encoder tokens per chunk incl. [CLS]/[SEP]; MiniLM truncates at 256
    overlap_tokens: int = 16  # tokens a chunk may share with the previous one, so no idea is cut in two

    def __post_init__(self) -> None:
        if not 8 <= self.max_tokens <= 512:
            raise ValueError(f"max_tokens must be between 8 and 512, got {self.max_tokens}; try 128.")
        if not 0 <= self.overlap_tokens < self.max_tokens:
            raise ValueError(
                f"overlap_tokens must be at least 0 and smaller than max_tokens ({self.max_tokens}), "
                f"got {self.overlap_tokens}; try {self.max_tokens // 8}."
            )


@dataclass(frozen=True)
class Chunk:
    """One piece of a document: `document.text[char_start:char_end] == text`."""

    doc_name: str
    doc_hash: str  # Document.content_hash of the source
    index: int  # 0-based position within the document
    char_start: int  # offset of the first character in the document text
    char_end: int  # offset one past the last character
    text: str
    n_tokens: int  # encoder tokens, counting [CLS] and [SEP] as the encoder does


class Chunker:
    """Splits documents on sentence/paragraph boundaries into chunks of at most `max_tokens` tokens.

    Uses `semantic-text-splitter` (Markdown-aware for .md) with the encoder's own tokenizer, so a chunk
    never exceeds what the encoder reads."""

    def __init__(self, tokenizer: Any, settings: ChunkSettings | None = None) -> None:
        """`tokenizer` is a `tokenizers.Tokenizer` with truncation off (see SentenceEmbedder.tokenizer())."""
        try:
            from semantic_text_splitter import MarkdownSplitter, TextSplitter
        except ImportError as e:
            raise VectorLabError(
                "Chunking needs the `semantic-text-splitter` package: pip install semantic-text-splitter"
            ) from e

        self.settings = settings or ChunkSettings()
        self.tokenizer = tokenizer
        # The splitter counts tokens without [CLS]/[SEP]; leave room for them so every chunk fits.
        self.n_special = len(tokenizer.encode("").ids)
        size = self.settings.max_tokens - self.n_special
        overlap = min(self.settings.overlap_tokens, size - 1)
        self._text = TextSplitter.from_huggingface_tokenizer(tokenizer, size, overlap=overlap)
        self._markdown = MarkdownSplitter.from_huggingface_tokenizer(tokenizer, size, overlap=overlap)

    def count_tokens(self, text: str) -> int:
        """Tokens the encoder sees for `text`, including its special tokens."""
        return len(self.tokenizer.encode(text).ids)

    def chunk(self, document: Document) -> list[Chunk]:
        """Cut one document into chunks in reading order."""
        splitter = self._markdown if document.kind == "md" else self._text
        return [
            Chunk(
                doc_name=document.name,
                doc_hash=document.content_hash,
                index=i,
                char_start=start,
                char_end=start + len(piece),
                text=piece,
                n_tokens=self.count_tokens(piece),
            )
            for i, (start, piece) in enumerate(splitter.chunk_indices(document.text))
        ]


@dataclass(frozen=True)
class ChunkPreview:
    """What the upload page shows before indexing: how a document will be cut."""

    doc_name: str
    n_chunks: int
    total_tokens: int
    max_chunk_tokens: int  # the largest chunk's tokens (<= settings.max_tokens)
    chunks: list[Chunk]  # the first `max_rows` chunks
    overlap_chars: list[int]  # per shown chunk: characters shared with the previous chunk (0 for the first)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per shown chunk, ready for a table."""
        return [
            {
                "chunk": c.index,
                "tokens": c.n_tokens,
                "chars": f"{c.char_start}-{c.char_end}",
                "overlap chars": overlap,
                "text": c.text,
            }
            for c, overlap in zip(self.chunks, self.overlap_chars, strict=True)
        ]


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
    )


CHUNK_COLOURS = ("#dbeafe", "#dcfce7")  # alternating shades for neighbouring chunks
OVERLAP_COLOUR = "#fde68a"  # text that belongs to two chunks at once
_BADGE_STYLE = (
    "font-size: 0.7rem; font-weight: 600; color: #1e3a8a; background: #e0e7ff; border-radius: 4px; "
    "padding: 0 4px; margin-right: 2px;"
)


def chunks_html(text: str, chunks: Sequence[Chunk], max_chars: int = 20_000) -> str:
    """The document text with each chunk shaded (alternating colours), text shared by two chunks in
    yellow, and a badge `#i · n tok` where each chunk starts. Everything from the document is escaped.

    Shows the text up to the end of the last given chunk, at most `max_chars` characters."""
    end = min(max((c.char_end for c in chunks), default=0), max_chars)
    starts: dict[int, list[Chunk]] = {}
    for c in chunks:
        if c.char_start < end:
            starts.setdefault(c.char_start, []).append(c)
    points = sorted({0, end} | {min(p, end) for c in chunks for p in (c.char_start, c.char_end)})
    parts = ['<div style="white-space: pre-wrap; line-height: 1.8; font-size: 0.9rem;">']
    for a, b in zip(points, points[1:], strict=False):
        for c in starts.get(a, []):
            parts.append(f'<span style="{_BADGE_STYLE}">#{c.index} · {c.n_tokens} tok</span>')
        covering = [c for c in chunks if c.char_start <= a and b <= c.char_end]
        piece = html.escape(text[a:b])
        if not covering:
            parts.append(piece)
            continue
        colour = OVERLAP_COLOUR if len(covering) > 1 else CHUNK_COLOURS[covering[0].index % 2]
        parts.append(f'<span style="background: {colour};">{piece}</span>')
    if end < max((c.char_end for c in chunks), default=0) or (not chunks and text):
        parts.append(" …")
    parts.append("</div>")
    return "".join(parts)
