"""Keeping a collection's BM25 index (core.retrieval.sparse) in step with the chunks Chroma holds: the
complete chunks' ids are compared with the saved index, and the difference is fetched and applied."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from core.retrieval.chunking import location_from_metadata, with_heading_path
from core.retrieval.recovery import VISIBLE
from core.retrieval.sparse import SparseIndex, fingerprint, load_cached, save_cached

log = logging.getLogger(__name__)


def keyword_text(text: str, meta: dict[str, Any]) -> str:
    """What BM25 indexes for a stored chunk: its heading path and its text, as the dense encoder sees it
    (`Chunk.embedding_text`), so a question naming a section finds that section's chunks either way."""
    return with_heading_path(location_from_metadata(meta)["heading_path"], text)


def sync_keywords(
    collection: Any, path: Path, name: str, batches: Callable[[Sequence[str]], Iterator[list[str]]]
) -> tuple[SparseIndex, str | None]:
    """The BM25 index of `collection`'s complete chunks, saved at `path`, brought in step first; and
    what had to be done (None when it was up to date). A missing or unreadable file, one left by an
    earlier collection of this name, or one the collection has moved on from (changed by another
    process) is rebuilt: the missing chunks' texts come from Chroma, BM25 is recomputed over all."""
    visible = collection.get(where=VISIBLE, include=[])["ids"]
    collection_key = str(collection.id)
    current = load_cached(path)
    why = None
    if current is None:
        why = "had not been built yet" if not path.exists() else "could not be read"
    elif current.collection_id != collection_key:
        current, why = None, "belonged to an earlier collection of this name"
    elif current.fingerprint == fingerprint(visible):
        return current, None
    if current is None:
        current = SparseIndex([], [], collection_key)
    gone = set(current.ids) - set(visible)
    new = [cid for cid in visible if cid not in current]
    texts: dict[str, str] = {}
    for part in batches(new):
        got = collection.get(ids=part, include=["documents", "metadatas"])
        for cid, text, meta in zip(got["ids"], got["documents"], got["metadatas"], strict=True):
            texts[cid] = keyword_text(text, meta or {})
    updated = current.without_ids(list(gone)).with_chunks(list(texts), list(texts.values()))
    if why is None:
        why = f"was out of date ({len(texts)} chunks added and {len(gone)} removed elsewhere)"
    note = f"The keyword (BM25) index of '{name}' {why}; it was rebuilt from the collection's chunks."
    try:
        save_cached(updated, path)
    except OSError as e:
        note += f" It could not be saved to {path} ({e}), so it is rebuilt again next time."
    log.info("%s", note)
    return updated, note
