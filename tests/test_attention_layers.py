"""Stations 3–4 maths: a head step by step, head patterns, the residual stream and the logit lens."""

from __future__ import annotations

import re

import numpy as np
import pytest

from core.attention import (
    all_heads_error,
    attention_grid_image,
    gpt2_fused_split,
    head_patterns,
    head_steps,
)
from core.errors import InputError
from core.layers import logit_lens, norm_effect, residual_stats
from core.lens import unembed
from core.trace import run_trace

TEXT = "The cat sat on the mat because the mat was warm and the cat was tired."


@pytest.fixture
def traced(tiny_model):
    return tiny_model, run_trace(tiny_model, TEXT)


def test_head_steps_equal_the_models_head_output(traced):
    _, trace = traced
    for layer in range(trace.n_layer):
        for head in range(trace.n_head):
            for position in (0, 5, trace.n_tokens - 1):
                s = head_steps(trace, layer, head, position)
                assert s.output_error < 1e-5 and s.weights_error < 1e-5
                assert np.all(s.weights[position + 1 :] == 0)  # the mask hides the future
                assert s.weights.sum() == pytest.approx(1.0)
                np.testing.assert_allclose(s.scaled_scores, s.raw_scores * s.scale)
                assert s.scale == pytest.approx(1 / np.sqrt(trace.q.shape[-1]))
    assert all_heads_error(trace) < 1e-5


def test_grouped_query_heads_share_kv(tiny_llama):
    trace = run_trace(tiny_llama, TEXT)
    a, b = head_steps(trace, 0, 0, 4), head_steps(trace, 0, 1, 4)
    assert a.kv_head == b.kv_head == 0
    np.testing.assert_array_equal(a.keys, b.keys)
    assert head_steps(trace, 0, 2, 4).kv_head == 1


def test_head_steps_bad_index(traced):
    _, trace = traced
    with pytest.raises(
        InputError, match=re.escape(f"Token 999 does not exist: choose 0–{trace.n_tokens - 1}.")
    ):
        head_steps(trace, 0, 0, 999)


def test_head_patterns_on_constructed_attention(traced):
    from dataclasses import replace

    _, trace = traced
    T = trace.n_tokens
    A = np.zeros((trace.n_layer, trace.n_head, trace.n_tokens, trace.n_tokens), dtype=np.float32)
    A[:, :, 0, 0] = 1
    A[0, 0, np.arange(1, T), np.arange(T - 1)] = 1  # layer 0 head 0: previous token
    A[0, 1, :, 0] = 1  # layer 0 head 1: first token
    A[1, :, np.arange(T), np.arange(T)] = 1  # layer 1: itself
    patterns = head_patterns(replace(trace, attention_layers=tuple(A)))
    assert patterns.previous[0, 0] == 1 and patterns.first[0, 1] == 1 and patterns.self_[1, 0] == 1
    assert "previous-token head" in patterns.hint(0, 0)
    assert "attention sink" in patterns.hint(0, 1)
    assert "self-attending" in patterns.hint(1, 1)
    real = head_patterns(trace)
    assert np.all((real.previous >= 0) & (real.previous <= 1))


def test_gpt2_fused_split(tiny_gpt2):
    trace = run_trace(tiny_gpt2, TEXT)
    split = gpt2_fused_split(tiny_gpt2, trace, 1)
    assert split.weight_shape == (32, 96) and split.part_shape == (32, 32)
    assert split.head_slices == ((0, 16), (16, 32))
    assert split.max_error < 1e-5


def test_attention_grid_image(traced):
    _, trace = traced
    image = attention_grid_image(trace, slice(0, 10), tile=20, gap=2)
    assert image.dtype == np.uint8 and image.shape == (trace.n_layer * 22, trace.n_head * 22, 3)
    # The future (upper triangle) of the first map is the mask grey.
    assert tuple(image[0, 19]) == (235, 235, 235)


def test_residual_stats_add_up(traced):
    _, trace = traced
    stats = residual_stats(trace)
    L, T = trace.n_layer, trace.n_tokens
    assert stats.norms.shape == (L + 1, T) and stats.cos_prev.shape == (L, T)
    assert np.all(np.abs(stats.cos_prev) <= 1 + 1e-9)
    assert stats.sum_error < 1e-5
    np.testing.assert_allclose(stats.norms[0], np.linalg.norm(trace.block_input, axis=-1), rtol=1e-5)


def test_logit_lens_last_layer_is_the_output(traced):
    loaded, trace = traced
    lens = logit_lens(loaded, trace, range(trace.n_tokens))
    assert lens.final_error < 1e-5
    np.testing.assert_array_equal(lens.top_ids[-1], trace.top_ids[:, :3])
    # Rank/probability of the actual next token agree with the trace at the last layer.
    np.testing.assert_allclose(np.log(lens.target_prob[-1, :-1]), trace.target_logprobs, atol=1e-4)
    assert lens.target_rank[-1, -1] == -1 and lens.target_ids[-1] == -1
    # An intermediate layer's lens is the unembedding of that residual.
    mid = unembed(loaded, trace.residual[1])
    np.testing.assert_array_equal(np.argmax(mid, -1), lens.top_ids[1, :, 0])
    assert np.all(lens.target_rank[:, :-1] >= 0)


def test_logit_lens_window_limits(traced):
    loaded, trace = traced
    with pytest.raises(
        InputError, match=re.escape("The logit lens reads at most 64 tokens at a time; pick a window.")
    ):
        logit_lens(loaded, trace, range(65))
    with pytest.raises(InputError, match=re.escape("Choose at least one token for the logit lens.")):
        logit_lens(loaded, trace, [])


def test_norm_effect(traced):
    loaded, trace = traced
    effect = norm_effect(loaded, trace, 1, 3)
    assert effect.formula_error < 1e-5
    x, eps = effect.before, 1e-5 if effect.kind == "LayerNorm" else 1e-6
    if effect.kind == "LayerNorm":  # mean 0, variance 1 (up to the ε in the denominator)
        assert abs(effect.normalised.mean()) < 1e-6
        assert effect.normalised.var() == pytest.approx(x.var() / (x.var() + eps), rel=1e-6)
    else:  # root mean square 1 (up to ε)
        rms = np.sqrt((x**2).mean())
        assert np.sqrt((effect.normalised**2).mean()) == pytest.approx(rms / np.sqrt(rms**2 + eps), rel=1e-6)


@pytest.mark.slow
def test_smollm2_heads_and_lens(smollm2):
    trace = run_trace(smollm2, "The capital of France is Paris, and the capital of Italy is")
    assert all_heads_error(trace) < 1e-5
    lens = logit_lens(smollm2, trace, range(trace.n_tokens))
    assert lens.final_error < 1e-5
    assert smollm2.tokenizer.decode([lens.top_ids[-1, -1, 0]]).strip() == "Rome"
    # Early layers do not yet know the answer that the last layer gives.
    assert lens.top_ids[0, -1, 0] != lens.top_ids[-1, -1, 0]
    assert norm_effect(smollm2, trace, 10, 4).formula_error < 1e-4
