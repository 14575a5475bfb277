"""Read residual-stream vectors as predictions: the model's own final norm and unembedding (logit lens)."""

from __future__ import annotations

import numpy as np

from core.model.loading import LoadedModel
from core.training.parts import model_parts


def final_norm_and_head(loaded: LoadedModel):
    """(final norm module, unembedding module) of either family."""
    parts = model_parts(loaded.model)
    return parts.final_norm, parts.lm_head


def unembed(loaded: LoadedModel, vectors: np.ndarray) -> np.ndarray:
    """Logits [..., V] for residual vectors [..., d]: lm_head(final_norm(x))."""
    import torch

    norm, head = final_norm_and_head(loaded)
    with torch.inference_mode():
        x = torch.as_tensor(np.ascontiguousarray(vectors), dtype=torch.float32)
        return head(norm(x)).numpy()
