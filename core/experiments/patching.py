"""Activation patching: copy one vector from a clean run into a corrupted run and see how much of the
clean answer comes back.

Two prompts of the same token length (e.g. "The capital of France is" / "... of Italy is"). At each
(layer, position) the activation at one site of the clean run replaces the corrupted run's. The metric
is the logit difference d = logit[clean answer] − logit[corrupted answer] at the last position:
restored = (d_patched − d_corrupted) / (d_clean − d_corrupted), 1 = the clean answer fully back, 0 = no
change.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.errors import InputError, SettingsError
from core.experiments.compare import FORWARD, PRE, Hook, Intervention, captured, prompt_ids
from core.experiments.hooks import Progress, StopCheck, grid_rows_by_layer, rows_per_batch, run_batched
from core.inspection.tokens import readable
from core.model.families import HOOK_ATTN, HOOK_BLOCK_IN, HOOK_BLOCK_OUT, HOOK_MLP
from core.model.loading import LoadedModel

# site -> (hook point pattern, kind, what the UI calls it)
SITES = {
    "resid_in": (HOOK_BLOCK_IN, PRE, "residual stream entering the block"),
    "resid_out": (HOOK_BLOCK_OUT, FORWARD, "residual stream leaving the block"),
    "attn": (HOOK_ATTN, FORWARD, "the block's attention output"),
    "mlp": (HOOK_MLP, FORWARD, "the block's MLP output"),
}


def _point(site: str, layer: int) -> tuple[str, str]:
    if site not in SITES:
        raise SettingsError(f"Patch site must be one of {', '.join(SITES)}, not {site!r}.")
    pattern, kind, _ = SITES[site]
    return pattern.format(i=layer), kind


@dataclass(frozen=True)
class PatchSetup:
    """The two prompts, their answers and logit differences, and the clean activations to copy."""

    site: str
    clean_ids: np.ndarray  # [T]
    corrupted_ids: np.ndarray  # [T]
    clean_pieces: tuple[str, ...]
    corrupted_pieces: tuple[str, ...]
    clean_answer: int  # token id whose logit counts +1 (default: the clean run's top-1)
    corrupted_answer: int  # token id whose logit counts −1 (default: the corrupted run's top-1)
    clean_answer_piece: str
    corrupted_answer_piece: str
    clean_diff: float  # logit[clean answer] − logit[corrupted answer], clean run
    corrupted_diff: float  # the same difference, corrupted run
    activations: tuple  # per layer: the clean run's activation at the site [T, ...] (torch)

    def restored(self, diff):
        """Fraction of the clean − corrupted difference a patched run's `diff` brings back."""
        return (diff - self.corrupted_diff) / (self.clean_diff - self.corrupted_diff)


def _same_length(loaded: LoadedModel, clean: str, corrupted: str):
    clean_ids, clean_pieces = prompt_ids(loaded, clean)
    corrupted_ids, corrupted_pieces = prompt_ids(loaded, corrupted)
    if len(clean_ids) != len(corrupted_ids):
        raise InputError(
            f"The clean prompt is {len(clean_ids)} tokens long and the corrupted one {len(corrupted_ids)}: "
            "patching copies position by position, so both need the same number of tokens."
        )
    return clean_ids, clean_pieces, corrupted_ids, corrupted_pieces


def prepare(
    loaded: LoadedModel,
    clean: str,
    corrupted: str,
    site: str = "resid_in",
    *,
    clean_answer: int | None = None,
    corrupted_answer: int | None = None,
) -> PatchSetup:
    """Run both prompts once, keep the clean activations at `site` of every layer, and the answers."""
    import torch

    clean_ids, clean_pieces, corrupted_ids, corrupted_pieces = _same_length(loaded, clean, corrupted)
    L = loaded.info.n_layer
    points = dict(_point(site, i) for i in range(L))
    device = next(loaded.model.parameters()).device

    def run(ids):
        out = loaded.model(input_ids=torch.as_tensor(ids, device=device)[None], use_cache=False)
        return out.logits[0, -1].double()

    with torch.inference_mode():
        with captured(loaded, points) as got:
            clean_logits = run(clean_ids)
        corrupted_logits = run(corrupted_ids)
    activations = tuple(got[_point(site, i)[0]][0] for i in range(L))
    a = int(clean_logits.argmax()) if clean_answer is None else int(clean_answer)
    b = int(corrupted_logits.argmax()) if corrupted_answer is None else int(corrupted_answer)
    vocab = loaded.model.config.vocab_size
    for token in (a, b):
        if not 0 <= token < vocab:
            raise InputError(f"Token id {token} is outside the vocabulary (0 to {vocab - 1}).")
    piece = lambda t: readable(loaded.tokenizer.decode([t]))  # noqa: E731
    if a == b:
        raise InputError(
            f"Both answers are the same token ({piece(a)!r}), so their logit difference is always 0. "
            "Pick a different answer token for the clean or the corrupted prompt."
        )
    clean_diff = float(clean_logits[a] - clean_logits[b])
    corrupted_diff = float(corrupted_logits[a] - corrupted_logits[b])
    if clean_diff == corrupted_diff:
        raise InputError(
            f"The logit difference {piece(a)!r} − {piece(b)!r} is the same in both runs ({clean_diff:.3g}): "
            "there is nothing to restore. Pick other prompts or answer tokens."
        )
    return PatchSetup(
        site=site,
        clean_ids=clean_ids,
        corrupted_ids=corrupted_ids,
        clean_pieces=clean_pieces,
        corrupted_pieces=corrupted_pieces,
        clean_answer=a,
        corrupted_answer=b,
        clean_answer_piece=piece(a),
        corrupted_answer_piece=piece(b),
        clean_diff=clean_diff,
        corrupted_diff=corrupted_diff,
        activations=activations,
    )


def source_activations(loaded: LoadedModel, text: str, site: str) -> tuple:
    """The activation at `site` of every layer in the run of `text`: per layer a [T, ...] tensor."""
    import torch

    ids, _pieces = prompt_ids(loaded, text)
    points = dict(_point(site, i) for i in range(loaded.info.n_layer))
    device = next(loaded.model.parameters()).device
    with torch.inference_mode(), captured(loaded, points) as got:
        loaded.model(input_ids=torch.as_tensor(ids, device=device)[None], use_cache=False)
    return tuple(got[_point(site, i)[0]][0] for i in range(loaded.info.n_layer))


def patch_from(
    loaded: LoadedModel, source: str, target: str, site: str, layer: int, positions
) -> Intervention:
    """The intervention that copies `source`'s activation at (`site`, `layer`, `positions`) into the run
    of `target` (same token length). `source` == `target` is the "do nothing" version: every value is
    copied onto itself, so the run is reproduced exactly."""
    _same_length(loaded, source, target)
    pieces = prompt_ids(loaded, source)[1]
    return _patch(loaded, site, source_activations(loaded, source, site), pieces, layer, positions)


def patch(loaded: LoadedModel, setup: PatchSetup, layer: int, positions) -> Intervention:
    """Copy the clean activation at (`layer`, each of `positions`) into every row of the run."""
    return _patch(loaded, setup.site, setup.activations, setup.clean_pieces, layer, positions)


def _patch(loaded: LoadedModel, site: str, activations: tuple, pieces, layer: int, positions) -> Intervention:
    import torch

    L, T = loaded.info.n_layer, len(pieces)
    positions = sorted({int(p) for p in positions})
    if not 0 <= layer < L:
        raise InputError(f"There is no layer {layer}: this model has layers 0 to {L - 1}.")
    if not positions or any(not 0 <= p < T for p in positions):
        raise InputError(f"Pick positions between 0 and {T - 1} (the prompt has {T} tokens).")
    point, kind = _point(site, layer)
    index = torch.tensor(positions, dtype=torch.long)
    source = activations[layer][index.to(activations[layer].device)]  # [n, ...]

    def fn(x):  # [B, T', ...]; T' ≥ T while a continuation grows
        out = x.clone()
        out[:, index.to(x.device)] = source.to(x.dtype)
        return out

    where = ", ".join(f"{p}:{pieces[p]}" for p in positions)
    return Intervention(f"patch {site} of layer {layer} at {where}", (Hook(point, kind, fn),))


@dataclass(frozen=True)
class PatchSweep:
    """Restored fraction of every (layer, position) patch."""

    setup: PatchSetup
    restored: np.ndarray  # [layers, positions]; NaN where not run
    complete: bool  # False: cancelled part-way
    n_done: int  # patches run


def patch_sweep(
    loaded: LoadedModel,
    setup: PatchSetup,
    *,
    batch_size: int | None = None,
    on_progress: Progress | None = None,
    should_stop: StopCheck | None = None,
    resume: PatchSweep | None = None,
) -> PatchSweep:
    """Patch each (layer, position) alone into the corrupted run, one patch per batch row.

    `on_progress(done, total)` after each batch; `should_stop()` True ends the sweep after the batch
    in flight and returns what was done (`complete` False, NaN elsewhere). `resume`: a stopped sweep of
    the same setup; its finished cells are kept and only the others run.
    """
    import torch

    L, T = loaded.info.n_layer, len(setup.corrupted_ids)
    if resume is not None and not _same_setup(resume.setup, setup, resume.restored.shape, (L, T)):
        raise SettingsError(
            "The sweep to continue was run on other prompts, answers, site or model: run it again from "
            "the start."
        )
    device = next(loaded.model.parameters()).device

    def intervention_for(rows: range) -> Intervention:  # sweep row r patches position r % T of layer r // T
        hooks = []
        for layer, (in_batch, picked_positions) in grid_rows_by_layer(rows, T).items():
            batch_rows = torch.tensor(in_batch, device=device)
            positions = torch.tensor(picked_positions, device=device)
            source = setup.activations[layer][positions]  # [n, ...]

            def fn(x, batch_rows=batch_rows, positions=positions, source=source):
                out = x.clone()
                out[batch_rows, positions] = source.to(x.dtype)
                return out

            hooks.append(Hook(*_point(setup.site, layer), fn))
        return Intervention("sweep", tuple(hooks))

    a, b = setup.clean_answer, setup.corrupted_answer

    def metric(logits):  # [n, V]
        diff = logits[:, a].double() - logits[:, b].double()
        return setup.restored(diff).cpu().numpy()

    run = run_batched(
        loaded,
        setup.corrupted_ids,
        L * T,
        intervention_for,
        metric,
        batch_size=batch_size or rows_per_batch(T),
        on_progress=on_progress,
        should_stop=should_stop,
        previous=None if resume is None else resume.restored.reshape(-1, 1),
    )
    return PatchSweep(setup, run.values[:, 0].reshape(L, T), run.complete, run.n_done)


def _same_setup(a: PatchSetup, b: PatchSetup, shape_a, shape_b) -> bool:
    return a is b or (
        shape_a == shape_b
        and (a.site, a.clean_answer, a.corrupted_answer) == (b.site, b.clean_answer, b.corrupted_answer)
        and np.array_equal(a.clean_ids, b.clean_ids)
        and np.array_equal(a.corrupted_ids, b.corrupted_ids)
        and (a.clean_diff, a.corrupted_diff) == (b.clean_diff, b.corrupted_diff)
    )
