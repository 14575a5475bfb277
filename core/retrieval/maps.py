"""The chart data of the search station: a collection's chunks (and a query) on a 2-D PCA map,
sampled when the collection is large. core.views.search draws it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.errors import InputError
from core.retrieval.embeddings import Projection2D, pca_2d
from core.retrieval.index import DocumentIndex


@dataclass(frozen=True)
class EmbeddingMap:
    """Chunks (and optionally a query) on a 2-D PCA map of the collection."""

    coords: np.ndarray  # [N, 2], one row per chunk shown
    ids: list[str]  # chunk ids, as in Hit.id
    doc_names: list[str]
    chunk_indices: list[int]
    texts: list[str]
    projection: Projection2D  # fitted on the chunks only
    query: str | None = None
    query_coords: np.ndarray | None = None  # [2]
    n_total: int = 0  # chunks in the collection; more than len(ids) when the map shows a sample


def embedding_map(
    index: DocumentIndex,
    query: str | None = None,
    max_points: int = 2000,
    always_include: Sequence[str] = (),
    seed: int = 0,
) -> EmbeddingMap:
    """Chunks on a 2-D PCA map, plus where `query` lands on the same map.

    Collections larger than `max_points` are shown as a seeded random sample (charts of more
    points are slow to draw); chunk ids in `always_include` (e.g. the hits) are always kept."""
    if max_points < 1:
        raise InputError(f"max_points must be at least 1, got {max_points}.")
    if query is not None and not query.strip():
        raise InputError("Type a question or phrase to place on the map.")
    vectors = index.chunk_vectors()
    n_total = len(vectors.ids)
    rows = np.arange(n_total)
    if n_total > max_points:
        wanted = set(always_include)
        keep = {i for i, cid in enumerate(vectors.ids) if cid in wanted}
        rest = np.setdiff1d(rows, list(keep))
        extra = np.random.default_rng(seed).choice(rest, size=max(0, max_points - len(keep)), replace=False)
        rows = np.sort(np.concatenate([np.array(sorted(keep), dtype=int), extra]))
    projection = pca_2d(vectors.embeddings[rows])
    query_coords = None
    if query is not None:
        query_coords = projection.project(index.embedder.encode([query]))[0]
    return EmbeddingMap(
        coords=projection.coords,
        ids=[vectors.ids[i] for i in rows],
        doc_names=[vectors.doc_names[i] for i in rows],
        chunk_indices=[vectors.chunk_indices[i] for i in rows],
        texts=[vectors.texts[i] for i in rows],
        projection=projection,
        query=query,
        query_coords=query_coords,
        n_total=n_total,
    )
