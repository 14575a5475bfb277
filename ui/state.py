"""The one place that caches models and traces for Streamlit and names the session-state keys."""

from __future__ import annotations

import os
import threading

import numpy as np
import streamlit as st

from core.errors import VectorLabError

# Session-state keys shared by every page. The values live under plain keys; widgets get their own
# keys and copy into these on change, because Streamlit drops a widget's state on pages that do not
# draw it.
MODEL_SPEC = "vl_model_spec"  # what the user picked: "auto", a Hub id, a directory
MODEL_OTHER = "vl_model_other"  # True while the picker is on "another model…"
TEXT = "vl_text"  # the text every model page traces
MODEL_CHOICE = "vl_model_choice_widget"  # the picker's selectbox
MODEL_CUSTOM = "vl_model_custom_widget"  # free text box for "another model…"
TEXT_WIDGET = "vl_text_widget"  # the sidebar's text area

DEFAULT_TEXT = "The capital of France is Paris, and the capital of Italy is"
MAX_TEXT_CHARS = 20_000  # longer pasted text is cut (the trace keeps 512 tokens anyway)


def default_spec() -> str:
    return os.environ.get("VECTORLAB_MODEL", "auto").strip() or "auto"


def init_state() -> None:
    """Fill in defaults once per browser session."""
    st.session_state.setdefault(MODEL_SPEC, default_spec())
    st.session_state.setdefault(TEXT, DEFAULT_TEXT)
    st.session_state.setdefault(MODEL_OTHER, False)


def current_text() -> str:
    init_state()
    return st.session_state[TEXT]


class _ModelStore:
    """Loaded models shared by every session, newest last; at most `capacity` kept in memory.

    Not `st.cache_resource` on the loader itself: loading reports progress into the page, and
    Streamlit cannot replay elements drawn from inside a cached function.
    """

    def __init__(self, capacity: int = 2) -> None:
        self.capacity = capacity
        self.models: dict[str, object] = {}
        self.lock = threading.Lock()

    def get(self, spec: str, progress):
        from core.models import load_model

        with self.lock:
            if spec in self.models:
                self.models[spec] = self.models.pop(spec)  # mark as most recently used
                return self.models[spec]
            loaded = load_model(spec, progress)
            self.models[spec] = loaded
            while len(self.models) > self.capacity:
                self.models.pop(next(iter(self.models)))
            return loaded


@st.cache_resource(show_spinner=False)
def _store() -> _ModelStore:
    return _ModelStore()


def load_current_model():
    """The model the user picked, loaded once per spec; raises VectorLabError with a message."""
    init_state()
    spec = st.session_state[MODEL_SPEC]
    box = st.empty()
    bar = None

    def progress(fraction: float, message: str) -> None:
        nonlocal bar
        if bar is None:
            bar = box.progress(0.0, text=message)
        bar.progress(min(max(fraction, 0.0), 1.0), text=message)

    try:
        return _store().get(spec, progress)
    finally:
        box.empty()


def require_model():
    """The loaded model, or an error message on the page and a stop."""
    try:
        return load_current_model()
    except VectorLabError as e:
        st.error(str(e))
        st.info("Pick another model in the sidebar — the bundled SmolLM2 always works offline.")
        st.stop()


@st.cache_resource(show_spinner=False, max_entries=6)
def _trace(spec: str, text: str, max_tokens: int, _loaded):
    from core.trace import TraceConfig, run_trace

    return run_trace(_loaded, text, TraceConfig(max_tokens=max_tokens))


def model_key(loaded) -> str:
    """A string that names the loaded model in cache keys."""
    return loaded.info.source + "|" + loaded.info.spec


def require_trace(loaded, max_tokens: int = 512):
    """The trace of the shared text through the loaded model (cached), or a message and a stop."""
    text = current_text()
    try:
        with st.spinner("Running the text through the model…"):
            trace = _trace(model_key(loaded), text, max_tokens, loaded)
    except VectorLabError as e:
        st.error(str(e))
        st.stop()
    if trace.truncated:
        st.warning(
            f"The text has {trace.n_tokens_in_text} tokens; the first {trace.n_tokens} are traced "
            "(attention grows with the square of the length)."
        )
    return trace


@st.cache_resource(show_spinner="Reading the vocabulary…", max_entries=2)
def _vocab(key: str, _loaded):
    from core.embeddings import unit_rows
    from core.tokens import embedding_matrix, vocab_strings

    matrix = embedding_matrix(_loaded.model)
    return vocab_strings(_loaded.tokenizer), np.ascontiguousarray(unit_rows(matrix)), matrix


def vocabulary(loaded):
    """(readable strings [V], unit-length embedding rows [V, d], raw embedding rows [V, d])."""
    return _vocab(model_key(loaded), loaded)


@st.cache_resource(show_spinner=False)
def gpt2_tokenizer():
    from core.models import gpt2_tokenizer as build

    return build()


@st.cache_resource(show_spinner="Reading every layer through the unembedding…", max_entries=8)
def _lens(key: str, text: str, positions: tuple[int, ...], _loaded, _trace):
    from core.layers import logit_lens

    return logit_lens(_loaded, _trace, positions)


def logit_lens(loaded, trace, positions) -> object:
    """The logit lens for these positions, computed once per model, text and window."""
    return _lens(model_key(loaded), trace.text, tuple(int(p) for p in positions), loaded, trace)


@st.cache_resource(show_spinner=False, max_entries=16)
def _derived(name: str, key: str, text: str, _fn, _trace):
    return _fn(_trace)


def derived(name: str, fn, loaded, trace):
    """`fn(trace)` computed once per model and text (e.g. head patterns, the all-heads check)."""
    return _derived(name, model_key(loaded), trace.text, fn, trace)


@st.cache_resource(show_spinner=False)
def training_job():
    """The one training job of this process, shared by every browser session."""
    from core.jobs import TrainingJob

    return TrainingJob()
