"""The chart data of the search station: a collection's chunks (and a query) on a 2-D PCA map.
Large collections are shown as a seeded sample, read once per collection version (`MapCache`):
a version changes whenever chunks are added or deleted. core.views.search draws it."""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from core.errors import InputError
from core.retrieval.collections import ChunkVectors
from core.retrieval.embeddings import Projection2D, pca_2d
from core.retrieval.recovery import is_pending

MODIFIED_KEY = "vl_modified"  # collection metadata: a fresh token written after every add or delete


@dataclass(frozen=True)
class CollectionVersion:
    """Changes whenever a collection's chunks change: its id (a deleted and re-made collection gets a
    new one), its row count and the token `mark_modified` writes after every add or delete."""

    collection_id: str
    count: int
    modified: str


def collection_version(collection: Any) -> CollectionVersion:
    metadata = collection.metadata or {}
    return CollectionVersion(str(collection.id), int(collection.count()), str(metadata.get(MODIFIED_KEY, "")))


def mark_modified(collection: Any) -> None:
    """Give the collection a new version token (called by the index after storing or deleting chunks)."""
    metadata = dict(collection.metadata or {})
    metadata[MODIFIED_KEY] = uuid.uuid4().hex
    collection.modify(metadata=metadata)


@dataclass(frozen=True)
class EmbeddingMap:
    """Chunks (and optionally a query) on a 2-D PCA map of the collection."""

    coords: np.ndarray  # [N, 2], one row per chunk shown
    ids: list[str]  # chunk ids, as in Hit.id
    doc_names: list[str]
    chunk_indices: list[int]
    texts: list[str]
    projection: Projection2D  # fitted on the sampled chunks only
    query: str | None = None
    query_coords: np.ndarray | None = None  # [2]
    n_total: int = 0  # chunks in the collection; more than len(ids) when the map shows a sample
    embeddings: np.ndarray | None = None  # [N, d], the vectors behind coords

    @property
    def sampled(self) -> bool:
        return self.n_total > len(self.ids)

    def describe(self) -> str:
        """'showing 3,000 of 100,000 chunks, sampled' or 'showing all 40 chunks'."""
        if self.sampled:
            return f"showing {len(self.ids):,} of {self.n_total:,} chunks, sampled"
        return f"showing all {self.n_total:,} chunks"


def read_sample(collection: Any, max_points: int, seed: int) -> tuple[ChunkVectors, int]:
    """A seeded random sample of at most `max_points` complete chunks with their vectors, and how many
    complete chunks there are. Only ids and metadata are read for every chunk; vectors and texts
    only for the sample. The sample is listed in its random order (a prefix is a smaller sample)."""
    got = collection.get(include=["metadatas"])
    pending = {m["doc_hash"] for m in got["metadatas"] if is_pending(m)}
    ids = sorted(i for i, m in zip(got["ids"], got["metadatas"], strict=True) if m["doc_hash"] not in pending)
    chosen = ids
    if len(ids) > max_points:
        picks = np.random.default_rng(seed).choice(len(ids), size=max_points, replace=False)
        chosen = [ids[i] for i in picks]
    return _read(collection, chosen), len(ids)


def _read(collection: Any, ids: Sequence[str]) -> ChunkVectors:
    """These chunks with their vectors, in the order of `ids`."""
    if not ids:
        return ChunkVectors([], np.zeros((0, 0), dtype=np.float32), [], [], [])
    got = collection.get(ids=list(ids), include=["embeddings", "metadatas", "documents"])
    where = {cid: i for i, cid in enumerate(got["ids"])}
    rows = [where[cid] for cid in ids if cid in where]
    return ChunkVectors(
        ids=[got["ids"][i] for i in rows],
        embeddings=np.asarray(got["embeddings"], dtype=np.float32)[rows],
        doc_names=[got["metadatas"][i]["doc_name"] for i in rows],
        chunk_indices=[int(got["metadatas"][i]["chunk_index"]) for i in rows],
        texts=[got["documents"][i] for i in rows],
    )


@dataclass(frozen=True)
class SampledMap:
    """What is read once per collection version: the sample and the PCA fitted on it."""

    version: CollectionVersion
    sample: ChunkVectors  # in seeded random order
    n_total: int
    projection: Projection2D


class MapCache:
    """The sampled chunks and their PCA, kept per (collection, max_points, seed) and reused while the
    collection's version is unchanged; thread-safe (one instance serves every browser session)."""

    def __init__(self, max_entries: int = 8) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple, SampledMap] = OrderedDict()
        self._lock = threading.Lock()

    def base(self, collection: Any, max_points: int, seed: int) -> SampledMap:
        version = collection_version(collection)
        key = (version.collection_id, max_points, seed)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.version == version:
                self._entries.move_to_end(key)
                return entry
        entry = _build_base(collection, version, max_points, seed)
        with self._lock:
            self._entries[key] = entry
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return entry


def _build_base(collection: Any, version: CollectionVersion, max_points: int, seed: int) -> SampledMap:
    sample, n_total = read_sample(collection, max_points, seed)
    if not sample.ids:
        raise InputError("Nothing is indexed in this collection yet; upload a document first.")
    return SampledMap(version, sample, n_total, pca_2d(sample.embeddings))


def embedding_map(
    index: Any,
    query: str | None = None,
    max_points: int = 2000,
    always_include: Sequence[str] = (),
    seed: int = 0,
    cache: MapCache | None = None,
    query_embedding: np.ndarray | None = None,
) -> EmbeddingMap:
    """Chunks on a 2-D PCA map, plus where `query` lands on the same map.

    Collections larger than `max_points` are shown as a seeded random sample (charts of more points
    are slow to draw, and reading every vector is slow at scale); chunk ids in `always_include` (e.g.
    the hits) are always shown, in place of the last sampled points. With a `cache`, the sample is
    read once per collection version. `query_embedding` [d] saves encoding the query again."""
    if max_points < 1:
        raise InputError(f"max_points must be at least 1, got {max_points}.")
    if query is not None and not query.strip():
        raise InputError("Type a question or phrase to place on the map.")
    index.require_content()
    base = (cache or MapCache()).base(index.collection, max_points, seed)
    shown = _with_required(index.collection, base.sample, always_include, max_points)
    order = sorted(range(len(shown.ids)), key=lambda i: (shown.doc_names[i], shown.chunk_indices[i]))
    embeddings = shown.embeddings[order]
    query_coords = None
    if query is not None:
        vector = query_embedding if query_embedding is not None else index.embedder.encode([query])[0]
        query_coords = base.projection.project(vector)[0]
    return EmbeddingMap(
        coords=base.projection.project(embeddings),
        ids=[shown.ids[i] for i in order],
        doc_names=[shown.doc_names[i] for i in order],
        chunk_indices=[shown.chunk_indices[i] for i in order],
        texts=[shown.texts[i] for i in order],
        projection=base.projection,
        query=query,
        query_coords=query_coords,
        n_total=base.n_total,
        embeddings=embeddings,
    )


def _with_required(
    collection: Any, sample: ChunkVectors, required: Sequence[str], limit: int
) -> ChunkVectors:
    """The sample with every required chunk in it (read by id), cut back to `limit` rows by dropping
    sampled chunks from the end of the random order."""
    have = set(sample.ids)
    missing = list(dict.fromkeys(cid for cid in required if cid not in have))
    extra = _read(collection, missing) if missing else None
    if extra is None or not extra.ids:
        return sample
    wanted = set(required)
    required_rows = [i for i, cid in enumerate(sample.ids) if cid in wanted]
    optional_rows = [i for i, cid in enumerate(sample.ids) if cid not in wanted]
    room = max(0, limit - len(required_rows) - len(extra.ids))
    keep = sorted(required_rows + optional_rows[:room])  # the sample is in random order: drop its tail
    return replace(
        sample,
        ids=[sample.ids[i] for i in keep] + extra.ids,
        embeddings=np.concatenate([sample.embeddings[keep], extra.embeddings]),
        doc_names=[sample.doc_names[i] for i in keep] + extra.doc_names,
        chunk_indices=[sample.chunk_indices[i] for i in keep] + extra.chunk_indices,
        texts=[sample.texts[i] for i in keep] + extra.texts,
    )
