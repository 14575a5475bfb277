"""The one rounding rule behind every numerical check: what it allows, and that it still catches mistakes."""

from __future__ import annotations

import math
import re
from dataclasses import replace

import numpy as np
import pytest

from core.inspection.attention import all_heads_check
from core.inspection.layers import logit_lens, residual_stats
from core.inspection.positions import block_input_check, rotary_check
from core.inspection.trace import run_trace
from core.tolerance import (
    EPS32,
    EPS64,
    SAFETY,
    CheckResult,
    check_close,
    float32_tolerance,
    float64_tolerance,
    log_softmax_tolerance,
    worst,
)

LENGTHS = [1, 64, 576, 1536, 50_000]  # one operation, a head, SmolLM2's width, its MLP, a vocabulary


def test_the_rule_is_c_eps_sqrt_n_times_the_largest_magnitude():
    assert float32_tolerance([-3.0, 2.0], 100) == SAFETY * EPS32 * 10 * 3.0
    assert float64_tolerance(np.array([[0.5], [-8.0]]), 4) == SAFETY * EPS64 * 2 * 8.0
    assert float32_tolerance([1.0, 2.0], 0) == 0.0  # a copy must match exactly
    assert float32_tolerance(np.zeros(0), 10) == 0.0
    with pytest.raises(
        ValueError, match=re.escape("reduction_length must be 0 or more (0 = an exact copy).")
    ):
        float32_tolerance([1.0], -1)
    # log softmax: twice the logits' tolerance, plus the log-sum-exp over V terms of size ≤ 1.
    logits = np.array([[10.0, -2.0, 0.5]])
    assert log_softmax_tolerance(logits, 8) == 2 * float32_tolerance(10.0, 8) + float32_tolerance(1.0, 3)


@pytest.mark.parametrize("n", LENGTHS)
def test_float32_rounding_passes_whatever_the_summation_order(n):
    # Dot products of length n in float32, summed by BLAS and strictly left to right (the order a
    # naive loop or another CPU's kernel might use), against the exact float64 result.
    rng = np.random.default_rng(n)
    a = rng.normal(size=(8, n)).astype(np.float32)
    b = rng.normal(size=n).astype(np.float32)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    blas = a @ b
    left_to_right = np.cumsum(a * b, axis=1, dtype=np.float32)[:, -1]
    for ours in (blas, left_to_right):
        check = check_close(ours, exact, reduction_length=n)
        assert check.passed, check
    assert check_close(blas, left_to_right, reduction_length=n).passed


@pytest.mark.parametrize("n", LENGTHS)
def test_a_mistake_of_one_part_in_a_thousand_is_flagged(n):
    rng = np.random.default_rng(n)
    a = rng.normal(size=(8, n)).astype(np.float32)
    b = rng.normal(size=n).astype(np.float32)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    wrong = (a @ b).astype(np.float64)
    wrong[3] += 1e-3 * np.abs(exact).max()
    check = check_close(wrong, exact, reduction_length=n)
    assert not check.passed and check.ratio > 5, check


def test_check_result_reads_as_a_verdict():
    ok = CheckResult(error=1e-7, tolerance=1e-6)
    bad = CheckResult(error=1e-3, tolerance=1e-6)
    exact = CheckResult(error=0.0, tolerance=0.0)
    assert ok.passed and ok.summary() == "within rounding (≤ 1.0e-06)" and ok.ratio == pytest.approx(0.1)
    assert not bad.passed and bad.summary() == "FAILED: above 1.0e-06"
    assert exact.passed and exact.summary() == "exact" and exact.ratio == 0.0
    assert not CheckResult(error=1e-30, tolerance=0.0).passed  # an exact check allows nothing
    assert CheckResult(error=1e-30, tolerance=0.0).summary() == "FAILED: must be exact"
    nan = check_close([np.nan], [1.0])
    assert math.isnan(nan.error) and not nan.passed
    assert worst([ok, bad, exact]) is bad and worst([ok, nan]) is nan
    assert str(ok) == "max |difference| 1.000e-07 vs tolerance 1.000e-06"
    with pytest.raises(ValueError, match=re.escape("Cannot compare shapes (2,) and (3,).")):
        check_close([1.0, 2.0], [1.0, 2.0, 3.0])


def _bump(array: np.ndarray, index=(0,)) -> np.ndarray:
    """A copy of `array` with one entry moved by a thousandth of the array's largest magnitude."""
    out = array.copy()
    out[index] += 1e-3 * np.abs(array).max()
    return out


def test_every_trace_check_passes_and_catches_one_part_in_a_thousand(tiny_model):
    trace = run_trace(tiny_model, "The cat sat on the mat because the mat was warm.")
    checks = {
        "block input": (block_input_check, lambda t: replace(t, block_input=_bump(t.block_input, (2, 3)))),
        "residual": (
            lambda t: residual_stats(t).sum_check,
            lambda t: replace(t, residual_layers=tuple(_bump(t.residual, (1, 2, 3)))),
        ),
        "attention": (
            all_heads_check,
            lambda t: replace(
                t, head_output_layers=(_bump(t.head_output_layers[0], (4, 1, 2)), *t.head_output_layers[1:])
            ),
        ),
        "logit lens": (
            lambda t: logit_lens(tiny_model, t, range(t.n_tokens)).final_check,
            lambda t: replace(t, target_logprobs=_bump(t.target_logprobs, (5,))),
        ),
    }
    if trace.rotary is not None:
        checks["rotary"] = (rotary_check, lambda t: replace(t, q_layers=tuple(_bump(t.q, (1, 0, 4, 2)))))
    for name, (check, break_it) in checks.items():
        assert check(trace).passed, (name, check(trace))
        broken = check(break_it(trace))
        assert not broken.passed and broken.ratio > 5, (name, broken)
