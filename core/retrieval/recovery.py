"""How a half-stored upload stays unseen and is cleaned up. Chunks are written with `complete: False`
and flipped to `True` last, so readers filter pending chunks out; uploads this process is storing
right now are registered in `IN_FLIGHT`; `remove_incomplete` deletes what a dead process left."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

PENDING = {"complete": False}  # chunks of an upload that has not finished: invisible to every reader
VISIBLE = {"complete": {"$ne": False}}  # finished chunks (and chunks stored before the flag existed)


def is_pending(meta: dict[str, Any] | None) -> bool:
    """True for a chunk of an upload that has not finished (chunks stored before the flag existed
    have no flag and count as complete)."""
    return meta is not None and meta.get("complete") is False


def has_pending(collection: Any, content_hash: str) -> bool:
    """Whether any chunk of this text in `collection` still waits for its upload to finish."""
    where = {"$and": [{"doc_hash": content_hash}, PENDING]}
    return bool(collection.get(where=where, limit=1, include=[])["ids"])


class UploadsInFlight:
    """(collection id, content hash) of every upload this process is storing right now. Opening an
    index removes pending chunks, but never those of a live upload in another thread (another tab)."""

    def __init__(self) -> None:
        self._keys: set[tuple[str, str]] = set()
        self.lock = threading.Lock()  # held by `remove_incomplete` while it deletes

    def claim(self, collection_key: str, content_hash: str) -> bool:
        """Mark this text as being stored; False if another upload already is."""
        with self.lock:
            if (collection_key, content_hash) in self._keys:
                return False
            self._keys.add((collection_key, content_hash))
            return True

    def release(self, collection_key: str, hashes: Iterable[str]) -> None:
        with self.lock:
            for content_hash in hashes:
                self._keys.discard((collection_key, content_hash))

    def count(self, collection_key: str) -> int:
        with self.lock:
            return sum(1 for collection, _ in self._keys if collection == collection_key)

    def holds(self, collection_key: str, content_hash: str) -> bool:
        """Whether the upload is live; call with `lock` held."""
        return (collection_key, content_hash) in self._keys


IN_FLIGHT = UploadsInFlight()


@dataclass(frozen=True)
class IncompleteUpload:
    """A document whose upload stopped before all its chunks were stored (the process was killed, or
    rolling back failed); found and removed when the index is opened."""

    name: str
    content_hash: str
    n_stored: int  # chunks that had been stored
    n_chunks: int  # chunks the whole document has

    def describe(self) -> str:
        return (
            f"Removed an incomplete upload of '{self.name}' ({self.n_stored} of {self.n_chunks} chunks "
            "had been stored when indexing stopped); upload it again to index it."
        )


def remove_incomplete(
    collection: Any, collection_key: str, delete: Callable[[Sequence[str]], None]
) -> list[IncompleteUpload]:
    """Remove the chunks of uploads that never finished (their process died), except uploads this
    process is storing right now; returns what was removed, by name."""
    got = collection.get(where=PENDING, include=["metadatas"])
    first_meta: dict[str, dict[str, Any]] = {}
    for meta in got["metadatas"] or []:
        first_meta.setdefault(meta["doc_hash"], meta)
    removed = []
    for content_hash, meta in first_meta.items():
        with IN_FLIGHT.lock:  # held while deleting, so no upload of this text can start meanwhile
            if IN_FLIGHT.holds(collection_key, content_hash) or not has_pending(collection, content_hash):
                continue  # a live upload, or one that has just finished
            ids = collection.get(where={"doc_hash": content_hash}, include=[])["ids"]
            delete(ids)
        upload = IncompleteUpload(meta["doc_name"], content_hash, len(ids), int(meta["doc_chunks"]))
        log.warning("%s", upload.describe())
        removed.append(upload)
    return sorted(removed, key=lambda u: (u.name, u.content_hash))
