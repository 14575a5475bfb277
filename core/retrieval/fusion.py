"""Reciprocal rank fusion: several rankings of the same chunks merged by rank alone, so scores on
different scales (cosine in [−1, 1], BM25 in [0, ∞)) never have to be compared."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from core.errors import InputError
from core.retrieval.search import Hit

RRF_K = 60  # Cormack et al. (2009): 1/(k + rank) with k = 60 damps the head of each list; larger k
# flattens the difference between rank 1 and rank 10, smaller k lets one list's top item dominate

SEARCH_MODES = ("dense", "sparse", "hybrid")  # DocumentIndex.search(mode=...)
CANDIDATES = 50  # each list is read this deep (or k, if larger) before fusing; ranks past it are None


@dataclass(frozen=True)
class Fused:
    """One item after fusion, with where each list had put it."""

    id: str
    score: float  # Σ over lists containing the item of 1 / (k + rank)
    ranks: tuple[int | None, ...]  # its 1-based rank in each input list, None where absent


def reciprocal_rank_fusion(rankings: Sequence[Sequence[str]], k: int = RRF_K) -> list[Fused]:
    """Merge rankings (ids, best first) by score(d) = Σ_lists 1 / (k + rank(d)), ranks from 1.

    Ties keep the order in which the items were first met, list by list, so the result is
    deterministic. An id repeated inside one list counts at its first (best) rank only."""
    if k < 0:
        raise ValueError(f"RRF k must be 0 or more, got {k}; the usual value is {RRF_K}.")
    ranks: dict[str, list[int | None]] = {}
    for which, ranking in enumerate(rankings):
        for rank, item in enumerate(ranking, start=1):
            slot = ranks.setdefault(item, [None] * len(rankings))
            if slot[which] is None:
                slot[which] = rank
    fused = [
        Fused(item, sum(1.0 / (k + r) for r in item_ranks if r is not None), tuple(item_ranks))
        for item, item_ranks in ranks.items()
    ]
    order = sorted(range(len(fused)), key=lambda i: (-fused[i].score, i))
    return [fused[i] for i in order]


def check_mode(mode: object) -> str:
    if mode not in SEARCH_MODES:
        raise InputError(f"Search mode must be one of {', '.join(SEARCH_MODES)}, got {mode!r}.")
    return str(mode)


def ranked_hits(
    mode: str,
    k: int,
    dense: Sequence[Hit],
    sparse: Sequence[tuple[str, float]],
    bm25_of: Callable[[str], float],
    fetch: Callable[[list[str]], dict[str, Hit]],
    rrf_k: int = RRF_K,
) -> list[Hit]:
    """The top `k` hits of one mode, each told its rank in both lists and its BM25 score.

    `dense`: hits by cosine, best first; `sparse`: (chunk id, BM25 score), best first; `bm25_of`
    gives any chunk's BM25 score; `fetch(ids)` returns hits (with cosine) for chunks only BM25 found."""
    check_mode(mode)
    dense_ids = [h.id for h in dense]
    sparse_ids = [cid for cid, _ in sparse]
    rrf: dict[str, float] = {}
    if mode == "dense":
        order = dense_ids[:k]
    elif mode == "sparse":
        order = sparse_ids[:k]
    else:
        fused = reciprocal_rank_fusion([dense_ids, sparse_ids], rrf_k)[:k]
        order = [f.id for f in fused]
        rrf = {f.id: f.score for f in fused}
    dense_rank = {cid: r for r, cid in enumerate(dense_ids, start=1)}
    sparse_rank = {cid: r for r, cid in enumerate(sparse_ids, start=1)}
    known = {h.id: h for h in dense}
    missing = [cid for cid in order if cid not in known]
    if missing:
        known.update(fetch(missing))
    order = [cid for cid in order if cid in known]  # a chunk deleted meanwhile drops out
    return [
        replace(
            known[cid],
            rank=rank,
            bm25=float(bm25_of(cid)),
            dense_rank=dense_rank.get(cid),
            sparse_rank=sparse_rank.get(cid),
            rrf=rrf.get(cid),
        )
        for rank, cid in enumerate(order, start=1)
    ]
