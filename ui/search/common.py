"""What every section of the search page shares: the open store and index (`SearchStore`), the
one-shot message a callback leaves for the next run, and small text helpers."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from core.retrieval.encoders import SentenceEmbedder
from core.retrieval.index import CollectionInfo, DocumentIndex
from core.retrieval.store import StoreLocation
from core.retrieval.uploads import DocumentInfo

ACTION_MESSAGE = "vl_search_action_message"  # (st method name, text) a callback leaves, shown once


@dataclass(frozen=True)
class SearchStore:
    """The store as this run found it; built by `ui.search.store.open_store`, read by every section."""

    location: StoreLocation  # where the chunks live
    client: Any  # the Chroma client for `location`
    embedder: SentenceEmbedder  # MiniLM: embeds chunks and queries
    index: DocumentIndex  # the chosen collection
    collections: list[CollectionInfo]  # every collection on the client
    documents: list[DocumentInfo]  # the complete documents in `index`


def count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def md(text: str) -> str:
    """`text` with Markdown's special characters escaped (file names are user input)."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>$~])", r"\\\1", text)
