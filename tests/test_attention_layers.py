"""Stations 3–4 maths: a head step by step, head patterns, the residual stream and the logit lens."""

from __future__ import annotations

import re

import numpy as np
import pytest

from core.errors import InputError
from core.inspection.attention import (
    all_heads_check,
    attention_grid_image,
    head_patterns,
    head_steps,
    qkv_split,
)
from core.inspection.layers import logit_lens, norm_effect, rank_of_targets, residual_stats
from core.inspection.lens import unembed
from core.inspection.trace import run_trace
from core.tolerance import (
    EPS64,
    CheckResult,
    check_close,
    check_within,
    float64_tolerance,
    log_softmax_tolerance,
)

TEXT = "The cat sat on the mat because the mat was warm and the cat was tired."


@pytest.fixture
def traced(tiny_model):
    return tiny_model, run_trace(tiny_model, TEXT)


def assert_passes(check: CheckResult) -> None:
    assert check.passed, check


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def assert_same_top_ids(ours, theirs, log_p, tolerance) -> None:
    """Top ids agree, except where two candidates tie within rounding and may come in either order."""
    for row, (a, b) in enumerate(zip(np.asarray(ours), np.asarray(theirs), strict=True)):
        for x, y in zip(np.atleast_1d(a), np.atleast_1d(b), strict=True):
            assert x == y or abs(log_p[row, x] - log_p[row, y]) <= tolerance, (row, x, y)


def test_head_steps_equal_the_models_head_output(traced):
    _, trace = traced
    for layer in range(trace.n_layer):
        for head in range(trace.n_head):
            for position in (0, 5, trace.n_tokens - 1):
                s = head_steps(trace, layer, head, position)
                assert_passes(s.output_check)
                assert_passes(s.weights_check)
                assert np.all(s.weights[position + 1 :] == 0)  # the mask hides the future
                assert s.weights.sum() == pytest.approx(1.0)
                assert s.scale == pytest.approx(1 / np.sqrt(trace.q.shape[-1]))
    assert_passes(all_heads_check(trace))


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
    # On the real weights each share is the mean of one diagonal of the attention map.
    real = head_patterns(trace)
    A = trace.attention_layers[1][0].astype(np.float64)  # layer 1, head 0: [T, T]
    rows = np.arange(1, T)
    for share, expected in [
        (real.previous[1, 0], A[rows, rows - 1].mean()),
        (real.first[1, 0], A[rows, 0].mean()),
        (real.self_[1, 0], A[rows, rows].mean()),
    ]:
        assert_passes(check_close(share, expected, reduction_length=T, reference=1.0, eps=EPS64))


def test_gpt2_fused_split(tiny_gpt2):
    trace = run_trace(tiny_gpt2, TEXT)
    split = qkv_split(tiny_gpt2, trace, 1)
    assert split.modules == (("c_attn", (32, 96)),)  # Conv1D: [d, 3d], laid out [q | k | v]
    assert_passes(split.check)


def test_llama_separate_projections_split(tiny_llama):
    trace = run_trace(tiny_llama, TEXT)
    split = qkv_split(tiny_llama, trace, 0)
    # 4 query heads and 2 shared key/value heads of width 8: nn.Linear weights are [out, in].
    assert split.modules == (("q_proj", (32, 32)), ("k_proj", (16, 32)), ("v_proj", (16, 32)))
    assert_passes(split.check)


def test_the_pages_qkv_split_is_computed_once_per_model_text_and_layer(tiny_gpt2, tiny_llama):
    from ui import state

    trace = run_trace(tiny_gpt2, TEXT)
    kept = state.qkv_split(tiny_gpt2, trace, 1)
    assert state.qkv_split(tiny_gpt2, trace, 1) is kept  # a rerun reads it back
    assert kept == qkv_split(tiny_gpt2, trace, 1)
    other_layer = state.qkv_split(tiny_gpt2, trace, 0)
    assert other_layer is not kept and other_layer == qkv_split(tiny_gpt2, trace, 0)
    longer = run_trace(tiny_gpt2, TEXT + " Then it rained.")
    other_text = state.qkv_split(tiny_gpt2, longer, 1)
    assert other_text is not kept and other_text == qkv_split(tiny_gpt2, longer, 1)
    other_model = state.qkv_split(tiny_llama, run_trace(tiny_llama, TEXT), 1)
    assert other_model.modules == (("q_proj", (32, 32)), ("k_proj", (16, 32)), ("v_proj", (16, 32)))


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
    d = trace.residual.shape[-1]
    assert np.all(np.abs(stats.cos_prev) <= 1 + float64_tolerance(1.0, reduction_length=d))
    assert_passes(stats.sum_check)
    norms = np.linalg.norm(trace.block_input, axis=-1)  # float32, over d
    assert_passes(check_close(stats.norms[0], norms, reduction_length=d))
    # The MLP and attention norms are those of the trace's own contributions.
    assert_passes(check_close(stats.mlp_norms, np.linalg.norm(trace.mlp_out, axis=-1), d))


def test_logit_lens_last_layer_is_the_output(traced):
    loaded, trace = traced
    lens = logit_lens(loaded, trace, range(trace.n_tokens))
    assert_passes(lens.final_check)
    d = trace.residual.shape[-1]
    last = unembed(loaded, trace.residual[-1])
    tolerance = log_softmax_tolerance(last, reduction_length=d)
    assert_same_top_ids(lens.top_ids[-1], trace.top_ids[:, :3], log_softmax(last), tolerance)
    # The probability of the actual next token agrees with the trace at the last layer.
    assert_passes(check_within(lens.target_logprob[-1, :-1], trace.target_logprobs, tolerance))
    assert lens.target_rank[-1, -1] == -1 and lens.target_ids[-1] == -1
    # An intermediate layer's lens is the unembedding of that residual: same top token, same ranks.
    mid = unembed(loaded, trace.residual[1])  # the lens's own matrix shapes: the same logits
    mid_tolerance = log_softmax_tolerance(mid, reduction_length=d)
    assert_same_top_ids(lens.top_ids[1, :, 0], np.argmax(mid, -1), log_softmax(mid), mid_tolerance)
    expected = [(mid[p] > mid[p, trace.token_ids[p + 1]]).sum() for p in range(trace.n_tokens - 1)]
    assert lens.target_rank[1, :-1].tolist() == expected


def test_rank_of_targets_counts_strictly_larger_logits():
    # Far below the top, float32 softmax gives 0 to every token here; ranks come from the logits.
    logits = np.array([[0.0, -200.0, -150.0, -300.0, -150.0, -200.0]], dtype=np.float32)
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert (probs[0, 1:] == 0).all()  # the case a probability-based rank gets wrong
    assert [rank_of_targets(logits, [t])[0] for t in range(6)] == [0, 3, 1, 5, 1, 3]  # ties share a rank


def test_logit_lens_rank_survives_probability_underflow(tiny_gpt2):
    import torch

    # Blow the final norm's gain up so that the logits spread over hundreds: most next-token
    # probabilities underflow to 0 in float32, while the ranks stay well defined.
    with torch.no_grad():
        tiny_gpt2.model.transformer.ln_f.weight.mul_(3000.0)
    trace = run_trace(tiny_gpt2, TEXT)
    lens = logit_lens(tiny_gpt2, trace, range(trace.n_tokens))
    for layer in range(trace.n_layer + 1):
        logits = unembed(tiny_gpt2, trace.residual[layer])[:-1]  # [T-1, V], the lens's own matrix shapes
        target = logits[np.arange(len(logits)), trace.token_ids[1:]]
        assert lens.target_rank[layer, :-1].tolist() == (logits > target[:, None]).sum(-1).tolist()
    underflow = lens.target_prob[:, :-1] == 0
    assert underflow.any() and lens.target_rank[:, :-1][underflow].min() > 0
    assert np.isfinite(lens.target_logprob[:, :-1]).all()


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
    assert_passes(effect.formula_check)
    x, eps = effect.before, 1e-5 if effect.kind == "LayerNorm" else 1e-6
    if effect.kind == "LayerNorm":  # mean 0, variance 1 (up to the ε in the denominator)
        assert abs(effect.normalised.mean()) <= float64_tolerance(effect.normalised, len(x))
        assert effect.normalised.var() == pytest.approx(x.var() / (x.var() + eps), rel=1e-6)
    else:  # root mean square 1 (up to ε)
        rms = np.sqrt((x**2).mean())
        assert np.sqrt((effect.normalised**2).mean()) == pytest.approx(rms / np.sqrt(rms**2 + eps), rel=1e-6)


@pytest.mark.slow
def test_smollm2_heads_and_lens(smollm2):
    trace = run_trace(smollm2, "The capital of France is Paris, and the capital of Italy is")
    assert_passes(all_heads_check(trace))
    lens = logit_lens(smollm2, trace, range(trace.n_tokens))
    assert_passes(lens.final_check)
    assert smollm2.tokenizer.decode([lens.top_ids[-1, -1, 0]]).strip() == "Rome"
    # Early layers do not yet know the answer that the last layer gives.
    assert lens.top_ids[0, -1, 0] != lens.top_ids[-1, -1, 0]
    assert_passes(norm_effect(smollm2, trace, 10, 4).formula_check)


@pytest.mark.slow
def test_smollm2_lens_check_holds_along_any_summation_order(smollm2):
    # The same last-layer reading, summed three correct ways: batched (the lens), one row at a time
    # (another BLAS kernel: here it moves the top probabilities by 1.1e-5) and exactly in float64.
    # All three are the model's output up to float32 rounding of logits of size ~20.
    import torch

    from core.inspection.lens import final_norm_and_head

    trace = run_trace(smollm2, "The capital of France is Paris, and the capital of Italy is")
    norm, head = final_norm_and_head(smollm2)
    x = torch.tensor(trace.residual[-1])
    with torch.inference_mode():
        readings = [
            head(norm(x)),
            torch.cat([head(norm(x[i : i + 1])) for i in range(len(x))]),
            torch.nn.functional.linear(norm(x).double(), head.weight.double()),
        ]
    for logits in readings:
        log_p = torch.log_softmax(logits.double(), -1).numpy()
        ours = np.exp(np.take_along_axis(log_p, trace.top_ids[:, :3], axis=1))
        tolerance = log_softmax_tolerance(logits.float().numpy(), reduction_length=smollm2.info.d_model)
        assert_passes(check_within(ours, trace.top_probs[:, :3], tolerance))
    assert_passes(logit_lens(smollm2, trace, range(trace.n_tokens)).final_check)


@pytest.mark.slow
def test_smollm2_lens_ranks_far_down_the_vocabulary(smollm2):
    # Read at the embedding layer, the actual next tokens sit tens of thousands of places down, where
    # their float32 probabilities are exactly 0; the ranks must still be the true ones.
    trace = run_trace(smollm2, "The capital of France is Paris, and the capital of Italy is")
    lens = logit_lens(smollm2, trace, range(trace.n_tokens))
    logits = unembed(smollm2, trace.residual[0])[:-1]  # [T-1, V], the lens's own matrix shapes
    target = logits[np.arange(len(logits)), trace.token_ids[1:]]
    assert lens.target_rank[0, :-1].tolist() == (logits > target[:, None]).sum(-1).tolist()
    deep = (lens.target_prob[0, :-1] == 0) & (lens.target_rank[0, :-1] > 10_000)
    assert deep.any()
