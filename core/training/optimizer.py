"""What the optimizer sees and keeps: gradient norms (global, per layer group) and clipping, a token's
embedding gradient, and AdamW's state for any parameter (`AdamState`), read straight from torch."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from core.errors import InputError
from core.model.families import model_parts
from core.training.parts import parameter_by_name


@dataclass(frozen=True)
class AdamState:
    """AdamW's memory for one parameter (or one row of it) after its last step, and what that step did.

    torch keeps m and v as running means that start at 0, so after t steps they are shrunk by
    (1 − β1ᵗ) and (1 − β2ᵗ); the update uses them bias-corrected, m̂ = m / (1 − β1ᵗ) and
    √v̂ = √(v / (1 − β2ᵗ)). `torch.optim.AdamW` (decoupled weight decay λ) then moved every weight by

        Δw = −lr·m̂/(√v̂ + ε) − lr·λ·w      (w: the weight before the step)
    """

    name: str  # parameter name, e.g. "transformer.wte.weight"
    row: int | None  # the row (e.g. a token id) these arrays are for, or None for the whole tensor
    step: int  # AdamW's own step count t for this parameter
    lr: float  # learning rate of the last step
    beta1: float
    beta2: float
    eps: float
    weight_decay: float  # λ
    exp_avg: np.ndarray  # m: torch's raw running mean of gradients (shape of the parameter or row)
    exp_avg_sq: np.ndarray  # v: torch's raw running mean of squared gradients, same shape
    m_hat: np.ndarray  # m̂ = m / (1 − β1ᵗ): the bias-corrected mean of the gradients
    v_hat_sqrt: np.ndarray  # √v̂ = √(v / (1 − β2ᵗ)): the bias-corrected RMS of the gradients
    step_size: np.ndarray  # lr·m̂/(√v̂+ε): what Adam's own term subtracted from each weight
    update: np.ndarray  # Δw: the whole change of each weight in the last step, weight decay included

    def display_rows(self) -> tuple[list[str], np.ndarray]:
        """The rows the training page shows and their labels: m̂, √v̂ and Δw, [3, *shape]."""
        decay = " − lr·λ·w" if self.weight_decay else ""
        labels = [
            "m̂ = m/(1−β₁ᵗ): bias-corrected mean of g",
            "√v̂ = √(v/(1−β₂ᵗ)): bias-corrected RMS of g",
            f"update Δw = −lr·m̂/(√v̂+ε){decay}",
        ]
        return labels, np.stack([self.m_hat, self.v_hat_sqrt, self.update])


def grad_norm(params: Iterable[torch.Tensor]) -> torch.Tensor:
    """[] global L2 norm of the gradients of `params` (those without a gradient count as 0)."""
    grads = [p.grad for p in params if p.grad is not None]
    return torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())


def group_grad_norms(groups: Mapping[str, list[torch.Tensor]]) -> dict[str, float]:
    """The gradient norm of each layer group's trainable parameters (0.0 for a frozen group)."""
    norms = torch.stack([grad_norm(params) for params in groups.values()])  # [n_groups]
    return dict(zip(groups, norms.tolist(), strict=True))


def token_embedding_grad(model: Any, token_id: int) -> np.ndarray:
    """[d_model] gradient of one token's embedding row as the optimizer used it (after clipping) in the
    last step; zeros before the first step or when the embeddings are frozen.

    Only tokens in the last batch get a gradient through the input; with tied embeddings every
    row also gets one through the output head (the softmax pushes down every wrong token).
    """
    table = model_parts(model).token_embedding.weight  # [vocab, d_model]
    if not 0 <= int(token_id) < table.shape[0]:
        raise InputError(f"token id {token_id} is outside the vocabulary (0 … {table.shape[0] - 1}).")
    if table.grad is None:
        return np.zeros(table.shape[1], dtype=np.float32)
    return table.grad[int(token_id)].detach().float().cpu().numpy().copy()  # not a view of .grad


def adam_state(
    optimizer: torch.optim.Optimizer, model: Any, name: str, row: int | None = None
) -> AdamState | None:
    """AdamW's m, v (raw and bias-corrected) and last update for parameter `name` (one `row` of it).

    Read straight from `torch.optim.AdamW`'s state; None while the parameter is frozen or has
    not been stepped yet. Tied aliases such as "lm_head.weight" resolve to the shared matrix.
    """
    try:
        param = parameter_by_name(model, name)
    except KeyError:
        raise InputError(f"This model has no parameter called {name!r}.") from None
    state = optimizer.state.get(param)
    if not state:
        return None
    group = next(g for g in optimizer.param_groups if any(p is param for p in g["params"]))
    beta1, beta2 = group["betas"]
    t = int(state["step"])
    m, v = state["exp_avg"].detach(), state["exp_avg_sq"].detach()
    if row is not None:
        if param.dim() < 2 or not 0 <= row < param.shape[0]:
            raise InputError(f"{name} has no row {row}.")
        m, v = m[row], v[row]
    weights = param.detach()
    if row is not None:
        weights = weights[row]
    lr, eps, decay = float(group["lr"]), float(group["eps"]), float(group["weight_decay"])
    m_hat = m.double() / (1 - beta1**t)
    v_hat_sqrt = (v.double() / (1 - beta2**t)).sqrt()
    step_size = lr * m_hat / (v_hat_sqrt + eps)
    # AdamW shrank the old weights w before subtracting step_size: w_now = w·(1 − lr·λ) − step_size.
    w_before = (weights.double() + step_size) / (1 - lr * decay)
    update = -step_size - lr * decay * w_before
    return AdamState(
        name=name,
        row=row,
        step=t,
        lr=lr,
        beta1=float(beta1),
        beta2=float(beta2),
        eps=eps,
        weight_decay=decay,
        # Copies: AdamW updates its state in place, and a caller keeps these across steps.
        exp_avg=m.float().cpu().numpy().copy(),
        exp_avg_sq=v.float().cpu().numpy().copy(),
        m_hat=m_hat.float().cpu().numpy(),
        v_hat_sqrt=v_hat_sqrt.float().cpu().numpy(),
        step_size=step_size.float().cpu().numpy(),
        update=update.float().cpu().numpy(),
    )
