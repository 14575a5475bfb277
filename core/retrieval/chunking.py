"""Cutting documents into chunks the encoder reads whole: the settings, the token-counting splitter,
the preview the upload page shows, and joining stored chunks back into their document's text."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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
