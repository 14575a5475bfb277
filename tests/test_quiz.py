"""Predict, then reveal: every question's answer equals an independent computation on the live model,
and a reveal on a page shows the computed answer and moves the session score."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch

from core.errors import InputError
from core.inspection import quiz
from core.inspection.attention import head_patterns
from core.inspection.layers import LogitLens, layer_labels, logit_lens, residual_stats
from core.inspection.positions import position_effect
from core.inspection.tokens import embedding_matrix, readable, vocab_strings
from core.inspection.trace import run_trace
from core.retrieval.embeddings import cosines_to_rows, row_norms
from core.tolerance import CheckResult
from tests.test_pages import app_test, assert_clean
from ui import quiz as quiz_ui

TEXT = "The cat sat on the mat because the cat was tired"


@pytest.fixture
def traced(tiny_model):
    return tiny_model, run_trace(tiny_model, TEXT)


def answer_of(question: quiz.Question) -> str:
    return question.options[question.answer]


def test_nearest_neighbour_is_the_highest_cosine_row(traced):
    loaded, trace = traced
    E = embedding_matrix(loaded.model).astype(np.float64)
    strings = vocab_strings(loaded.tokenizer)
    table = embedding_matrix(loaded.model)
    question = quiz.nearest_neighbour_question(trace, table, row_norms(table), strings)
    t = quiz.focus_token(trace)
    assert len(re.findall(r"[A-Za-z]", trace.pieces[t])) >= 2 and trace.pieces[t].strip() == "tired"
    x = E[trace.token_ids[t]]
    cos = E @ x / (np.linalg.norm(E, axis=1) * np.linalg.norm(x))
    cos[trace.token_ids[t]] = -np.inf
    assert answer_of(question) == strings[int(np.argmax(cos))]
    assert len(question.options) == 4 and question.options == tuple(sorted(question.options))


def _nearest_by_full_float64_sort(embeddings, token_id, ranks=(0, 25, 250, 2500)) -> list[tuple[int, float]]:
    """(id, cosine) at each rank of one float64 sort of the whole table, ties to the lower id."""
    rows = embeddings.astype(np.float64)
    sims = cosines_to_rows(rows, row_norms(rows), rows[token_id])
    sims[token_id] = -np.inf
    order = np.argsort(-sims, kind="stable")
    return [(int(order[r]), float(sims[order[r]])) for r in ranks]


def test_nearest_neighbour_ranks_match_a_full_float64_sort_with_near_ties(traced):
    """Rows closer together than float32 can tell sit at every rank the question reads: its options and
    cosines are still those of one float64 sort of the whole table."""
    _, trace = traced
    V, d = 50_257, 32
    token_id = int(trace.token_ids[quiz.focus_token(trace)])
    strings = [f"t{i}" for i in range(V)]
    float32_misorders = 0
    for seed in range(5):
        rng = np.random.default_rng(seed)
        E = rng.normal(size=(V, d))
        order = [i for i, _ in _nearest_by_full_float64_sort(E.astype(np.float32), token_id)]
        for rank, i in zip((0, 25, 250, 2500), order, strict=True):  # a near copy at a far id
            E[V - 1 - rank] = E[i] * (1 + 3e-8) + rng.normal(size=d) * 3e-8
        table = E.astype(np.float32)
        norms = row_norms(table)
        question = quiz.nearest_neighbour_question(trace, table, norms, strings)
        expected = _nearest_by_full_float64_sort(table, token_id)
        assert answer_of(question) == strings[expected[0][0]]
        assert sorted(question.options) == sorted(strings[i] for i, _ in expected)
        shown = dict(zip(question.options, (value for _, value in question.evidence), strict=True))
        assert shown == {strings[i]: f"{cos:.4f}" for i, cos in expected}
        sims32 = cosines_to_rows(table, norms, table[token_id])
        sims32[token_id] = -np.inf
        by_float32 = np.argsort(-sims32, kind="stable")[[0, 25, 250, 2500]]
        float32_misorders += int((by_float32 != [i for i, _ in expected]).any())
    assert float32_misorders > 0  # the near ties are real: a float32 sort alone would get some wrong


def test_largest_norm_is_the_longest_row_of_the_text(traced):
    loaded, trace = traced
    E = embedding_matrix(loaded.model).astype(np.float64)
    norms = {int(i): np.linalg.norm(E[i]) for i in trace.token_ids}
    best = max(norms, key=norms.get)
    question = quiz.largest_norm_question(trace)
    assert answer_of(question) == readable(loaded.tokenizer.decode([best]))
    assert 2 <= len(question.options) <= 4


def test_a_text_of_one_repeated_token_has_no_norm_question(tiny_gpt2):
    trace = run_trace(tiny_gpt2, "the the the")
    if len(set(trace.token_ids.tolist())) == 1:
        with pytest.raises(
            InputError, match=re.escape("This question needs a text with at least two different")
        ):
            quiz.largest_norm_question(trace)
    else:  # " the" and "the" are different tokens: the question stands
        assert quiz.largest_norm_question(trace).options


def _without_positions(model) -> torch.nn.Module:
    """A copy of the model that has no position information: wpe zeroed, or every rotary angle 0."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        if hasattr(model, "transformer"):
            model.transformer.wpe.weight.zero_()
        else:
            model.model.rotary_emb.inv_freq.zero_()
    return model


def test_positions_question_matches_a_model_without_positions(traced):
    loaded, _ = traced
    ids = torch.tensor(loaded.tokenizer(TEXT)["input_ids"])[None]
    with torch.inference_mode():
        kept = int(loaded.model(input_ids=ids).logits[0, -1].argmax())
        removed = int(_without_positions(loaded.model)(input_ids=ids).logits[0, -1].argmax())
    question = quiz.positions_top_question(position_effect(loaded, TEXT))
    assert answer_of(question) == ("Yes, it changes" if kept != removed else "No, it stays the same")


def test_previous_token_head_is_the_argmax_of_the_weights(traced):
    _, trace = traced
    A = np.stack(trace.attention_layers).astype(np.float64)  # [L, H, T, T]
    T = trace.n_tokens
    share = np.array(
        [
            [np.mean([A[ell, h, t, t - 1] for t in range(1, T)]) for h in range(A.shape[1])]
            for ell in range(A.shape[0])
        ]
    )
    layer = int(np.argmax(share.max(axis=1)))
    question = quiz.previous_token_question(head_patterns(trace))
    assert f"layer {layer}" in question.prompt
    assert answer_of(question) == f"head {int(np.argmax(share[layer]))}"
    assert question.options == tuple(f"head {h}" for h in range(trace.n_head))


def test_last_token_focus_is_the_most_attended_token(traced):
    _, trace = traced
    weights = np.stack(trace.attention_layers)[-1, :, -1, :].astype(np.float64).mean(0)
    best = int(np.argmax(weights))
    question = quiz.last_token_focus_question(trace)
    assert answer_of(question) == f"{best}: {readable(trace.pieces[best])}"


def test_first_top10_depth_matches_an_independent_lens(traced):
    loaded, trace = traced
    model = loaded.model
    norm = model.transformer.ln_f if hasattr(model, "transformer") else model.model.norm
    T = trace.n_tokens
    target = int(trace.token_ids[T - 1])
    first = None
    with torch.inference_mode():
        for depth in range(trace.n_layer + 1):
            logits = model.lm_head(norm(torch.tensor(np.array(trace.residual[depth, T - 2])))).numpy()
            if (logits > logits[target]).sum() < 10:
                first = depth
                break
    names = layer_labels(trace.n_layer)
    lens = logit_lens(loaded, trace, [T - 2])
    question = quiz.first_top10_question(lens, names, trace.pieces[-2], trace.pieces[-1])
    assert answer_of(question) == (names[first] if first is not None else "never")
    assert f"after '{readable(trace.pieces[-2])}'" in question.prompt
    assert f"token '{readable(trace.pieces[-1])}'" in question.prompt


def _lens(ranks) -> LogitLens:
    ranks = np.asarray(ranks)[:, None]
    zeros = np.zeros((len(ranks), 1, 3))
    return LogitLens(
        np.array([0]), zeros, zeros, np.array([7]), ranks, zeros[..., 0], zeros[..., 0], CheckResult(0, 0)
    )


def test_first_top10_depth_is_the_first_rank_below_10():
    names = ["input", "after block 0", "after block 1"]
    assert answer_of(quiz.first_top10_question(_lens([400, 9, 0]), names)) == "after block 0"
    assert answer_of(quiz.first_top10_question(_lens([10, 12, 11]), names)) == "never"
    assert answer_of(quiz.first_top10_question(_lens([0, 50, 0]), names)) == "input"


def test_biggest_turn_is_the_lowest_cosine(traced):
    _, trace = traced
    r = trace.residual[:, -1].astype(np.float64)
    cos = [r[i + 1] @ r[i] / (np.linalg.norm(r[i + 1]) * np.linalg.norm(r[i])) for i in range(trace.n_layer)]
    question = quiz.biggest_turn_question(residual_stats(trace), trace.n_tokens - 1)
    assert answer_of(question) == f"block {int(np.argmin(cos))}"


def _entropy(logits, temperature=1.0) -> float:
    z = np.asarray(logits, np.float64) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    return float(-(p[p > 0] * np.log(p[p > 0])).sum())


def test_temperature_question_matches_numpy_entropies(traced):
    _, trace = traced
    question = quiz.temperature_entropy_question(trace.last_logits, 2.0)
    before, after = _entropy(trace.last_logits), _entropy(trace.last_logits, 2.0)
    assert answer_of(question) == ("raise it" if after > before else "lower it")
    # Equal logits: every temperature gives the same uniform distribution.
    assert answer_of(quiz.temperature_entropy_question(np.zeros(50), 2.0)) == "leave it unchanged"


def _kept_by_top_p(logits, top_p) -> int:
    z = np.asarray(logits, np.float64)
    p = np.sort(np.exp(z - z.max()) / np.exp(z - z.max()).sum())[::-1]
    before = np.concatenate([[0.0], np.cumsum(p)[:-1]])  # mass ranked above each token
    return max(1, int((before < top_p).sum()))


@pytest.mark.parametrize("scale", [0.0, 1.0, 5.0, 40.0])
def test_top_p_question_counts_like_numpy(scale):
    logits = np.random.default_rng(0).normal(size=5000) * scale
    n = _kept_by_top_p(logits, 0.9)
    question = quiz.top_p_question(logits, 0.9)
    low, high = next((lo, hi) for lo, hi in quiz.TOP_P_BINS if n >= lo and (hi is None or n <= hi))
    assert answer_of(question) == question.options[quiz.TOP_P_BINS.index((low, high))]
    assert question.evidence[0] == ("tokens kept", f"{n:,}")


def test_top_p_question_on_the_model(traced):
    _, trace = traced
    n = _kept_by_top_p(trace.last_logits, 0.9)
    assert quiz.top_p_question(trace.last_logits, 0.9).evidence[0][1] == f"{n:,}"


def test_a_question_refuses_an_answer_outside_its_options():
    with pytest.raises(ValueError, match=re.escape("answer 2 is not one of the 2 options.")):
        quiz.Question("x", 1, "?", ("a", "b"), 2, "", ())


# ---------------------------------------------------------------- the page


def quiz_radio(at, question_id: str):
    [radio] = [r for r in at.radio if r.key.startswith(f"quiz_{question_id}_")]
    return radio


def score_line(at) -> str:
    return next(c.value for c in at.caption if c.value.startswith("Your score this session"))


def open_quiz(at, station: int):
    """Open the station's "Predict, then reveal" expander and run the page."""
    at.session_state[f"{quiz_ui.OPEN_PREFIX}{station}"] = True
    return at.run()


def test_the_quiz_is_computed_only_when_opened_and_once_per_text(tiny_gpt2_dir, monkeypatch):
    calls = []
    compute = quiz_ui.QUESTIONS[5]

    def counted(loaded, trace):
        calls.append(trace.text)
        return compute(loaded, trace)

    monkeypatch.setitem(quiz_ui.QUESTIONS, 5, counted)
    quiz_ui._questions.clear()
    at = app_test("pages/5_output.py", str(tiny_gpt2_dir), TEXT).run()
    assert_clean(at)
    assert [e.label for e in at.expander if e.label == "Predict, then reveal"] == ["Predict, then reveal"]
    assert calls == [] and not [r for r in at.radio if r.key.startswith("quiz_")]
    open_quiz(at, 5)
    assert_clean(at)
    assert calls == [TEXT]
    assert quiz_radio(at, "output.temperature_entropy").options  # drawn once open
    at.run()  # a rerun, and closing then opening it again, reuse the questions
    at.session_state[f"{quiz_ui.OPEN_PREFIX}5"] = False
    at.run()
    assert not [r for r in at.radio if r.key.startswith("quiz_")]
    open_quiz(at, 5)
    assert calls == [TEXT]
    at.session_state["vl_text"] = "A completely different sentence about rivers"
    at.run()
    assert calls == [TEXT, "A completely different sentence about rivers"]


def test_reveal_shows_the_computed_answer_and_keeps_score(tiny_gpt2_dir):
    at = open_quiz(app_test("pages/5_output.py", str(tiny_gpt2_dir), TEXT), 5)
    assert_clean(at)
    assert score_line(at) == "Your score this session: 0 of 0 answered correctly."
    from core.model.loading import load_model

    logits = run_trace(load_model(str(tiny_gpt2_dir)), TEXT).last_logits
    right = "raise it" if _entropy(logits, 2.0) > _entropy(logits) else "lower it"
    reveal = at.button(key="quiz_reveal_output.temperature_entropy")
    assert reveal.disabled  # nothing picked yet
    quiz_radio(at, "output.temperature_entropy").set_value(right).run()
    at.button(key="quiz_reveal_output.temperature_entropy").click().run()
    assert_clean(at)
    assert any(s.value.startswith(f"Right: **{right}**.") for s in at.success)
    assert score_line(at) == "Your score this session: 1 of 1 answered correctly."
    # A wrong answer to the second question: the computed answer is shown, the score counts it.
    n = _kept_by_top_p(logits, 0.9)
    question = quiz.top_p_question(logits, 0.9)
    wrong = next(o for o in question.options if o != answer_of(question))
    quiz_radio(at, "output.top_p_kept").set_value(wrong).run()
    at.button(key="quiz_reveal_output.top_p_kept").click().run()
    assert_clean(at)
    [warning] = [w.value for w in at.warning if w.value.startswith("You said")]
    assert warning.startswith(f"You said **{wrong}**; the answer is **{answer_of(question)}**. {n:,} of the")
    assert score_line(at) == "Your score this session: 1 of 2 answered correctly."
    # The answer stays revealed on the next run, and counts once.
    at.run()
    assert quiz_radio(at, "output.top_p_kept").disabled
    assert score_line(at) == "Your score this session: 1 of 2 answered correctly."
    # Another text is another question: unanswered again, the session score kept.
    at.session_state["vl_text"] = "A completely different sentence about rivers"
    at.run()
    assert_clean(at)
    assert not quiz_radio(at, "output.top_p_kept").disabled
    assert score_line(at) == "Your score this session: 1 of 2 answered correctly."


def test_a_single_token_text_says_why_there_are_no_questions(tiny_gpt2_dir):
    at = open_quiz(app_test("pages/3_attention.py", str(tiny_gpt2_dir), "Hi"), 3)
    assert_clean(at)
    assert [i.value for i in at.info if i.value.startswith("No questions")] == [
        "No questions for this text: These questions need a text of at least two tokens."
    ]
