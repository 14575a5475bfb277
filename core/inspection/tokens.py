"""Station 1 maths: token pieces, the embedding matrix, nearest tokens by cosine, and a 2-D PCA map."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.errors import InputError
from core.retrieval.embeddings import cosines_to_rows, pca_2d


@dataclass(frozen=True)
class Neighbour:
    """A vocabulary entry close to a query token in embedding space."""

    token_id: int
    text: str  # readable token text ('␣' marks a leading space)
    cosine: float  # cosine similarity to the query row


@dataclass(frozen=True)
class MapPoint:
    """One token on the 2-D PCA map."""

    token_id: int
    text: str
    x: float
    y: float
    kind: str  # "sentence" (a token of the text) or "neighbour" (near one of them)
    anchor: str  # the sentence token this point belongs to


def readable(text: str) -> str:
    """Make whitespace in a token visible: leading space → '␣', newline → '⏎', tab → '⇥'."""
    if text.startswith(" "):
        text = "␣" + text[1:]
    return text.replace("\n", "⏎").replace("\t", "⇥")


def vocab_strings(tokenizer) -> list[str]:
    """Readable text of every vocabulary id (index = id): `tokenizer.decode([id])` for each.

    A Rust-backed tokenizer that decodes as transformers' own does (no clean-up of spaces, no
    `_decode` of its own) decodes the whole vocabulary in one call to the backend, about a quarter
    of the time of a Python call per id (49k ids for SmolLM2: ~0.04 s against ~0.13 s)."""
    n = len(tokenizer)
    if _plain_backend_decode(tokenizer):
        texts = tokenizer.backend_tokenizer.decode_batch([[i] for i in range(n)], skip_special_tokens=False)
    else:
        texts = [tokenizer.decode([i]) for i in range(n)]
    return [readable(t) for t in texts]


def _plain_backend_decode(tokenizer) -> bool:
    """True when `tokenizer.decode(ids)` is exactly its backend's `decode(ids, skip_special_tokens=False)`."""
    try:
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:
        return False
    return (
        isinstance(tokenizer, TokenizersBackend)
        and type(tokenizer)._decode is TokenizersBackend._decode
        and type(tokenizer).decode is TokenizersBackend.decode
        and not tokenizer.clean_up_tokenization_spaces
    )


def embedding_matrix(model) -> np.ndarray:
    """The input embedding table as numpy, [V, d] (shares memory with the model's weights)."""
    return model.get_input_embeddings().weight.detach().cpu().numpy()


def nearest_tokens(
    embeddings: np.ndarray,
    norms: np.ndarray,
    token_id: int,
    strings: list[str],
    k: int = 10,
    include_self: bool = False,
) -> list[Neighbour]:
    """The k vocabulary rows with the highest cosine similarity to row `token_id`.

    `embeddings` is the embedding matrix [V, d], `norms` its row lengths [V]
    (`core.retrieval.embeddings.row_norms`), computed once per model.
    """
    if not 0 <= token_id < len(embeddings):
        raise InputError(f"Token id {token_id} is outside the vocabulary (0–{len(embeddings) - 1}).")
    if k < 1:
        raise InputError("Ask for at least one neighbour.")
    sims = cosines_to_rows(embeddings, norms, embeddings[token_id])  # [V]
    if not include_self:
        sims[token_id] = -np.inf
    k = min(k, len(sims) - (0 if include_self else 1))
    top = np.argpartition(-sims, k - 1)[:k]
    top = top[np.argsort(-sims[top], kind="stable")]
    return [Neighbour(int(i), strings[i], float(sims[i])) for i in top]


def neighbourhood_map(
    embeddings: np.ndarray,
    norms: np.ndarray,
    token_ids: list[int],
    strings: list[str],
    neighbours_per_token: int = 5,
) -> list[MapPoint]:
    """The sentence's distinct tokens and their nearest neighbours (by cosine; `norms` are the rows'
    lengths, `core.retrieval.embeddings.row_norms`), placed by a shared 2-D PCA."""
    anchors = list(dict.fromkeys(int(t) for t in token_ids))
    rows, meta = [], []
    seen: set[int] = set()
    for anchor in anchors:
        rows.append(anchor)
        meta.append(("sentence", strings[anchor]))
        seen.add(anchor)
    if neighbours_per_token > 0:
        # One [A, V] product instead of A passes over the whole table (it is read from memory once);
        # each anchor's similarities are one contiguous row, so the partition below walks memory in order.
        sims = cosines_to_rows(embeddings, norms, embeddings[anchors])
        sims[np.arange(len(anchors)), anchors] = -np.inf  # a token is not its own neighbour
        k = min(neighbours_per_token, sims.shape[1] - 1)
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]  # [A, k]
        for a, anchor in enumerate(anchors):
            for token_id in top[a, np.argsort(-sims[a, top[a]], kind="stable")]:
                if int(token_id) not in seen:
                    seen.add(int(token_id))
                    rows.append(int(token_id))
                    meta.append(("neighbour", strings[anchor]))
    coords = pca_2d(embeddings[rows]).coords
    return [
        MapPoint(tid, strings[tid], float(x), float(y), kind, anchor)
        for tid, (x, y), (kind, anchor) in zip(rows, coords, meta, strict=True)
    ]


@dataclass(frozen=True)
class Tokenization:
    """A text split by one tokenizer."""

    tokenizer_name: str
    ids: tuple[int, ...]
    pieces: tuple[str, ...]


def tokenize_plain(tokenizer, text: str, name: str) -> Tokenization:
    """Split `text` without special tokens, pieces taken from the text by character offsets."""
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    pieces = tuple(
        text[s:e] if e > s else tokenizer.decode([i])
        for i, (s, e) in zip(enc["input_ids"], enc["offset_mapping"], strict=True)
    )
    return Tokenization(name, tuple(enc["input_ids"]), pieces)
