"""More "What if?" experiments: steering vectors, positions removed or shuffled, and embedding arithmetic
(token rows and MiniLM sentence vectors) — exact maths on every family, real behaviour on SmolLM2, and
their three tabs under AppTest, each opened first."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from test_experiments import open_tab
from test_families import BUILDERS
from test_pages import assert_clean, check_shown_passed, metrics
from test_trace import assert_passes

from core.errors import InputError, SettingsError
from core.experiments.arithmetic import (
    FIRST,
    MEAN,
    ExpectedRank,
    candidates_from_text,
    cosines,
    sentence_analogy,
    token_analogy,
    vector_check,
)
from core.experiments.compare import FORWARD, applied, captured
from core.experiments.reorder import (
    REMOVED,
    SHUFFLED_KEPT,
    SHUFFLED_RENUMBERED,
    first_block_check,
    parse_order,
    position_change,
    reordered,
    shuffled_order,
)
from core.experiments.steering import (
    IN,
    LAST,
    OUT,
    residuals,
    steer,
    steering,
    steering_check,
    steering_vector,
    token_of,
)
from core.experiments.steering import (
    MEAN as OVER_TOKENS,
)
from core.inspection.positions import mlp_width, position_effect, position_run
from core.inspection.tokens import embedding_matrix, vocab_strings
from core.model.loading import gpt2_tokenizer, wrap
from core.retrieval.embeddings import cosine_reduction_length, row_norms
from core.tolerance import check_close, float32_tolerance, float64_tolerance
from tests.fixtures_search import minilm  # noqa: F401  (fixture)

TEXT = "The quick brown fox jumps over the lazy"
TOWARD, AWAY = ("I love this", "What a day"), ("I hate this", "What a mess")


@pytest.fixture(scope="module")
def gpt2_vocab(tokenizer):
    loaded = wrap(BUILDERS["gpt2"](len(tokenizer)), tokenizer, spec="gpt2", name="gpt2")
    matrix = embedding_matrix(loaded.model)
    return loaded, vocab_strings(tokenizer), row_norms(matrix), matrix


def _no_hooks_left(loaded) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in loaded.model.modules())


def _plain_logits(loaded, ids) -> np.ndarray:
    with torch.inference_mode():
        out = loaded.model(input_ids=torch.as_tensor(np.asarray(ids))[None], use_cache=False)
    return out.logits[0, -1].float().numpy()


def _ids(loaded, text: str) -> np.ndarray:
    return np.asarray(loaded.tokenizer(text)["input_ids"])


# ---------------------------------------------------------------- steering


def test_alpha_zero_reproduces_the_original_exactly(family_model):
    vector = steering_vector(family_model, TOWARD, AWAY, layer=1)
    result = steer(family_model, TEXT, vector, 0.0, n_continue=4)
    assert result.max_abs_dlogit == 0.0 and result.kl == 0.0
    assert result.unchanged_check.summary() == "exact"
    assert result.changed.continuation_ids == result.original.continuation_ids
    assert _no_hooks_left(family_model)


@pytest.mark.parametrize("where", [OUT, IN])
def test_steering_adds_exactly_alpha_v_and_nothing_upstream(family_model, where):
    vector = steering_vector(family_model, TOWARD, AWAY, layer=1, where=where)
    assert vector.norm > 0
    for alpha in (1.0, -2.5):
        assert_passes(steering_check(family_model, TEXT, vector, alpha))
    # Block 0 runs before the steered point: its output is untouched, bit for bit.
    x = torch.as_tensor(_ids(family_model, TEXT))[None]
    with torch.inference_mode():
        with captured(family_model, {"blocks.0.out": FORWARD}) as got:
            family_model.model(input_ids=x, use_cache=False)
        before = got["blocks.0.out"].clone()
        with (
            applied(family_model, steering(vector, 3.0)),
            captured(family_model, {"blocks.0.out": FORWARD}) as got,
        ):
            family_model.model(input_ids=x, use_cache=False)
    assert torch.equal(got["blocks.0.out"], before)
    assert steer(family_model, TEXT, vector, 3.0, n_continue=0).max_abs_dlogit > 0


def test_steering_vector_is_the_difference_of_mean_residuals(tiny_llama):
    for where in (OUT, IN):
        for reduce in (LAST, OVER_TOKENS):
            vector = steering_vector(tiny_llama, TOWARD, AWAY, layer=1, where=where, reduce=reduce)
            sides = []
            for prompts in (TOWARD, AWAY):
                rows = [residuals(tiny_llama, p, 1, where).astype(np.float64) for p in prompts]
                sides.append(np.mean([r[-1] if reduce == LAST else r.mean(axis=0) for r in rows], axis=0))
            assert_passes(
                check_close(vector.vector, sides[0] - sides[1], reduction_length=8, reference=sides)
            )
    # The residual entering block 1 is the one leaving block 0.
    assert np.array_equal(residuals(tiny_llama, TEXT, 1, IN), residuals(tiny_llama, TEXT, 0, OUT))


def test_steering_refuses_bad_settings_with_a_message(tiny_gpt2):
    with pytest.raises(InputError, match=re.escape("Type at least one prompt on each side")):
        steering_vector(tiny_gpt2, ["  "], AWAY, layer=0)
    with pytest.raises(SettingsError, match=re.escape("Layer must be between 0 and 1, not 2.")):
        steering_vector(tiny_gpt2, TOWARD, AWAY, layer=2)
    with pytest.raises(SettingsError, match=re.escape("Reduce each prompt by last or mean, not 'max'.")):
        steering_vector(tiny_gpt2, TOWARD, AWAY, layer=0, reduce="max")
    vector = steering_vector(tiny_gpt2, TOWARD, AWAY, layer=0)
    with pytest.raises(SettingsError, match=re.escape("α must be a number between −1000 and 1000, not inf.")):
        steering(vector, float("inf"))


def test_token_of_follows_the_first_piece_and_says_so(tokenizer):
    assert token_of(tokenizer, "") == (None, "")
    assert token_of(tokenizer, " great") == (tokenizer(" great")["input_ids"][0], "")
    token_id, note = token_of(tokenizer, " Vectorlabish")
    pieces = tokenizer(" Vectorlabish")["input_ids"]
    assert len(pieces) > 1 and token_id == pieces[0]
    assert note.startswith(f"' Vectorlabish' splits into {len(pieces)} tokens; the first,")


# ---------------------------------------------------------------- positions removed or shuffled


def test_order_as_written_reproduces_the_original_exactly(family_model):
    for mode in (SHUFFLED_KEPT, SHUFFLED_RENUMBERED):
        run = reordered(family_model, TEXT, mode, None, n_continue=4)
        assert run.comparison.max_abs_dlogit == 0.0, mode
        assert run.comparison.changed.continuation_ids == run.comparison.original.continuation_ids
        assert run.order == tuple(range(len(run.order)))
    assert _no_hooks_left(family_model)


def test_removed_positions_are_the_positional_stations_run(family_model):
    """The experiment's changed run is exactly `positions_removed`'s, and the original is untouched."""
    run = reordered(family_model, TEXT, REMOVED, n_continue=2)
    assert np.array_equal(run.comparison.changed.logits, position_run(family_model, TEXT, False).logits)
    assert np.array_equal(
        run.comparison.original.logits, _plain_logits(family_model, _ids(family_model, TEXT))
    )
    assert run.positions == (None,) * len(run.order)
    assert _no_hooks_left(family_model)


def test_renumbered_shuffle_is_the_reordered_text_typed_in(family_model):
    ids = _ids(family_model, TEXT)
    order = shuffled_order(len(ids), seed=3)
    run = reordered(family_model, TEXT, SHUFFLED_RENUMBERED, order, n_continue=0)
    assert np.array_equal(run.comparison.changed.logits, _plain_logits(family_model, ids[list(order)]))
    assert run.positions == tuple(range(len(ids)))


def test_shuffle_keeping_positions_keeps_block_0_at_the_last_slot(family_model):
    """Each token keeps its position and the last stays last: block 0 there sees the same (token,
    position) pairs. Renumbered, the same tokens get other positions and block 0 tells them apart."""
    ids = _ids(family_model, TEXT)
    order = shuffled_order(len(ids), seed=1, keep_last=True)
    assert order != tuple(range(len(ids))) and order[-1] == len(ids) - 1
    kept = first_block_check(family_model, TEXT, order)
    assert_passes(kept)
    x = torch.as_tensor(ids)[None]
    with torch.inference_mode(), position_change(family_model, SHUFFLED_RENUMBERED, order) as change:
        with applied(family_model, change), captured(family_model, {"blocks.0.out": FORWARD}) as got:
            family_model.model(input_ids=x, use_cache=False)
        renumbered = got["blocks.0.out"][0, -1].double().numpy()
        with captured(family_model, {"blocks.0.out": FORWARD}) as got:
            family_model.model(input_ids=x, use_cache=False)
        original = got["blocks.0.out"][0, -1].double().numpy()
    n = len(ids) + 2 * family_model.info.d_model + mlp_width(family_model)
    moved = check_close(renumbered, original, reduction_length=n, reference=np.abs(original))
    assert not moved.passed, moved
    # Kept positions: later blocks differ all the same, since the causal mask follows the new order.
    assert reordered(family_model, TEXT, SHUFFLED_KEPT, order, n_continue=0).comparison.max_abs_dlogit > 0


def test_orders_are_checked_and_parsed():
    assert parse_order("2, 0 1", 3) == (2, 0, 1)
    with pytest.raises(InputError, match=re.escape("(missing: [1, 2]; out of range or repeated: [0, 5])")):
        parse_order("0 0 5", 3)
    with pytest.raises(InputError, match=re.escape("The order holds something that is not a token number")):
        parse_order("0 one 2", 3)
    with pytest.raises(InputError, match=re.escape("Type the new order as token numbers 0 to 2, e.g.")):
        parse_order("  ", 3)
    for seed in range(5):
        order = shuffled_order(9, seed)
        assert sorted(order) == list(range(9)) and order[-1] == 8 and order == shuffled_order(9, seed)
    assert sorted(shuffled_order(9, 0, keep_last=False)) == list(range(9))


def test_first_block_check_needs_the_last_token_last(tiny_gpt2):
    n = len(_ids(tiny_gpt2, TEXT))
    with pytest.raises(InputError, match=re.escape("Keep the last token last")):
        first_block_check(tiny_gpt2, TEXT, [n - 1, *range(n - 1)])


# ---------------------------------------------------------------- embedding arithmetic


def test_token_arithmetic_is_the_row_sum_and_ranks_like_brute_force(gpt2_vocab):
    loaded, strings, norms, matrix = gpt2_vocab
    analogy = token_analogy(loaded.tokenizer, strings, norms, matrix, "king", "man", "woman", "queen", k=10)
    [a], [b], [c] = (w.token_ids for w in analogy.tokens)
    rows = matrix.astype(np.float64)
    expected = rows[a] - rows[b] + rows[c]
    assert_passes(
        check_close(analogy.vector, expected, reduction_length=2, reference=rows[[a, b, c]], eps=2.2e-16)
    )
    assert_passes(vector_check(loaded.model, analogy, MEAN))
    # Brute force in float64 over the whole vocabulary, a, b and c excluded.
    ref = rows @ expected / (np.linalg.norm(rows, axis=1) * np.linalg.norm(expected))
    ref[[a, b, c]] = -np.inf
    d = matrix.shape[1]
    tol = float32_tolerance(1.0, cosine_reduction_length(d)) + float64_tolerance(1.0, d)
    best = np.sort(ref)[::-1]
    for place, hit in enumerate(analogy.hits):
        assert hit.index not in (a, b, c)
        assert abs(hit.cosine - ref[hit.index]) <= tol
        assert ref[hit.index] >= best[place] - 2 * tol  # the place-th best, up to near-ties
    target = analogy.expected
    t = loaded.tokenizer(" queen")["input_ids"][0]
    assert target.index == t
    assert 1 + np.sum(ref > ref[t] + 2 * tol) <= target.rank <= 1 + np.sum(ref > ref[t] - 2 * tol)


def test_words_that_split_use_the_mean_or_the_first_piece_and_say_so(gpt2_vocab):
    loaded, strings, norms, matrix = gpt2_vocab
    word = "Vectorlabish"
    pieces = loaded.tokenizer(" " + word)["input_ids"]
    assert len(pieces) > 1
    rows = matrix.astype(np.float64)
    for mode, row in ((MEAN, rows[pieces].mean(axis=0)), (FIRST, rows[pieces[0]])):
        analogy = token_analogy(
            loaded.tokenizer, strings, norms, matrix, word, "man", "woman", word, mode=mode
        )
        first = analogy.tokens[0]
        assert first.splits and first.token_ids == tuple(pieces)
        assert first.how == (
            f"the mean of its {len(pieces)} pieces" if mode == MEAN else f"its first piece of {len(pieces)}"
        )
        c = analogy.tokens[2].token_ids[0]
        b = analogy.tokens[1].token_ids[0]
        assert_passes(
            check_close(
                analogy.vector,
                row - rows[b] + rows[c],
                reduction_length=len(pieces) + 2,
                reference=rows[pieces],
            )
        )
        assert_passes(vector_check(loaded.model, analogy, mode))
        assert set(pieces) <= set(analogy.excluded)
        # The expected answer is a itself: excluded, so it cannot be ranked, and the verdict says why.
        assert analogy.expected.rank is None
        assert "it is one of a, b, c, which are excluded" in analogy.expected.verdict()
    split = token_analogy(loaded.tokenizer, strings, norms, matrix, "king", "man", "woman", word)
    assert split.expected.index == pieces[0] and split.expected.rank is not None
    assert split.expected.note.startswith(f"'{word}' splits into {len(pieces)} tokens")


def test_arithmetic_refuses_empty_words_with_a_message(gpt2_vocab):
    loaded, strings, norms, matrix = gpt2_vocab
    with pytest.raises(InputError, match=re.escape("Type a word for b.")):
        token_analogy(loaded.tokenizer, strings, norms, matrix, "king", " ", "woman")
    with pytest.raises(SettingsError, match=re.escape("Ask for at least one nearest candidate, not 0.")):
        token_analogy(loaded.tokenizer, strings, norms, matrix, "king", "man", "woman", k=0)
    with pytest.raises(InputError, match=re.escape("a − b + c is the zero vector")):
        cosines(matrix, norms, np.zeros(matrix.shape[1]))


def test_verdicts_say_when_the_analogy_fails_or_c_alone_finds_it():
    caveat = ExpectedRank("queen", 5, 1, 0.7, 1, "")
    assert caveat.found and "the nearest neighbour of c already finds it" in caveat.verdict()
    helped = ExpectedRank("queen", 5, 1, 0.7, 44, "")
    assert (
        helped.verdict()
        == "'queen' is the top hit, and c alone ranks it #44: adding a − b moved it to the top."
    )
    failed = ExpectedRank("Rome", 5, 66, 0.5, 117, "")
    assert not failed.found
    assert (
        failed.verdict()
        == "The analogy fails here: 'Rome' is at rank 66 (c alone ranks it #117; a − b moved it up)."
    )


def test_sentence_arithmetic_on_minilm(minilm):  # noqa: F811
    candidates = candidates_from_text("queen\nprincess\n\nking\nqueen\nwoman\nbanana")
    assert candidates == ["queen", "princess", "king", "woman", "banana"]
    analogy = sentence_analogy(minilm, "king", "man", "woman", candidates, expected="empress", k=10)
    everything = [*candidates, "empress"]  # the expected answer is added to the candidates
    vectors = minilm.encode(["king", "man", "woman", *everything]).astype(np.float64)
    expected = vectors[0] - vectors[1] + vectors[2]
    assert_passes(check_close(analogy.vector, expected, reduction_length=2, reference=vectors[:3]))
    assert analogy.excluded == (2, 3)  # "king" and "woman" are a and c
    ref = vectors[3:] @ expected / (np.linalg.norm(vectors[3:], axis=1) * np.linalg.norm(expected))
    order = [i for i in np.argsort(-ref) if i not in (2, 3)]
    assert [h.index for h in analogy.hits] == order
    assert [h.text for h in analogy.hits] == [everything[i] for i in order]
    assert analogy.expected.rank == order.index(5) + 1
    assert analogy.expected.note == "it was not among the candidates, so it was added to them"
    base = vectors[3:] @ vectors[2] / np.linalg.norm(vectors[3:], axis=1)
    assert analogy.expected.baseline_rank == [i for i in np.argsort(-base) if i not in (2, 3)].index(5) + 1
    with pytest.raises(InputError, match=re.escape("Every candidate is a, b or c itself")):
        sentence_analogy(minilm, "king", "man", "woman", ["king", "woman"])


# ---------------------------------------------------------------- SmolLM2


@pytest.mark.slow
def test_smollm2_king_minus_man_plus_woman_as_it_really_ranks(smollm2):
    matrix = embedding_matrix(smollm2.model)
    strings = vocab_strings(smollm2.tokenizer)
    analogy = token_analogy(
        smollm2.tokenizer, strings, row_norms(matrix), matrix, "king", "man", "woman", "queen"
    )
    rows = matrix.astype(np.float64)
    ids = [w.token_ids[0] for w in analogy.tokens]
    assert all(not w.splits for w in analogy.tokens)
    query = rows[ids[0]] - rows[ids[1]] + rows[ids[2]]
    ref = rows @ query / (np.linalg.norm(rows, axis=1) * np.linalg.norm(query))
    base = rows @ rows[ids[2]] / (np.linalg.norm(rows, axis=1) * np.linalg.norm(rows[ids[2]]))
    ref[ids] = base[ids] = -np.inf
    t = analogy.expected.index
    assert analogy.expected.rank == 1 + np.sum(ref > ref[t])
    assert analogy.expected.baseline_rank == 1 + np.sum(base > base[t])
    assert analogy.hits[0].index == int(np.argmax(ref))


@pytest.mark.slow
def test_smollm2_without_positions_predicts_otherwise_exactly_as_station_2_says(smollm2):
    text = "The capital of France is Paris, and the capital of Italy is"
    run = reordered(smollm2, text, REMOVED, n_continue=0)
    station = position_effect(smollm2, text)
    assert np.array_equal(run.comparison.changed.logits, station.removed.logits)
    assert np.array_equal(run.comparison.original.logits, station.kept.logits)
    logits = run.comparison.original.logits
    moved = check_close(run.comparison.changed.logits, logits, reduction_length=smollm2.info.d_model)
    assert not moved.passed, moved


# ---------------------------------------------------------------- the three tabs under AppTest (each opened)


def test_steer_tab_alpha_slider_and_identity(tiny_model_dir):
    at = open_tab(tiny_model_dir, "Steer", TEXT)
    assert_clean(at)
    assert check_shown_passed(at, "Identity check: α = 0")
    assert check_shown_passed(at, "steered − original at blocks.1.out vs α·v")
    at.slider(key="steer_alpha").set_value(0.0).run()
    assert_clean(at)
    assert metrics(at)["max |Δlogit|"] == "0"
    at.text_area(key="steer_toward").set_value("  ").run()
    assert [e.value for e in at.error] == [
        "Type at least one prompt on each side (toward and away from) to build a vector."
    ]


def test_positions_tab_modes(tiny_model_dir):
    at = open_tab(tiny_model_dir, "Positions", TEXT)
    assert_clean(at)
    assert check_shown_passed(at, "Identity check: the order as written, positions kept")
    assert check_shown_passed(at, "Block 0 at the last slot: shuffled vs original")
    at.radio(key="pos_exp_mode").set_value(REMOVED).run()
    assert_clean(at)
    assert check_shown_passed(at, "Same logits as station 2's run without positions")
    at.radio(key="pos_exp_mode").set_value(SHUFFLED_KEPT).run()
    at.radio(key="pos_exp_how").set_value("typed").run()
    n = len(gpt2_tokenizer()(TEXT)["input_ids"])
    at.text_input(key=f"pos_exp_typed_{n}").set_value("0 0 1").run()
    [error] = at.error
    assert error.value.startswith("The order must use each token number 0 to")


def test_arithmetic_tab_tokens_and_bad_input(tiny_gpt2_dir):
    at = open_tab(tiny_gpt2_dir, "Embedding arithmetic", TEXT)
    assert_clean(at)
    assert check_shown_passed(at, "a − b + c here vs from the model's own embedding layer")
    at.text_input(key="arith_c").set_value("Vectorlabish").run()
    assert_clean(at)
    assert any("'Vectorlabish' splits into" in i.value and "the mean of its" in i.value for i in at.info)
    at.text_input(key="arith_a").set_value("").run()
    assert [e.value for e in at.error] == ["Type a word for a."]


def test_arithmetic_tab_sentences(tiny_gpt2_dir):
    at = open_tab(tiny_gpt2_dir, "Embedding arithmetic", TEXT)
    at.radio(key="arith_space").set_value("sentence vectors (MiniLM)").run()
    assert_clean(at)
    verdicts = [m.value for m in (*at.success, *at.warning) if "c alone ranks it" in m.value]
    assert len(verdicts) == 1 and verdicts[0].startswith("'queen'")
    at.text_input(key="arith_expected").set_value("")
    at.text_area(key="arith_candidates").set_value("king\nwoman").run()
    assert [e.value for e in at.error] == [
        "Every candidate is a, b or c itself: add candidates that are none of them."
    ]


@pytest.mark.slow
def test_smollm2_love_minus_hate_steers_great_against_terrible(smollm2):
    """Measured on SmolLM2: 'I love' − 'I hate' at block 6 does not raise p(' great') itself (mass moves
    to ' about', ' a'…), but it moves the odds of ' great' against ' terrible' with the sign of α."""
    vector = steering_vector(smollm2, ["I love"], ["I hate"], layer=6)
    great, terrible = (token_of(smollm2.tokenizer, t)[0] for t in (" great", " terrible"))
    odds = []
    for alpha in (-0.5, 0.0, 0.5):
        logits = torch.tensor(  # a copy: the comparison's logits are read-only
            steer(smollm2, "I think this movie is", vector, alpha, n_continue=0).changed.logits
        )
        log_p = torch.log_softmax(logits.double(), dim=-1)
        odds.append(float(log_p[great] - log_p[terrible]))
    assert odds[0] < odds[1] < odds[2], odds
