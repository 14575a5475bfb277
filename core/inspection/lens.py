"""Read residual-stream vectors as predictions: the model's own final norm and unembedding (logit lens)."""

from __future__ import annotations

import numpy as np

from core.model.families import model_parts
from core.model.loading import LoadedModel


def final_norm_and_head(loaded: LoadedModel):
    """(final norm module, unembedding module) of either family."""
    parts = model_parts(loaded.model)
    return parts.final_norm, parts.lm_head


def unembed(loaded: LoadedModel, vectors: np.ndarray) -> np.ndarray:
    """Logits [..., V] for residual vectors [..., d]: lm_head(final_norm(x))."""
    import torch

    norm, head = final_norm_and_head(loaded)
    with torch.inference_mode():
        x = torch.tensor(np.asarray(vectors), dtype=torch.float32)  # a copy: trace arrays are read-only
        return head(norm(x)).numpy()
