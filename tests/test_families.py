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
from core.model.capture import RECORDING, recording_attention
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
from core.tolerance import check_close, float32_tolerance

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
    arrays = [trace.q, trace.residual, trace.attention_layers[0], trace.attentions, trace.last_probs]
    arrays += [trace.q_layers[0], trace.k_layers[-1], trace.v, trace.residual_layers[0]]
    if trace.rotary is not None:
        arrays += [trace.q_pre_rotary_layers[0], trace.k_pre_rotary]
    for array in arrays:
        with pytest.raises(ValueError, match="read-only"):
            array[(0,) * array.ndim] = 1.0


def test_recorded_qk_are_the_model_rotary_of_the_projections(family_model):
    """The q/k recorded inside attention equal the model's own rotary applied to the projections."""
    import torch

    trace = run_trace(family_model, TEXT)
    family = FAMILIES[family_model.info.family]
    if family.positions == LEARNED:
        assert trace.q_pre_rotary is None and trace.k_pre_rotary is None
        return  # no rotation: the q/k/v split test compares the projections with the recorded q/k/v
    model, T = family_model.model, trace.n_tokens
    parts = model_parts(model)
    x = torch.tensor(trace.block_input)[None]
    with torch.inference_mode():
        cos, sin = parts.rotary_embedding(x, torch.arange(T)[None])  # asked afresh, not from the trace
        q_pre, k_pre = torch.tensor(trace.q_pre_rotary), torch.tensor(trace.k_pre_rotary)
        q, k = family.apply_rotary(model)(q_pre, k_pre, cos[0], sin[0], unsqueeze_dim=0)
    # Each rotated coordinate is a two-term sum q_i·cos + q_j·sin.
    assert_passes(check_close(q.numpy(), trace.q, reduction_length=2, reference=trace.q_pre_rotary))
    assert_passes(check_close(k.numpy(), trace.k, reduction_length=2, reference=trace.k_pre_rotary))
    # Past position 0 the rotation moves them, so recording the projections instead would fail above.
    moved = np.abs(trace.q[:, :, 1:] - trace.q_pre_rotary[:, :, 1:]).max()
    assert moved > float32_tolerance(trace.q_pre_rotary, reduction_length=2)


def test_recording_attention_is_eager_and_only_for_its_thread(family_model, tokenizer):
    import threading

    import torch

    model = family_model.model
    ids = torch.as_tensor(tokenizer(TEXT)["input_ids"])[None]

    def forward():
        with torch.inference_mode():
            return model(input_ids=ids, output_attentions=True, use_cache=False)

    eager = forward()
    seen, elsewhere = [], []
    with recording_attention(model, lambda module, q, k, v: seen.append((module, q.shape, k.shape, v.shape))):
        assert model.config._attn_implementation == RECORDING
        recorded = forward()
        other = threading.Thread(target=lambda: elsewhere.append(forward()))
        other.start()
        other.join()
    assert model.config._attn_implementation == "eager"  # back as it was

    parts, info = model_parts(model), family_model.info
    T = ids.shape[1]
    assert [module for module, *_ in seen] == [parts.attention(i) for i in range(info.n_layer)]
    for _, q_shape, k_shape, v_shape in seen:
        assert q_shape == (1, info.n_head, T, info.d_head)
        assert k_shape == v_shape == (1, info.n_kv_head, T, info.d_head)
    # The same eager maths: identical logits and attention weights, here and in the other thread.
    for out in (recorded, elsewhere[0]):
        assert torch.equal(out.logits, eager.logits)
        assert all(torch.equal(a, b) for a, b in zip(out.attentions, eager.attentions, strict=True))


def test_stacked_arrays_are_built_on_first_use(family_model):
    trace = run_trace(family_model, TEXT)
    stacked = ("q", "k", "v", "q_pre_rotary", "k_pre_rotary", "residual", "attentions", "head_outputs")
    assert not set(stacked) & set(vars(trace))  # nothing stacked by the pass itself
    np.testing.assert_array_equal(trace.q[1], trace.q_layers[1])
    np.testing.assert_array_equal(trace.residual[-1], trace.residual_layers[-1])
    assert {"q", "residual"} <= set(vars(trace))
    assert len(trace.residual_layers) == trace.n_layer + 1


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


def test_the_before_after_view_leaves_a_recording_in_another_thread_alone(family_model, tokenizer):
    """Station 8's before/after asks for eager attention on the same shared model a trace may be
    recording on: while it runs, a trace in another thread must still record every layer."""
    import threading

    import torch

    from core.training.compare import _eager_attention

    model = family_model.model
    ids = torch.as_tensor(tokenizer(TEXT)["input_ids"])[None]
    inside, done = threading.Event(), threading.Event()

    def before_after_view():
        with _eager_attention(model):
            inside.set()
            done.wait(timeout=60)

    seen = []
    with recording_attention(model, lambda module, q, k, v: seen.append(module)):
        other = threading.Thread(target=before_after_view)
        other.start()
        assert inside.wait(timeout=60)
        with torch.inference_mode():
            model(input_ids=ids, use_cache=False)
        done.set()
        other.join()
        assert model.config._attn_implementation == RECORDING
    assert len(seen) == family_model.info.n_layer  # every layer recorded meanwhile
    assert model.config._attn_implementation == "eager"  # and back as it was once the recording ends
