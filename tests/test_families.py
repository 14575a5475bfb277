"""Every registered family passes the same invariants on a tiny seeded config: the trace, the logit
lens, the attention step and q/k/v split, rotary positions, and one fine-tuning step."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tiny_models
from test_trace import assert_passes, check_invariants

from core.errors import UnsupportedModelError
from core.inspection.attention import qkv_split
from core.inspection.layers import layer_labels, logit_lens, norm_effect
from core.inspection.positions import rotary_check
from core.inspection.trace import run_trace
from core.model.families import (
    FAMILIES,
    HOOK_ATTN,
    HOOK_HEADS,
    LEARNED,
    ROTARY,
    family_for_config,
    model_parts,
)
from core.model.loading import gpt2_tokenizer, wrap

TEXT = "The quick brown fox jumps over the lazy dog because it"

BUILDERS = {
    "gpt2": tiny_models.tiny_gpt2_model,
    "llama": tiny_models.tiny_llama_model,
    "qwen2": tiny_models.tiny_qwen2_model,
    "mistral": tiny_models.tiny_mistral_model,
    "gpt_neox": tiny_models.tiny_gpt_neox_model,
}


@pytest.fixture(scope="module")
def tokenizer():
    return gpt2_tokenizer()


@pytest.fixture(params=sorted(BUILDERS))
def family_model(request, tokenizer):
    model = BUILDERS[request.param](len(tokenizer))
    return wrap(model, tokenizer, spec=f"tiny-{request.param}", name=f"tiny {request.param}")


def test_every_registered_family_has_a_tiny_test():
    assert set(FAMILIES) == set(BUILDERS)


def test_trace_invariants(family_model):
    trace = run_trace(family_model, TEXT)
    check_invariants(family_model, trace)
    family = FAMILIES[family_model.info.family]
    if family.positions == ROTARY:
        assert trace.position_vectors is None
        assert_passes(rotary_check(trace))
    else:
        assert family.positions == LEARNED and trace.rotary is None
        assert trace.position_vectors.shape == trace.token_embeddings.shape


def test_trace_arrays_are_read_only(family_model):
    trace = run_trace(family_model, TEXT)
    for array in (trace.q, trace.residual, trace.attention_layers[0], trace.attentions, trace.last_probs):
        with pytest.raises(ValueError, match="read-only"):
            array[(0,) * array.ndim] = 1.0


def test_logit_lens_last_row_is_the_model_output(family_model):
    trace = run_trace(family_model, TEXT)
    lens = logit_lens(family_model, trace, range(trace.n_tokens))
    assert lens.top_ids.shape[0] == len(layer_labels(trace.n_layer)) == trace.n_layer + 1
    assert_passes(lens.final_check)
    np.testing.assert_array_equal(lens.top_ids[-1, :, :3], trace.top_ids[:, :3])


def test_qkv_split_and_the_attention_norm(family_model):
    trace = run_trace(family_model, TEXT)
    for layer in range(trace.n_layer):
        assert_passes(qkv_split(family_model, trace, layer).check)
    assert_passes(norm_effect(family_model, trace, layer=1, position=3).formula_check)


def test_named_hook_points_reach_the_same_modules(family_model):
    parts = model_parts(family_model.model)
    assert parts.hook_module(HOOK_ATTN.format(i=1)) is parts.attention(1)
    assert parts.hook_module(HOOK_HEADS.format(i=0)) is parts.out_projection(0)
    with pytest.raises(KeyError, match=re.escape("unknown hook point 'blocks.x.attn'")):
        parts.hook_module("blocks.x.attn")


def test_one_fine_tuning_step_moves_only_trainable_weights(family_model, tokenizer):
    import torch

    from core.training.parts import apply_freezing, layer_groups

    model = family_model.model
    groups = layer_groups(model)
    named = dict(model.named_parameters())
    assert sorted(n for names in groups.values() for n in names) == sorted(named)  # each once
    trainable = set(apply_freezing(model, "last_n_blocks", n_last_blocks=1))
    before = {n: p.detach().clone() for n, p in named.items()}
    ids = torch.as_tensor(tokenizer(TEXT)["input_ids"])[None]
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    moved = {n for n, p in named.items() if not torch.equal(p.detach(), before[n])}
    assert moved <= trainable  # nothing frozen moved
    assert set(groups[f"block {len(model_parts(model).blocks) - 1}"]) <= moved


def test_unknown_architectures_keep_their_message():
    from transformers import BertConfig

    with pytest.raises(UnsupportedModelError, match=re.escape("not supported yet: bert")):
        family_for_config(BertConfig())
