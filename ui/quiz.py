"""Predict, then reveal: the questions that end each model station, in an expander computed only when
opened, drawn with a Reveal button, their answers kept per (model, text, question) and a session score."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd
import streamlit as st

from core.errors import VectorLabError
from core.inspection import quiz
from core.inspection.attention import head_patterns
from core.inspection.layers import layer_labels, residual_stats
from ui import state
from ui.widgets import lazy_section

ANSWER_PREFIX = "vl_quiz_"  # + question id: the learner's revealed answer (kept with keep_result)
SCORE = "vl_quiz_score"  # the session's tally over every model, text and question


@dataclass(frozen=True)
class Reveal:
    """What the learner picked before the answer was shown."""

    choice: str
    correct: bool


@dataclass(frozen=True)
class Score:
    """Every question answered this session, once each: (model key, text, question id) → correct."""

    answers: dict = field(default_factory=dict)

    @property
    def answered(self) -> int:
        return len(self.answers)

    @property
    def correct(self) -> int:
        return sum(self.answers.values())

    def with_answer(self, key: tuple, correct: bool) -> Score:
        return Score({**self.answers, key: correct})


_SCORE_KEY = ("session",)  # the score spans every model and text, so its key names none of them


def score() -> Score:
    return state.kept_result(SCORE, _SCORE_KEY) or Score()


# --------------------------------------------------------------------------- the questions per station


def _tokens(loaded, trace) -> list[quiz.Question]:
    strings, norms, embeddings = state.vocabulary(loaded, spinner=False)  # inside the cached _questions
    return [
        quiz.nearest_neighbour_question(trace, embeddings, norms, strings),
        quiz.largest_norm_question(trace),
    ]


def _positions(loaded, trace) -> list[quiz.Question]:
    return [quiz.positions_top_question(state.position_effect(loaded, trace.text))]


def _attention(loaded, trace) -> list[quiz.Question]:
    if trace.n_tokens < 2:
        raise VectorLabError("These questions need a text of at least two tokens.")
    patterns = state.derived(head_patterns, loaded, trace)
    return [quiz.previous_token_question(patterns), quiz.last_token_focus_question(trace)]


def _layers(loaded, trace) -> list[quiz.Question]:
    if trace.n_tokens < 2:
        raise VectorLabError("These questions need a text of at least two tokens.")
    lens = state.logit_lens(loaded, trace, [trace.n_tokens - 2])  # its next token is the last one
    stats = state.derived(residual_stats, loaded, trace)
    return [
        quiz.first_top10_question(lens, layer_labels(trace.n_layer), trace.pieces[-2], trace.pieces[-1]),
        quiz.biggest_turn_question(stats, trace.n_tokens - 1),
    ]


def _output(loaded, trace) -> list[quiz.Question]:
    return [quiz.temperature_entropy_question(trace.last_logits), quiz.top_p_question(trace.last_logits)]


QUESTIONS: dict[int, Callable] = {1: _tokens, 2: _positions, 3: _attention, 4: _layers, 5: _output}


# --------------------------------------------------------------------------- drawing


OPEN_PREFIX = "quiz_open_"  # + station number: the expander's key, True while it is open


@st.cache_resource(show_spinner="Working out the answers…", max_entries=16)
def _questions(
    key: str, text: str, n_tokens: int, station: int, _loaded, _trace
) -> tuple[quiz.Question, ...]:
    """The station's questions, computed once per model, traced text and station (they are frozen, so
    every session may share them). A VectorLabError is not cached: it is cheap to raise again."""
    return tuple(QUESTIONS[station](_loaded, _trace))


def questions_for(loaded, trace, station: int) -> tuple[quiz.Question, ...]:
    """The questions of `station` about this model and text (cached; see `_questions`)."""
    return _questions(state.model_key(loaded), trace.text, trace.n_tokens, station, loaded, trace)


def render_questions(loaded, trace, station: int) -> None:
    """The station's questions about the current model and text, each answered before it is revealed.

    They sit in a closed expander and are computed only once it is opened: some read the whole
    vocabulary, and a page switch should not wait for questions nobody looked at."""
    lazy_section("Predict, then reveal", f"{OPEN_PREFIX}{station}", lambda: _draw(loaded, trace, station))


def _draw(loaded, trace, station: int) -> None:
    st.caption(
        "Answer from what you expect, then reveal: the answer is computed from the model and text in "
        "the sidebar, with the numbers behind it."
    )
    try:
        questions = questions_for(loaded, trace, station)
    except VectorLabError as e:
        st.info(f"No questions for this text: {e}")
        return
    for question in questions:
        _render(loaded, trace, question)
    tally = score()
    st.caption(f"Your score this session: {tally.correct} of {tally.answered} answered correctly.")


def _key(loaded, trace, question: quiz.Question) -> tuple:
    return (state.model_key(loaded), trace.text, question.id)


def _reveal(key: tuple, question: quiz.Question, widget_key: str) -> None:
    choice = st.session_state.get(widget_key)
    if choice is None:
        return
    reveal = Reveal(choice=choice, correct=question.is_correct(choice))
    state.keep_result(ANSWER_PREFIX + question.id, key, reveal)
    state.keep_result(SCORE, _SCORE_KEY, score().with_answer(key, reveal.correct))


def _render(loaded, trace, question: quiz.Question) -> None:
    key = _key(loaded, trace, question)
    # The widget is tied to these options: new options (another text or model) start unanswered.
    digest = hashlib.sha1("\x1f".join(question.options).encode("utf-8")).hexdigest()[:8]
    widget_key = f"quiz_{question.id}_{digest}"
    with st.container(border=True):
        revealed = state.kept_result(ANSWER_PREFIX + question.id, key)
        pick = st.radio if len(question.options) <= 6 else st.selectbox
        extra = {"horizontal": True} if pick is st.radio else {}
        choice = pick(
            question.prompt,
            question.options,
            index=None,
            key=widget_key,
            disabled=revealed is not None,
            **extra,
        )
        if revealed is None:
            st.button(
                "Reveal",
                key=f"quiz_reveal_{question.id}",
                disabled=choice is None,
                on_click=_reveal,
                args=(key, question, widget_key),
                help="Pick an answer first; the page then shows the one computed from the model.",
            )
            return
        answer = question.options[question.answer]
        if revealed.correct:
            st.success(f"Right: **{answer}**. {question.explanation}")
        else:
            st.warning(f"You said **{revealed.choice}**; the answer is **{answer}**. {question.explanation}")
        st.dataframe(
            pd.DataFrame(question.evidence, columns=["", "computed from the model"]),
            hide_index=True,
            width="stretch",
        )
