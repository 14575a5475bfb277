"""The one-pass trace: shapes and the maths it must agree with, for GPT-2 and Llama-style models."""

from __future__ import annotations

import re

import numpy as np
import pytest

from core.errors import InputError, SettingsError
from core.inspection.lens import unembed
from core.inspection.positions import block_input_check, rotary_check
from core.inspection.trace import TraceConfig, run_trace
from core.tolerance import check_close, check_within, float32_tolerance, softmax_tolerance

TEXT = "The quick brown fox jumps over the lazy dog, and then it naps."


def softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def hand_attention(trace):
    """softmax(QKᵀ/√d_head + causal mask) from the trace's own Q and K, [L, H, T, T], and the scores."""
    T = trace.n_tokens
    k = np.repeat(trace.k, trace.n_head // trace.n_kv_head, axis=1)  # GQA: each K head serves a group
    scores = trace.q @ k.transpose(0, 1, 3, 2) / np.sqrt(trace.q.shape[-1])
    mask = np.triu(np.full((T, T), -np.inf), k=1)
    return softmax(scores + mask), scores


def assert_passes(check):
    assert check.passed, check


def check_invariants(loaded, trace):
    info = loaded.info
    L, H, Hkv, T, d, dh = info.n_layer, info.n_head, info.n_kv_head, trace.n_tokens, info.d_model, info.d_head
    assert trace.q.shape == (L, H, T, dh)
    assert trace.k.shape == trace.v.shape == (L, Hkv, T, dh)
    assert trace.attentions.shape == (L, H, T, T)
    assert trace.residual.shape == (L + 1, T, d)
    assert trace.head_outputs.shape == (L, H, T, dh)
    assert len(trace.pieces) == len(trace.byte_offsets) == T

    # Block input: token + position (GPT-2) or the token embedding alone (rotary).
    assert_passes(block_input_check(trace))
    np.testing.assert_array_equal(trace.residual[0], trace.block_input)
    emb = loaded.model.get_input_embeddings().weight.detach().numpy()
    np.testing.assert_array_equal(trace.token_embeddings, emb[trace.token_ids])

    # Attention: the hand-computed softmax equals the model's weights for every layer and head, up to
    # float32 rounding of scores that are dh-term dot products.
    weights, scores = hand_attention(trace)
    assert_passes(check_within(weights, trace.attentions, softmax_tolerance(scores, reduction_length=dh)))
    assert np.all(np.triu(trace.attentions, k=1) == 0)  # causal: no token sees the future
    assert_passes(check_close(trace.attentions.sum(-1), np.ones((L, H, T)), reduction_length=T))

    # Each head's output is its weights times V: T-term sums of rows of V.
    v = np.repeat(trace.v, H // Hkv, axis=1)
    assert_passes(check_close(trace.attentions @ v, trace.head_outputs, reduction_length=T, reference=v))

    # Residual stream: previous + attention + MLP = next; the block rounds twice, each relative to its sum.
    after_attention = trace.residual[:-1] + trace.attn_out
    sums = np.maximum(np.abs(after_attention), np.abs(trace.residual[1:]))
    assert_passes(check_close(after_attention + trace.mlp_out, trace.residual[1:], 2, reference=sums))

    # Final norm + unembedding of the last residual gives the model's logits (d-term dot products), and
    # the trace's top tokens are the largest of them (ties within rounding may come in either order).
    logits = unembed(loaded, trace.residual[-1])
    assert_passes(check_close(logits[-1], trace.last_logits, reduction_length=d))
    top_logits = -np.sort(-logits, axis=-1)[:, :5]
    assert_passes(check_close(np.take_along_axis(logits, trace.top_ids[:, :5], -1), top_logits, d, logits))

    # Probabilities: softmax in float64, stored as float32, summed over V.
    assert_passes(check_close(trace.last_probs.sum(), 1.0, reduction_length=len(trace.last_probs)))
    assert np.all(np.diff(trace.top_probs, axis=-1) <= 0)
    assert trace.target_logprobs.shape == (T - 1,)
    assert np.all(trace.target_logprobs <= 0)


def test_invariants_tiny_models(tiny_model):
    trace = run_trace(tiny_model, TEXT)
    check_invariants(tiny_model, trace)
    if tiny_model.info.family == "gpt2":
        assert trace.position_vectors.shape == trace.token_embeddings.shape
        assert trace.rotary is None and trace.q_pre_rotary is None
    else:
        assert trace.position_vectors is None
        assert_passes(rotary_check(trace))
        assert trace.kv_head_of(0) == trace.kv_head_of(1) == 0 and trace.kv_head_of(3) == 1


def test_gpt2_qkv_is_the_split_of_c_attn(tiny_gpt2):
    import torch

    trace = run_trace(tiny_gpt2, TEXT)
    block = tiny_gpt2.model.transformer.h[1]
    with torch.inference_mode():
        fused = block.attn.c_attn(block.ln_1(torch.tensor(trace.residual[1])))  # [T, 3d]
    q, k, v = fused.numpy().reshape(trace.n_tokens, 3, 2, 16).transpose(1, 2, 0, 3)
    tolerance = float32_tolerance(fused.numpy(), reduction_length=32)  # d-term dot products
    assert_passes(check_within(q, trace.q[1], tolerance))
    assert_passes(check_within(k, trace.k[1], tolerance))
    assert_passes(check_within(v, trace.v[1], tolerance))


def test_gpt2_ids_and_byte_offsets(tiny_gpt2):
    trace = run_trace(tiny_gpt2, "Hello world")
    assert trace.token_ids.tolist() == [15496, 995]
    assert trace.pieces == ("Hello", " world")
    assert trace.byte_offsets == ((0, 5), (5, 11))


def test_emoji_and_mixed_scripts_offsets_are_bytes(tiny_model):
    text = "naïve café 🙂 Привет 你好 مرحبا"
    trace = run_trace(tiny_model, text)
    raw = text.encode("utf-8")
    assert trace.byte_offsets[-1][1] == len(raw)
    for (start, end), piece in zip(trace.byte_offsets, trace.pieces, strict=True):
        assert 0 <= start <= end <= len(raw)
        assert raw[start:end].decode("utf-8") == piece
    check_invariants(tiny_model, trace)


@pytest.mark.parametrize("text", ["", "   \n\t  "])
def test_empty_text_is_refused(tiny_gpt2, text):
    with pytest.raises(
        InputError, match=re.escape("The text is empty. Type a sentence in the sidebar to trace it.")
    ):
        run_trace(tiny_gpt2, text)


def test_long_text_is_cut_and_says_so(tiny_model):
    text = ("Vectors move through layers. " * 200)[:5000]
    trace = run_trace(tiny_model, text, TraceConfig(max_tokens=64))
    assert trace.truncated and trace.n_tokens == 64 and trace.n_tokens_in_text > 64
    assert text.startswith(trace.text) and len(trace.text) < len(text)
    check_invariants(tiny_model, trace)


def test_single_token_text(tiny_model):
    trace = run_trace(tiny_model, "Hi")
    assert trace.n_tokens == 1 and trace.attentions.shape[-1] == 1
    assert_passes(check_close(trace.attentions, np.ones_like(trace.attentions), reduction_length=1))


def test_trace_config_validation():
    with pytest.raises(SettingsError, match=re.escape("max_tokens must be at least 1 (try 512).")):
        TraceConfig(max_tokens=0)


def test_hooks_are_removed(tiny_gpt2):
    run_trace(tiny_gpt2, TEXT)
    modules = list(tiny_gpt2.model.modules())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in modules)


@pytest.mark.slow
def test_invariants_bundled_smollm2(smollm2):
    trace = run_trace(smollm2, "The capital of France is Paris, and the capital of Italy is")
    check_invariants(smollm2, trace)
    assert_passes(rotary_check(trace))
    assert smollm2.tokenizer.decode([trace.top_ids[-1, 0]]).strip() == "Rome"
