"""The maths the Embeddings station shows on an embedding matrix [N, d]: cosine similarity, the
same pairs scored by several encoders, a 2-D PCA, k-means, zero-shot labels, "more like this", and
reading the sentences, labels and pairs the user typed."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from core.errors import InputError

if TYPE_CHECKING:
    from core.retrieval.encoders import Embedder


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (zero rows stay zero), so dot products are cosine similarities."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norms == 0, 1.0, norms)


def row_norms(x: np.ndarray) -> np.ndarray:
    """The length of each row of [N, d] -> [N], in x's precision, with no squared or scaled copy of x."""
    return np.sqrt(np.einsum("ij,ij->i", x, x))


def cosines_to_rows(rows: np.ndarray, norms: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Cosine similarity of each query ([d] or [n, d]) with every row of `rows` [V, d] -> [V] or [n, V]:
    (query · row) / (|query| |row|), with `norms` = row_norms(rows) computed once; a zero row or query
    scores 0. Reads the table once and keeps no unit-length copy of it (for a vocabulary, a copy the
    size of the model's embedding matrix).

    Rounding: the dot product and the two lengths are sums of d terms each, so a cosine is within
    float tolerance of (2d + 3) operations on numbers at most 1 (`cosine_reduction_length`)."""
    q = np.asarray(queries, dtype=rows.dtype)
    dots = q @ rows.T  # [V] or [n, V]
    lengths = np.sqrt(np.einsum("...i,...i->...", q, q))  # [] or [n]
    denominators = np.multiply.outer(lengths, norms).astype(dots.dtype, copy=False)
    return np.divide(dots, denominators, out=np.zeros_like(dots), where=denominators > 0)


def cosine_reduction_length(d: int) -> int:
    """Rounded operations behind one `cosines_to_rows` value of width d: a dot product, two lengths,
    their product and the division."""
    return 2 * d + 3


# --- analysis on an embedding matrix [N, d] --------------------------------------------------------


def cosine_similarity_matrix(embeddings: np.ndarray) -> np.ndarray:
    """Pairwise cosine similarity of the rows of [N, d] -> [N, N] in [-1, 1] (zero rows score 0)."""
    x = unit_rows(np.asarray(embeddings, dtype=np.float64))
    return np.clip(x @ x.T, -1.0, 1.0)


@dataclass(frozen=True)
class PairScore:
    """The cosine similarity of one sentence pair under each embedder."""

    first: str
    second: str
    scores: dict[str, float]  # embedder name -> cosine similarity


def compare_pairs(embedders: Mapping[str, Embedder], pairs: Sequence[tuple[str, str]]) -> list[PairScore]:
    """Score every (first, second) pair with every embedder, so encoders can be compared side by side."""
    if not pairs:
        raise InputError("Add at least one sentence pair to compare.")
    firsts = [a for a, _ in pairs]
    seconds = [b for _, b in pairs]
    per_embedder: dict[str, np.ndarray] = {}
    for name, embedder in embedders.items():
        a = unit_rows(embedder.encode(firsts).astype(np.float64))  # [P, d]
        b = unit_rows(embedder.encode(seconds).astype(np.float64))  # [P, d]
        per_embedder[name] = (a * b).sum(axis=1)  # [P]
    return [
        PairScore(first, second, {name: float(sims[i]) for name, sims in per_embedder.items()})
        for i, (first, second) in enumerate(pairs)
    ]


@dataclass(frozen=True)
class Projection2D:
    """A 2-D PCA of an embedding matrix; `project` places new vectors (e.g. a query) on the same map."""

    coords: np.ndarray  # [N, 2], the fitted points
    components: np.ndarray  # [2, d], unit principal axes (sign fixed: largest |entry| positive)
    mean: np.ndarray  # [d], subtracted before projecting
    explained_variance_ratio: np.ndarray  # [2], share of total variance along each axis

    def project(self, vectors: np.ndarray) -> np.ndarray:
        """[M, d] -> [M, 2] in this map's coordinates."""
        return (np.atleast_2d(np.asarray(vectors, dtype=np.float64)) - self.mean) @ self.components.T


def pca_2d(embeddings: np.ndarray) -> Projection2D:
    """Project [N, d] onto its top two principal axes (numpy SVD; deterministic signs)."""
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise InputError("PCA needs at least one vector (an [N, d] matrix with N >= 1).")
    n, d = x.shape
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)  # vt: [min(N, d), d]
    components = np.zeros((2, d))
    kept = min(2, vt.shape[0])
    components[:kept] = vt[:kept]
    for axis in range(kept):  # SVD signs are arbitrary; fix them so the map never flips between runs
        if components[axis, np.argmax(np.abs(components[axis]))] < 0:
            components[axis] *= -1
    variance = s**2
    ratio = np.zeros(2)
    if variance.sum() > 0:
        ratio[:kept] = variance[:kept] / variance.sum()
    coords = (x - mean) @ components.T
    return Projection2D(coords=coords, components=components, mean=mean, explained_variance_ratio=ratio)


@dataclass(frozen=True)
class Clustering:
    """k-means result: which cluster each row belongs to."""

    labels: np.ndarray  # [N] int, cluster id in 0..k-1
    centroids: np.ndarray  # [k, d]
    inertia: float  # sum of squared distances of rows to their centroid (lower = tighter)
    n_iter: int  # Lloyd iterations used by the best run


def kmeans(
    embeddings: np.ndarray, k: int, seed: int = 0, n_init: int = 10, max_iter: int = 100
) -> Clustering:
    """k-means++ then Lloyd iterations in numpy; the best of `n_init` seeded runs (same seed, same answer)."""
    x = np.asarray(embeddings, dtype=np.float64)
    n = x.shape[0]
    if not 1 <= k <= n:
        raise InputError(f"k must be between 1 and the number of items ({n}); got {k}.")
    if n_init < 1 or max_iter < 1:
        raise InputError("n_init and max_iter must both be at least 1.")
    rng = np.random.default_rng(seed)
    best: Clustering | None = None
    for _ in range(n_init):
        centroids = _kmeans_plus_plus(x, k, rng)
        iterations = 0
        for _ in range(max_iter):
            iterations += 1
            d2 = _squared_distances(x, centroids)  # [N, k]
            labels = d2.argmin(axis=1)
            new = centroids.copy()
            for c in range(k):
                members = x[labels == c]
                if len(members):
                    new[c] = members.mean(axis=0)
                else:  # an empty cluster takes the point farthest from its centroid
                    far = int(d2[np.arange(n), labels].argmax())
                    new[c] = x[far]
            if np.allclose(new, centroids):
                centroids = new
                break
            centroids = new
        d2 = _squared_distances(x, centroids)
        labels = d2.argmin(axis=1)
        inertia = float(d2[np.arange(n), labels].sum())
        if best is None or inertia < best.inertia - 1e-12:
            best = Clustering(labels=labels, centroids=centroids, inertia=inertia, n_iter=iterations)
    assert best is not None
    return best


def _squared_distances(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """[N, d], [k, d] -> [N, k] squared Euclidean distances, without an [N, k, d] temporary."""
    d2 = (x**2).sum(1)[:, None] - 2 * x @ centroids.T + (centroids**2).sum(1)[None, :]
    return np.maximum(d2, 0.0)


def _kmeans_plus_plus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    n = x.shape[0]
    centroids = [x[rng.integers(n)]]
    for _ in range(1, k):
        d2 = _squared_distances(x, np.array(centroids)).min(axis=1)  # [N]
        total = d2.sum()
        probs = d2 / total if total > 0 else np.full(n, 1.0 / n)
        centroids.append(x[rng.choice(n, p=probs)])
    return np.array(centroids)


@dataclass(frozen=True)
class ZeroShotPrediction:
    """The label whose embedding is nearest an item's embedding, with every label's score."""

    label: str
    score: float  # cosine similarity to the winning label
    scores: dict[str, float] = field(default_factory=dict)  # label -> cosine similarity


def zero_shot_classify(
    item_embeddings: np.ndarray, label_embeddings: np.ndarray, labels: Sequence[str]
) -> list[ZeroShotPrediction]:
    """Label each item [N, d] with the nearest of the label embeddings [L, d] by cosine similarity."""
    labels = list(labels)
    if not labels:
        raise InputError("Give at least one label to classify into.")
    if len(labels) != len(label_embeddings):
        raise InputError(f"Got {len(labels)} labels but {len(label_embeddings)} label embeddings.")
    items = unit_rows(np.asarray(item_embeddings, dtype=np.float64))
    anchors = unit_rows(np.asarray(label_embeddings, dtype=np.float64))
    sims = items @ anchors.T  # [N, L]
    predictions = []
    for row in sims:
        best = int(row.argmax())
        predictions.append(
            ZeroShotPrediction(
                label=labels[best],
                score=float(row[best]),
                scores={label: float(s) for label, s in zip(labels, row, strict=True)},
            )
        )
    return predictions


def label_prompts(labels: Sequence[str], template: str = "{}") -> list[str]:
    """Each label put through `template` (e.g. "This is about {}.") -> the texts that get embedded."""
    if "{}" not in template:
        raise InputError("The label template must contain {} where the label goes, e.g. 'About {}.'")
    return [template.replace("{}", label) for label in labels]


def zero_shot_texts(
    embedder: Embedder, texts: Sequence[str], labels: Sequence[str], template: str = "{}"
) -> list[ZeroShotPrediction]:
    """Embed texts and labels (each label put through `template`, e.g. "This is about {}.") and classify."""
    label_texts = label_prompts(labels, template)
    return zero_shot_classify(embedder.encode(texts), embedder.encode(label_texts), labels)


@dataclass(frozen=True)
class Recommendation:
    """One item similar to the chosen one."""

    index: int  # row in the embedding matrix
    score: float  # cosine similarity to the chosen item


def more_like_this(embeddings: np.ndarray, item: int, k: int = 3) -> list[Recommendation]:
    """The `k` rows most cosine-similar to row `item`, best first, never the item itself."""
    n = len(embeddings)
    if not 0 <= item < n:
        raise InputError(f"Item {item} does not exist; choose one of 0..{n - 1}.")
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}.")
    sims = cosine_similarity_matrix(embeddings)[item]  # [N]
    sims[item] = -np.inf
    order = np.argsort(-sims, kind="stable")[: min(k, n - 1)]
    return [Recommendation(index=int(i), score=float(sims[i])) for i in order]


# --- reading what the user typed ------------------------------------------------------------------


@dataclass(frozen=True)
class SentenceList:
    """Sentences typed one per line, after empty lines are dropped and the caps applied."""

    sentences: list[str]
    n_dropped: int  # non-empty lines past `max_items`, left out
    n_shortened: int  # lines cut to `max_chars`


def sentences_from_lines(
    text: str, max_items: int = 30, max_chars: int = 500, min_items: int = 2
) -> SentenceList:
    """One sentence per non-empty line; at most `max_items` lines of at most `max_chars` characters."""
    lines = [line.strip() for line in (text or "").splitlines()]
    lines = [line for line in lines if line]
    if len(lines) < min_items:
        raise InputError(
            f"Type at least {min_items} sentences, one per line, to compare them "
            f"(found {len(lines)}; empty lines are ignored)."
        )
    kept = lines[:max_items]
    shortened = sum(len(line) > max_chars for line in kept)
    return SentenceList(
        sentences=[line[:max_chars] for line in kept],
        n_dropped=len(lines) - len(kept),
        n_shortened=shortened,
    )


def labels_from_text(text: str) -> list[str]:
    """Comma- or newline-separated labels, stripped, empty ones dropped, repeats removed (order kept)."""
    parts = (part.strip() for part in re.split(r"[,\n]", text or ""))
    return list(dict.fromkeys(part for part in parts if part))


def pairs_from_lines(text: str, separator: str = "|", max_pairs: int = 12) -> list[tuple[str, str]]:
    """Sentence pairs typed one per line as `first | second`; empty lines are ignored."""
    pairs: list[tuple[str, str]] = []
    for number, line in enumerate((text or "").splitlines(), start=1):
        if not line.strip():
            continue
        parts = [part.strip() for part in line.split(separator)]
        if len(parts) != 2 or not all(parts):
            raise InputError(
                f"Line {number} is not a pair: write two sentences separated by one '{separator}', "
                f"like 'A man plays guitar {separator} Someone strums a guitar'."
            )
        pairs.append((parts[0], parts[1]))
    if not pairs:
        raise InputError(f"Type at least one pair of sentences, one per line: 'first {separator} second'.")
    if len(pairs) > max_pairs:
        raise InputError(f"{len(pairs)} pairs is more than {max_pairs}; remove some lines.")
    return pairs


@dataclass(frozen=True)
class SimilarPair:
    """Two items (row indices) and their cosine similarity."""

    first: int
    second: int
    cosine: float


def most_similar_pairs(similarity: np.ndarray) -> list[SimilarPair]:
    """Every pair i < j of an [N, N] similarity matrix, most similar first (ties keep row order)."""
    sim = np.asarray(similarity)
    rows, cols = np.triu_indices(sim.shape[0], k=1)
    order = np.argsort(-sim[rows, cols], kind="stable")
    return [SimilarPair(int(rows[i]), int(cols[i]), float(sim[rows[i], cols[i]])) for i in order]
