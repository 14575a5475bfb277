"""How a causal LM's trainable parameters group into layers and which of them a fine-tuning run
freezes (tied input/output embeddings included). Where the parts live is the family registry's job."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from core.errors import InputError, SettingsError
from core.model.families import ModelParts, model_parts  # noqa: F401 - re-exported for training

TRAIN_PARTS = ("all", "last_n_blocks", "embeddings")
EMBEDDINGS_GROUP = "embeddings"
HEAD_GROUP = "final norm/head"


def layer_groups(model: Any) -> dict[str, list[str]]:
    """Parameter names grouped by layer: "embeddings", "block 0" … "block L-1", "final norm/head".

    Every parameter lands in exactly one group. A tied lm_head is the embedding matrix itself, so it
    is counted once, under "embeddings"; an untied head belongs to "final norm/head".
    """
    parts = model_parts(model)
    owner: dict[int, str] = {}
    for module in (parts.token_embedding, parts.position_embedding):
        if module is not None:
            for p in module.parameters():
                owner[id(p)] = EMBEDDINGS_GROUP
    for i, block in enumerate(parts.blocks):
        for p in block.parameters():
            owner[id(p)] = f"block {i}"
    for module in (parts.final_norm, parts.lm_head):
        for p in module.parameters():
            owner.setdefault(id(p), HEAD_GROUP)  # setdefault: a tied head stays under "embeddings"

    groups: dict[str, list[str]] = {EMBEDDINGS_GROUP: []}
    groups.update({f"block {i}": [] for i in range(len(parts.blocks))})
    groups[HEAD_GROUP] = []
    for name, p in model.named_parameters():
        # Anything unexpected (an extra adapter, a bias outside the stack) is shown with the head.
        groups[owner.get(id(p), HEAD_GROUP)].append(name)
    return groups


def apply_freezing(model: Any, train_part: str, n_last_blocks: int = 1) -> list[str]:
    """Set `requires_grad` for `train_part` and return the names of the parameters left trainable.

    - "all": every weight trains.
    - "last_n_blocks": the top `n_last_blocks` blocks and the final norm train; the head trains only
      when it is untied. With tied embeddings the head *is* the embedding matrix, which this mode
      keeps frozen, so the output vocabulary stays exactly as it was.
    - "embeddings": the token table (and GPT-2's position table) train; with tied embeddings the head
      moves too, because it is the same matrix. The blocks, the final norm and an untied head stay.
    """
    if train_part not in TRAIN_PARTS:
        raise SettingsError(f"train_part={train_part!r} is not one of {', '.join(map(repr, TRAIN_PARTS))}")
    parts = model_parts(model)
    n_blocks = len(parts.blocks)
    if train_part == "last_n_blocks" and not 1 <= n_last_blocks <= n_blocks:
        raise InputError(
            f"n_last_blocks={n_last_blocks} does not fit this model: it has {n_blocks} blocks, "
            f"so choose between 1 and {n_blocks}"
        )

    trainable: set[int] = set()
    if train_part == "all":
        trainable = {id(p) for p in model.parameters()}
    elif train_part == "last_n_blocks":
        for block in list(parts.blocks)[n_blocks - n_last_blocks :]:
            trainable |= {id(p) for p in block.parameters()}
        trainable |= {id(p) for p in parts.final_norm.parameters()}
        if not parts.tied:
            trainable |= {id(p) for p in parts.lm_head.parameters()}
    else:
        for module in (parts.token_embedding, parts.position_embedding):
            if module is not None:
                trainable |= {id(p) for p in module.parameters()}

    names = []
    for name, p in model.named_parameters():
        p.requires_grad_(id(p) in trainable)
        if id(p) in trainable:
            names.append(name)
    return names


def parameter_by_name(model: Any, name: str) -> nn.Parameter:
    """The parameter called `name`, aliases of tied weights (e.g. "lm_head.weight") included."""
    for candidate, p in model.named_parameters(remove_duplicate=False):
        if candidate == name:
            return p
    raise KeyError(name)


def parameter_name(model: Any, param: nn.Parameter) -> str:
    """The name `model.named_parameters()` lists `param` under (a tied matrix: its first name)."""
    for name, p in model.named_parameters():
        if p is param:
            return name
    raise KeyError(f"{type(model).__name__} has no such parameter")


def bf16_supported() -> bool:
    """True where bfloat16 autocast has hardware behind it: a CUDA GPU with bf16, or a CPU with
    AVX512-BF16 or AMX tiles. Elsewhere autocast still runs, but emulated and slower than fp32."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    cpu = getattr(torch, "cpu", None)
    try:
        return bool(cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())
    except AttributeError:  # an older torch without the probes
        return False
