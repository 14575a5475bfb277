"""Head ablation: remove chosen attention heads' outputs and see what the model loses.

A head's output is its slice of the heads' outputs [B, T, H·dh] entering the output projection (hook
point "blocks.{i}.heads", a pre-hook). Zero-ablation sets the slice to 0; mean-ablation sets it to the
head's mean output over the positions of this text (from the unchanged run). The output projection's
bias belongs to no head and stays.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from core.errors import InputError, SettingsError
from core.experiments.compare import PRE, Hook, Intervention, captured, kl_nats, prompt_ids
from core.experiments.hooks import Progress, StopCheck, grid_rows_by_layer, rows_per_batch, run_batched
from core.model.families import HOOK_HEADS
from core.model.loading import LoadedModel

ZERO = "zero"  # replace the head's output by 0
MEAN = "mean"  # replace it by its mean over this text's positions
MODES = (ZERO, MEAN)

Head = tuple[int, int]  # (layer, head)


def head_label(head: Head) -> str:
    return f"L{head[0]}H{head[1]}"


def _check(loaded: LoadedModel, heads: Iterable[Head], mode: str) -> list[Head]:
    if mode not in MODES:
        raise SettingsError(f"Ablation mode must be one of {', '.join(MODES)}, not {mode!r}.")
    L, H = loaded.info.n_layer, loaded.info.n_head
    heads = sorted({(int(layer), int(head)) for layer, head in heads})
    for layer, head in heads:
        if not (0 <= layer < L and 0 <= head < H):
            raise InputError(
                f"There is no head {head_label((layer, head))}: this model has {L} layers × {H} heads."
            )
    return heads


def head_means(loaded: LoadedModel, ids):
    """Each head's mean output over the positions of the prompt `ids`: [layers, heads, d_head] tensor."""
    import torch

    info = loaded.info
    points = {HOOK_HEADS.format(i=i): PRE for i in range(info.n_layer)}
    device = next(loaded.model.parameters()).device
    with torch.inference_mode(), captured(loaded, points) as got:
        loaded.model(input_ids=torch.as_tensor(np.asarray(ids), device=device)[None], use_cache=False)
    return torch.stack(
        [
            got[HOOK_HEADS.format(i=i)][0].view(-1, info.n_head, info.d_head).mean(0)
            for i in range(info.n_layer)
        ]
    )


def _replacer(rows, heads, d_head: int, n_head: int, means):
    """fn for one layer: batch row `rows[j]` loses head `heads[j]` (rows None: every row loses every head
    in `heads`); the lost output becomes 0, or `means[j]` [dh] when means are given."""

    def fn(x):  # x: [B, T, H·dh]
        B, T, _ = x.shape
        out = x.clone()
        view = out.view(B, T, n_head, d_head)
        if rows is None:
            view[:, :, heads] = 0.0 if means is None else means.to(x.dtype)
        else:  # advanced indices around a slice: view[rows, :, heads] is [n, T, dh]
            view[rows, :, heads] = 0.0 if means is None else means[:, None, :].to(x.dtype)
        return out

    return fn


def ablation(loaded: LoadedModel, text: str, heads: Iterable[Head], mode: str = ZERO) -> Intervention:
    """The intervention that ablates `heads` [(layer, head), ...] for every row of the batch.

    No heads: the "do nothing" intervention (no hooks), which reproduces the original exactly.
    """
    import torch

    heads = _check(loaded, heads, mode)
    info = loaded.info
    means = head_means(loaded, prompt_ids(loaded, text)[0]) if mode == MEAN and heads else None
    hooks = []
    for layer in sorted({h[0] for h in heads}):
        chosen = torch.tensor([h for i, h in heads if i == layer])
        layer_means = None if means is None else means[layer, chosen]
        hooks.append(
            Hook(
                HOOK_HEADS.format(i=layer),
                PRE,
                _replacer(None, chosen, info.d_head, info.n_head, layer_means),
            )
        )
    names = ", ".join(head_label(h) for h in heads) or "no heads"
    return Intervention(f"{mode}-ablate {names}", tuple(hooks))


# --------------------------------------------------------------------------- the sweep


@dataclass(frozen=True)
class AblationSweep:
    """Every head removed on its own: what each removal does to the next-token distribution."""

    mode: str  # ZERO or MEAN
    kl: np.ndarray  # [layers, heads] KL(original ‖ without that head), nats; NaN where not run
    target_prob: np.ndarray  # [layers, heads] probability of the target token without that head
    target_id: int  # the followed token (default: the original top-1)
    original_target_prob: float  # its probability in the unchanged run
    complete: bool  # False: cancelled part-way; the NaN cells were not run
    n_done: int  # heads run

    @property
    def ranking(self) -> list[tuple[Head, float]]:
        """Heads run, most damaging (largest KL) first."""
        L, H = self.kl.shape
        cells = [
            ((i, h), float(self.kl[i, h])) for i in range(L) for h in range(H) if np.isfinite(self.kl[i, h])
        ]
        return sorted(cells, key=lambda c: -c[1])


def ablation_sweep(
    loaded: LoadedModel,
    text: str,
    mode: str = ZERO,
    *,
    target_id: int | None = None,
    batch_size: int | None = None,
    on_progress: Progress | None = None,
    should_stop: StopCheck | None = None,
    resume: AblationSweep | None = None,
) -> AblationSweep:
    """Ablate each head alone, one head per batch row, and rank the heads by the KL their removal causes.

    `on_progress(done, total)` after each batch; `should_stop()` True ends the sweep after the batch in
    flight and returns what was done (`complete` False, NaN elsewhere). `resume`: a stopped sweep of the
    same text and mode; its finished heads are kept and only the others run.
    """
    import torch

    _check(loaded, (), mode)
    info = loaded.info
    L, H = info.n_layer, info.n_head
    if resume is not None:
        if resume.mode != mode or resume.kl.shape != (L, H):
            raise SettingsError(
                f"The sweep to continue is a {resume.mode}-ablation of {resume.kl.shape[0]} × "
                f"{resume.kl.shape[1]} heads, not a {mode}-ablation of {L} × {H}: "
                "run it again from the start."
            )
        if target_id is not None and int(target_id) != resume.target_id:
            raise SettingsError(
                f"The sweep to continue follows token {resume.target_id}, not {int(target_id)}: "
                "run it again from the start."
            )
        target_id = resume.target_id
    ids, _pieces = prompt_ids(loaded, text)
    device = next(loaded.model.parameters()).device
    with torch.inference_mode():
        out = loaded.model(input_ids=torch.as_tensor(np.asarray(ids), device=device)[None], use_cache=False)
        original = out.logits[0, -1].double()
    log_p = torch.log_softmax(original, dim=-1)
    target = int(original.argmax()) if target_id is None else int(target_id)
    means = head_means(loaded, ids) if mode == MEAN else None

    def intervention_for(rows: range) -> Intervention:  # sweep row r ablates head r % H of layer r // H
        hooks = []
        for layer, (in_batch, picked_heads) in grid_rows_by_layer(rows, H).items():
            batch_rows = torch.tensor(in_batch, device=device)
            heads = torch.tensor(picked_heads, device=device)
            layer_means = None if means is None else means[layer, heads]
            hooks.append(
                Hook(
                    HOOK_HEADS.format(i=layer), PRE, _replacer(batch_rows, heads, info.d_head, H, layer_means)
                )
            )
        return Intervention("sweep", tuple(hooks))

    def metric(logits):  # [n, V] -> [n, 2]: KL(original ‖ ablated), p(target)
        log_q = torch.log_softmax(logits.double(), dim=-1)
        kl = (log_p.exp() * (log_p - log_q)).sum(-1).clamp_min(0.0)
        return torch.stack([kl, log_q[:, target].exp()], dim=1).cpu().numpy()

    run = run_batched(
        loaded,
        ids,
        L * H,
        intervention_for,
        metric,
        n_metrics=2,
        batch_size=batch_size or rows_per_batch(len(ids)),
        on_progress=on_progress,
        should_stop=should_stop,
        previous=None if resume is None else np.stack([resume.kl.ravel(), resume.target_prob.ravel()], 1),
    )
    return AblationSweep(
        mode=mode,
        kl=run.values[:, 0].reshape(L, H),
        target_prob=run.values[:, 1].reshape(L, H),
        target_id=target,
        original_target_prob=float(log_p[target].exp()),
        complete=run.complete,
        n_done=run.n_done,
    )


__all__ = [
    "MEAN",
    "MODES",
    "ZERO",
    "AblationSweep",
    "ablation",
    "ablation_sweep",
    "head_label",
    "head_means",
    "kl_nats",
]
