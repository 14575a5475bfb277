"""Temperature → top-k → top-p against Hugging Face's own logits warpers, hand-checked tiny cases,
the edges (T = 0, 1e-4, 100; top_p 0 and 1; top_k > V; ties), validation messages and the bar chart."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from core.errors import InputError, SettingsError
from core.inspection.sampling import (
    Distribution,
    SamplingConfig,
    TokenChoice,
    draw_token,
    entropy,
    reshape,
    top_entries,
)
from core.tolerance import EPS64, check_close, check_within, float32_tolerance, float64_tolerance
from core.views.output_charts import distribution_chart, distribution_frame


def _logits(v: int, scale: float, seed: int) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(v, generator=g) * scale).numpy()  # [V] float32


def _hf(logits: np.ndarray, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """HF's warpers in generate()'s order; returns the processed scores [V] (-inf where cut)."""
    warpers = LogitsProcessorList([TemperatureLogitsWarper(float(temperature))])
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    return warpers(None, torch.as_tensor(logits)[None].clone())[0]


CASES = [
    # (V, logit scale, temperature, top_k, top_p)
    (1000, 3.0, 1.0, 0, 0.9),
    (1000, 3.0, 0.7, 50, 0.8),
    (1000, 3.0, 1.5, 0, 0.5),
    (1000, 3.0, 2.0, 10, 1.0),
    (1000, 3.0, 0.3, 0, 0.95),
    (1000, 3.0, 1.0, 5, 0.0),
    (1000, 1.0, 1.0, 0, 0.99),
    (1000, 3.0, 1.0, 2000, 0.7),  # top_k larger than V
    (50257, 1.0, 1.0, 0, 0.9),  # flat: the cut lies deep, past the top-p search window
    (50257, 8.0, 0.8, 0, 0.9),  # peaked: the cut is found within the first window
    (50257, 4.0, 1.2, 400, 0.95),
]


@pytest.mark.parametrize(("v", "scale", "temperature", "top_k", "top_p"), CASES)
def test_matches_hugging_face_warpers(v, scale, temperature, top_k, top_p):
    logits = _logits(v, scale, seed=v + int(10 * scale))
    dist = reshape(logits, SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p))
    scores = _hf(logits, temperature, top_k, top_p)
    hf_kept = torch.isfinite(scores).numpy()
    hf_final = torch.softmax(scores.double(), dim=-1).numpy()
    assert np.array_equal(dist.kept, hf_kept)
    # HF divides by T in float32 (one rounding per logit, moving a log-probability by at most twice
    # that); both sides then normalise in float64 over V. Compared as log-probabilities: relative.
    scaled = logits / np.float32(temperature)
    tolerance = 2 * float32_tolerance(scaled, 1) + float64_tolerance(1.0, v)
    kept = dist.kept
    check = check_within(np.log(dist.final[kept]), np.log(hf_final[kept]), tolerance)
    assert check.passed, check
    ours = np.log(dist.tempered)
    theirs = torch.log_softmax(torch.as_tensor(logits).double() / temperature, -1).numpy()
    check = check_close(ours, theirs, reduction_length=v, reference=scaled, eps=EPS64)
    assert check.passed, check
    assert check_close(dist.final.sum(), 1.0, reduction_length=v, eps=EPS64).passed
    assert dist.final[~dist.kept].max(initial=0.0) == 0.0


def test_hand_checked_tiny_examples():
    logits = np.log([0.5, 0.3, 0.15, 0.05])
    np.testing.assert_allclose(reshape(logits).original, [0.5, 0.3, 0.15, 0.05])

    top3 = reshape(logits, SamplingConfig(top_k=3))
    assert top3.kept.tolist() == [True, True, True, False]
    np.testing.assert_allclose(top3.final, [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0.0])

    # 0.5 alone is < 0.7, so 0.3 is needed too; then 0.8 ≥ 0.7 and the rest is cut.
    nucleus = reshape(logits, SamplingConfig(top_p=0.7))
    assert nucleus.kept.tolist() == [True, True, False, False]
    np.testing.assert_allclose(nucleus.final, [0.625, 0.375, 0.0, 0.0])

    # p ∝ exp(logit / T): logits (0, ln 4) give 1:4 at T = 1, 1:2 at T = 2, 1:16 at T = 0.5.
    two = np.array([0.0, math.log(4.0)])
    np.testing.assert_allclose(reshape(two).final, [0.2, 0.8])
    np.testing.assert_allclose(reshape(two, SamplingConfig(temperature=2.0)).final, [1 / 3, 2 / 3])
    np.testing.assert_allclose(reshape(two, SamplingConfig(temperature=0.5)).final, [1 / 17, 16 / 17])


def test_entropy_in_nats_and_bits():
    uniform = entropy(np.full(4, 0.25))
    assert uniform.bits == pytest.approx(2.0)
    assert uniform.nats == pytest.approx(math.log(4))
    assert entropy(np.array([0.0, 1.0, 0.0])).nats == 0.0
    dist = reshape(np.log([0.5, 0.3, 0.15, 0.05]), SamplingConfig(top_k=2))
    assert dist.entropy_before.nats == pytest.approx(entropy(dist.original).nats)
    assert dist.entropy_after.bits == pytest.approx(entropy([0.625, 0.375]).bits)
    assert dist.entropy_after.bits < dist.entropy_before.bits


def test_stages_the_settings_leave_alone_are_the_model_distribution():
    logits = _logits(1000, 3.0, seed=7)
    plain = reshape(logits)  # T = 1, no top-k, no top-p: every stage is the model's own softmax
    assert np.array_equal(plain.tempered, plain.original) and np.array_equal(plain.final, plain.original)
    assert plain.entropy_before == plain.entropy_tempered == plain.entropy_after
    softmax = torch.softmax(torch.as_tensor(logits).double(), -1).numpy()
    assert check_close(plain.original, softmax, reduction_length=1000, reference=logits, eps=EPS64).passed
    # Top-k alone at T = 1 cuts the model's own distribution: its tempered stage is that distribution.
    cut = reshape(logits, SamplingConfig(top_k=50))
    assert np.array_equal(cut.tempered, plain.original) and cut.entropy_tempered == plain.entropy_before
    # Settings that change every stage: each entropy is the one of its own stage's probabilities.
    changed = reshape(logits, SamplingConfig(temperature=0.7, top_k=50, top_p=0.9))
    for probs, ent in (
        (changed.original, changed.entropy_before),
        (changed.tempered, changed.entropy_tempered),
        (changed.final, changed.entropy_after),
    ):
        log_p = np.abs(np.log(probs[probs > 0]))
        assert check_close(ent.nats, entropy(probs).nats, 1000, reference=log_p.max(), eps=EPS64).passed
    assert changed.entropy_after.nats < changed.entropy_tempered.nats < changed.entropy_before.nats


@pytest.mark.parametrize("config", [SamplingConfig(temperature=0.0), SamplingConfig(greedy=True, top_k=5)])
def test_temperature_zero_and_greedy_are_one_hot_on_the_argmax(config):
    logits = _logits(500, 2.0, seed=1)
    dist = reshape(logits, config)
    top = int(np.argmax(logits))
    expected = np.zeros(500)
    expected[top] = 1.0
    assert np.array_equal(dist.tempered, expected)
    assert np.array_equal(dist.final, expected)
    assert dist.n_kept == 1 and bool(dist.kept[top])
    assert dist.entropy_after.nats == 0.0
    # The model's own distribution is untouched: the plain softmax of the logits and its entropy.
    assert np.array_equal(dist.original, reshape(logits).original)
    assert dist.entropy_before == reshape(logits).entropy_before and dist.entropy_before.nats > 0


@pytest.mark.parametrize("temperature", [1e-4, 100.0, 1e-300, 1e6])
def test_extreme_temperatures_stay_finite(temperature):
    logits = _logits(50257, 5.0, seed=2)
    dist = reshape(logits, SamplingConfig(temperature=temperature, top_p=0.9))
    for probs in (dist.tempered, dist.final):
        assert np.isfinite(probs).all()
        assert check_close(probs.sum(), 1.0, reduction_length=len(probs), eps=EPS64).passed
    assert math.isfinite(dist.entropy_tempered.nats)
    if temperature <= 1e-4:  # almost all the mass on the argmax
        assert dist.tempered[np.argmax(logits)] > 0.999
        assert dist.n_kept == 1
    else:  # almost flat: log V − H = KL(p ‖ uniform) ≈ Var(logits / T) / 2, at most Var(logits / T)
        deficit = math.log(50257) - dist.entropy_tempered.nats
        spread = float(np.var(logits.astype(np.float64) / temperature))
        assert -float64_tolerance(math.log(50257), 50257) <= deficit <= spread


def test_top_p_zero_keeps_one_and_top_p_one_keeps_all():
    logits = _logits(300, 1.0, seed=3)
    zero = reshape(logits, SamplingConfig(top_p=0.0))
    assert zero.n_kept == 1 and bool(zero.kept[np.argmax(logits)])
    assert zero.final.max() == 1.0
    one = reshape(logits, SamplingConfig(top_p=1.0))
    assert one.kept.all()
    np.testing.assert_allclose(one.final, one.tempered)


@pytest.mark.parametrize("top_k", [300, 301, 10_000])
def test_top_k_at_or_above_vocabulary_keeps_all(top_k):
    dist = reshape(_logits(300, 1.0, seed=4), SamplingConfig(top_k=top_k))
    assert dist.kept.all()


def test_ties():
    tied = np.array([2.0, 1.0, 1.0, 0.0], dtype=np.float32)
    # top-k keeps everything tied with the k-th, exactly like HF's TopKLogitsWarper.
    dist = reshape(tied, SamplingConfig(top_k=2))
    assert dist.kept.tolist() == [True, True, True, False]
    assert np.array_equal(dist.kept, torch.isfinite(_hf(tied, 1.0, 2, 1.0)).numpy())
    # top-p cuts between exactly tied tokens like HF: the higher ids stay.
    flat = np.array([1.0, 1.0, 1.0, 0.0], dtype=np.float32)
    dist = reshape(flat, SamplingConfig(top_p=0.5))
    assert dist.kept.tolist() == [False, True, True, False]
    assert np.array_equal(dist.kept, torch.isfinite(_hf(flat, 1.0, 0, 0.5)).numpy())
    # greedy takes the first maximum.
    assert reshape(flat, SamplingConfig(temperature=0)).final.tolist() == [1.0, 0.0, 0.0, 0.0]


TIED = [
    # (logits, top_p): exact ties straddle the cut
    ([1.0, 1.0, 1.0, 0.0], 0.5),
    ([1.0, 1.0, 1.0, 0.0], 0.0),
    ([0.0, 2.0, 2.0, 2.0, 2.0, 1.0], 0.3),
    ([3.0, 1.0, 3.0, 1.0, 3.0, 1.0, 3.0, 1.0, -2.0], 0.8),
    ([0.5] * 16, 0.4),
]


@pytest.mark.parametrize(("logits", "top_p"), TIED)
def test_top_p_ties_keep_what_hugging_face_keeps(logits, top_p):
    # Up to 16 entries torch's CPU sort is stable, so HF's warper is deterministic here.
    logits = np.array(logits, dtype=np.float32)
    dist = reshape(logits, SamplingConfig(top_p=top_p))
    assert np.array_equal(dist.kept, torch.isfinite(_hf(logits, 1.0, 0, top_p)).numpy())


def test_top_p_ties_in_a_full_vocabulary_match_hugging_face_with_a_stable_sort(monkeypatch):
    # Past 16 entries torch's CPU sort orders ties arbitrarily; with stable=True HF's rule is defined.
    logits = _logits(50257, 1.0, seed=5)
    logits[100:140] = logits.max() + 1.0  # 40 tied leaders; the cut falls among them
    dist = reshape(logits, SamplingConfig(top_p=0.001))
    sort = torch.sort
    monkeypatch.setattr(torch, "sort", lambda *a, **k: sort(*a, **k, stable=True))
    hf_kept = torch.isfinite(_hf(logits, 1.0, 0, 0.001)).numpy()
    assert 1 <= dist.n_kept < 40
    assert np.array_equal(dist.kept, hf_kept)
    assert np.flatnonzero(dist.kept).tolist() == list(range(140 - dist.n_kept, 140))  # the highest ids


def test_impossible_tokens_are_handled():
    logits = np.array([1.0, -np.inf, 0.0, -np.inf])
    dist = reshape(logits, SamplingConfig(top_p=0.99))
    assert dist.final[[1, 3]].tolist() == [0.0, 0.0]
    assert np.isfinite(dist.final).all() and dist.final.sum() == pytest.approx(1.0)
    assert math.isfinite(dist.entropy_before.nats)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"temperature": -1.0},
            "temperature must be 0 or more (0 = always pick the most likely token; try 1.0).",
        ),
        ({"temperature": math.nan}, "temperature must be a finite number (try 1.0)."),
        ({"top_k": -1}, "top_k must be 0 (off) or a positive number of tokens to keep (try 50)."),
        ({"top_p": 1.5}, "top_p must be between 0 and 1 (1 = off; try 0.9)."),
        ({"top_p": -0.1}, "top_p must be between 0 and 1 (1 = off; try 0.9)."),
        ({"seed": -3}, "seed must be a whole number, 0 or more (try 0)."),
    ],
)
def test_config_validation_messages(kwargs, message):
    with pytest.raises(SettingsError, match=f"^{re.escape(message)}$"):
        SamplingConfig(**kwargs)


def test_bad_logits():
    with pytest.raises(
        ValueError, match=re.escape("logits must be one non-empty vector [V], got shape (2, 3).")
    ):
        reshape(np.zeros((2, 3)))
    with pytest.raises(InputError, match="NaN or infinite logits"):
        reshape(np.array([0.0, np.nan]))
    with pytest.raises(InputError, match="Every logit is -inf"):
        reshape(np.array([-np.inf, -np.inf]))


def test_draw_token_follows_the_distribution_and_never_draws_a_cut_token():
    probs = torch.tensor([0.5, 0.0, 0.3, 0.2, 0.0], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    draws = [draw_token(probs, g) for _ in range(4000)]
    counts = np.bincount(draws, minlength=5) / len(draws)
    assert counts[1] == 0 and counts[4] == 0
    p = probs.numpy()
    assert np.all(np.abs(counts - p) <= 4 * np.sqrt(p * (1 - p) / len(draws)))  # within 4 standard errors
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert [draw_token(probs, g1) for _ in range(50)] == [draw_token(probs, g2) for _ in range(50)]


def _dist() -> Distribution:
    return reshape(np.log([0.05, 0.5, 0.15, 0.3]), SamplingConfig(temperature=0.8, top_k=2))


def test_top_entries_for_the_chart():
    strings = ["a", "␣b", "c", "d"]
    rows = top_entries(_dist(), strings, n=3)
    assert [r.token_id for r in rows] == [1, 3, 2]
    assert [r.text for r in rows] == ["␣b", "d", "c"]
    assert [r.kept for r in rows] == [True, True, False]
    assert rows[2].p_final == 0.0 and rows[2].p_original == pytest.approx(0.15)
    assert rows[0].p_final + rows[1].p_final == pytest.approx(1.0)
    assert rows[0].p_tempered > rows[0].p_original  # T < 1 sharpens
    assert len(top_entries(_dist(), strings, n=99)) == 4
    with pytest.raises(SettingsError, match=re.escape("n must be at least 1 (try 15).")):
        top_entries(_dist(), strings, n=0)


def test_distribution_chart_greys_cut_tokens():
    rows = top_entries(_dist(), ["a", "b", "c", "d"], n=4)
    frame = distribution_frame(rows)
    assert len(frame) == 8 and set(frame["stage"]) == {"model (T = 1)", "final (drawn from)"}
    spec = distribution_chart(rows, title="next token").to_dict()
    colour = spec["encoding"]["color"]
    assert colour["condition"]["test"] == "datum.kept" and colour["value"] == "#e2e8f0"
    assert spec["encoding"]["yOffset"]["field"] == "stage"
    with_tempered = distribution_frame(rows, show_tempered=True)
    assert len(with_tempered) == 12
    many = [TokenChoice(i, str(i), 0.0, 0.0, 0.0, True) for i in range(61)]
    with pytest.raises(ValueError, match="too many to draw"):
        distribution_chart(many)
