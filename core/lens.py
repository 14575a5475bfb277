"""Read residual-stream vectors as predictions: the model's own final norm and unembedding (logit lens)."""

from __future__ import annotations

import numpy as np

from core.models import GPT2_FAMILY, LoadedModel


def final_norm_and_head(loaded: LoadedModel):
    """(final norm module, unembedding module) of either family."""
    model = loaded.model
    norm = model.transformer.ln_f if loaded.info.family == GPT2_FAMILY else model.model.norm
    return norm, model.get_output_embeddings()


def unembed(loaded: LoadedModel, vectors: np.ndarray) -> np.ndarray:
    """Logits [..., V] for residual vectors [..., d]: lm_head(final_norm(x))."""
    import torch

    norm, head = final_norm_and_head(loaded)
    with torch.inference_mode():
        x = torch.as_tensor(np.ascontiguousarray(vectors), dtype=torch.float32)
        return head(norm(x)).numpy()
