"""The one place that caches models and traces for Streamlit, names the session-state keys, and
keeps results across reruns keyed by the model's identity and their inputs."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Container
from pathlib import Path

import numpy as np
import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from core.errors import DataDirError, VectorLabError
from core.model.store import ModelStore
from ui.cores import share_cores, yield_to_other_sessions

log = logging.getLogger(__name__)

# Session-state keys shared by every page. The values live under plain keys; widgets get their own
# keys and copy into these on change (see `persist`), because Streamlit drops a widget's state on
# pages that do not draw it.
MODEL_SPEC = "vl_model_spec"  # what the user picked: "auto", a Hub id, a directory
MODEL_OTHER = "vl_model_other"  # True while the picker is on "another model…"
TEXT = "vl_text"  # the text every model page traces
MODEL_CHOICE = "vl_model_choice_widget"  # the picker's selectbox
MODEL_CUSTOM = "vl_model_custom_widget"  # free text box for "another model…"
TEXT_WIDGET = "vl_text_widget"  # the sidebar's text area

# Results kept across reruns (see keep_result): the session key each one lives under.
GENERATION = "vl_generation"  # the output page's last generation

PERSIST_PREFIX = "vl_kept_"  # + widget key: the remembered value of a widget drawn with persist()

DEFAULT_TEXT = "The capital of France is Paris, and the capital of Italy is"
TRACE_TOKENS = 512  # a page's trace keeps the text's first tokens (attention grows with the square)
MAX_TEXT_CHARS = 20_000  # longer pasted text is cut (the trace keeps TRACE_TOKENS tokens anyway)


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


# --------------------------------------------------------------------------- widgets across pages


@dataclasses.dataclass(frozen=True)
class Between:
    """The numbers from `low` to `high`, both included: what a slider or number box allows now."""

    low: float
    high: float

    def __contains__(self, value) -> bool:
        return isinstance(value, int | float) and self.low <= value <= self.high


def _copy_back(widget_key: str, plain: str) -> None:
    st.session_state[plain] = st.session_state[widget_key]


def persist(widget_key: str, default, allowed: Container | None = None, plain: str | None = None) -> dict:
    """Keyword arguments (`key`, `on_change`, `args`) for a widget whose value survives visits to
    other pages: the value lives under a plain key (`plain`, else PERSIST_PREFIX + `widget_key`), the
    widget is seeded from it on every run and copies its value back on change.

    `allowed` (a range, a list…) holds the values the widget can take now; a remembered value outside
    it (a token past the end of a shorter text, a layer the new model lacks) goes back to `default`.
    Draw the widget without its own default (`value=`, `index=`): it comes from here.
    """
    plain = plain or PERSIST_PREFIX + widget_key
    st.session_state.setdefault(plain, default)
    if allowed is not None and st.session_state[plain] not in allowed:
        st.session_state[plain] = default
    st.session_state[widget_key] = st.session_state[plain]
    return {"key": widget_key, "on_change": _copy_back, "args": (widget_key, plain)}


# --------------------------------------------------------------------------- results across reruns


def keep_result(name: str, key: tuple, value) -> None:
    """Keep `value` across reruns under the session key `name`, with the `key` it was computed for:
    the model's identity (`model_key`) and every input it depends on (compared with ==)."""
    st.session_state[name] = (key, value)


def kept_result(name: str, key: tuple):
    """The value kept under `name` if it was computed for exactly `key`, else None.

    A result of another model or other inputs is never handed out; it stays stored, so going back to
    that model and those inputs shows it again.
    """
    stored = st.session_state.get(name)
    if stored is None or stored[0] != key:
        return None
    return stored[1]


def result_is_stale(name: str, key: tuple) -> bool:
    """True when a result is kept under `name` but for another model or other inputs than `key`."""
    stored = st.session_state.get(name)
    return stored is not None and stored[0] != key


# --------------------------------------------------------------------------- the model


@st.cache_resource(show_spinner=False)
def _store() -> ModelStore:
    """Loaded models shared by every session (`core.model.store.ModelStore`), each loaded in a background
    thread. Not `st.cache_resource` on the loader itself: a page that needs no model draws while the
    model loads, and a page that needs it shows the load's progress while it waits."""
    return ModelStore(loader=_load_without_terminal_bars)


def _load_without_terminal_bars(spec: str, progress=None):
    """`load_model`, in the load's own thread, with transformers' progress bars off for the process
    ("Loading weights", a conversion's "Writing model shards", Hub downloads): the pages show each
    load's progress, and the server's terminal keeps its address and what goes wrong."""
    from transformers.utils import logging as transformers_logging

    from core.model.loading import load_model

    transformers_logging.disable_progress_bar()
    return load_model(spec, progress)


def model_status():
    """Where the model the user picked stands (`core.model.store.LoadStatus`: loaded, failed, or
    loading with its progress), its load begun in the background if none ran; never waits."""
    init_state()
    return _store().start(st.session_state[MODEL_SPEC])


def prepare_default_model() -> None:
    """For the server as it starts (serve.py), outside any session: load the model a new session
    starts with, trace the text it starts with and read the model's vocabulary (nearest tokens on
    stations 1, 4 and 9, the quiz, embedding arithmetic), so the first page opened finds them ready
    (or under way). A failed load is kept by the store; the first session's sidebar says why."""
    try:
        loaded = _store().get(default_spec())
        _trace(model_key(loaded), DEFAULT_TEXT, TRACE_TOKENS, loaded)
        vocabulary(loaded)
    except Exception as e:  # noqa: BLE001 - no page to show it on; the store keeps a load's error
        log.info("preparing the default model failed: %s", e)


def load_current_model():
    """The model the user picked, loaded once per spec and again when its files change on disk; waits
    for its load, showing the progress where it is called. Raises VectorLabError with a message."""
    init_state()
    spec = st.session_state[MODEL_SPEC]
    box = st.empty()
    bar = None
    shown = None

    def progress(fraction: float, message: str) -> None:
        # Called every ModelStore POLL_S while the load runs; the bar is sent to the browser again
        # only when it changed, not ten times a second while a step of the load takes its time.
        nonlocal bar, shown
        now = (min(max(fraction, 0.0), 1.0), message)
        if now == shown:
            return
        if bar is None:
            bar = box.progress(0.0, text=message)
        bar.progress(now[0], text=message)
        shown = now

    try:
        loaded = _store().get(spec, progress)
    finally:
        box.empty()
    share_cores()  # before the page's own work with the model
    return loaded


def require_model():
    """The loaded model, or a stop. Why it could not be loaded is said once, in the sidebar's model
    card (ui.sidebar), right under the picker where it is fixed; the page only points there."""
    try:
        return load_current_model()
    except VectorLabError:
        st.info(
            "No model is loaded: the sidebar says why. Pick another model there — the bundled "
            "SmolLM2 always works offline."
        )
        st.stop()


def model_key(loaded) -> str:
    """Names the loaded model in cache and result keys: what was asked for, where it came from, and
    the identity of its weights, so a checkpoint saved again under the same name is a new key."""
    info = loaded.info
    return f"{info.spec}|{info.source}|{info.identity}"


def require_data_dir() -> Path:
    """The data directory, or its problem (which folder, why, how to fix it) on the page and a stop."""
    from core.paths import data_dir

    try:
        return data_dir()
    except DataDirError as e:
        st.error(str(e))
        st.stop()


# --------------------------------------------------------------------------- cached computations


def read_only(value):
    """`value` with every array in it read-only, looking inside tuples, lists and dataclasses.

    Cached results are shared by every session: one page writing into an array would change what
    all the others see. Arrays are marked through views, so no other holder of the data is affected;
    containers come back rebuilt around those views (a dataclass through `dataclasses.replace`).
    """
    if isinstance(value, np.ndarray):
        view = value.view()
        view.setflags(write=False)
        return view
    if type(value) in (tuple, list):
        return type(value)(read_only(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {f.name: read_only(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
        return dataclasses.replace(value, **changes)
    return value


@st.cache_resource(show_spinner=False, max_entries=6)
def _trace(key: str, text: str, max_tokens: int, _loaded):
    from core.inspection.trace import TraceConfig, run_trace

    yield_to_other_sessions()
    return run_trace(_loaded, text, TraceConfig(max_tokens=max_tokens))


def require_trace(loaded, max_tokens: int = TRACE_TOKENS):
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


@st.cache_resource(show_spinner=False, max_entries=2)
def _vocab(key: str, _loaded):
    from core.inspection.tokens import embedding_matrix, vocab_strings
    from core.retrieval.embeddings import row_norms

    matrix = embedding_matrix(_loaded.model)
    strings = tuple(vocab_strings(_loaded.tokenizer))
    return read_only((strings, row_norms(matrix), matrix))


def vocabulary(loaded, spinner: bool = True):
    """(readable strings [V], the embedding rows' lengths [V], the embedding rows [V, d]), read-only: one
    copy is shared by every session. Cosines against the table take the lengths
    (`core.retrieval.embeddings.cosines_to_rows`): no unit-length copy of it is kept (for SmolLM2 one
    would be 113 MB, and allocating it a quarter of a second of a cold server's first station).

    `spinner=False` inside a cached computation, which must draw nothing (its caller shows its own)."""
    if not spinner or get_script_run_ctx(suppress_warning=True) is None:  # nothing to draw it on
        return _vocab(model_key(loaded), loaded)
    with st.spinner("Reading the vocabulary…"):
        return _vocab(model_key(loaded), loaded)


@st.cache_resource(show_spinner=False)
def gpt2_tokenizer():
    from core.model.loading import gpt2_tokenizer as build

    return build()


@st.cache_resource(show_spinner="Reading every layer through the unembedding…", max_entries=8)
def _lens(key: str, text: str, n_tokens: int, positions: tuple[int, ...], _loaded, _trace):
    from core.inspection.layers import logit_lens

    yield_to_other_sessions()
    return read_only(logit_lens(_loaded, _trace, positions))


def logit_lens(loaded, trace, positions) -> object:
    """The logit lens for these positions, computed once per model, traced text and window (its
    arrays read-only: shared by every session)."""
    window = tuple(int(p) for p in positions)
    return _lens(model_key(loaded), trace.text, trace.n_tokens, window, loaded, trace)


@st.cache_resource(show_spinner=False, max_entries=16)
def _derived(fn_id: str, key: str, text: str, n_tokens: int, _fn, _trace):
    return read_only(_fn(_trace))


def function_id(fn: Callable) -> str:
    """`module.qualname` of a module-level function: names a cached computation. Lambdas and nested
    functions are refused, since two of them can share one name and would share one cache entry."""
    qualname = getattr(fn, "__qualname__", "")
    if not qualname or "<" in qualname:
        raise TypeError(f"cache a module-level function, not {fn!r}: its name must say what it computes")
    return f"{fn.__module__}.{qualname}"


def derived(fn: Callable, loaded, trace):
    """`fn(trace)` computed once per function, model and traced text (e.g. head patterns, the
    all-heads check); arrays in the result are read-only, as it is shared by every session."""
    return _derived(function_id(fn), model_key(loaded), trace.text, trace.n_tokens, fn, trace)


@st.cache_resource(show_spinner="Running the text with its positions removed…", max_entries=8)
def _position_effect(key: str, text: str, _loaded):
    from core.inspection.positions import position_effect

    yield_to_other_sessions()
    return read_only(position_effect(_loaded, text))


def position_effect(loaded, text: str):
    """`text` with positions kept and removed (`position_effect`), once per model and text."""
    return _position_effect(model_key(loaded), text, loaded)


@st.cache_resource(show_spinner="Running both texts with and without positions…", max_entries=8)
def _order_effect(key: str, text_a: str, text_b: str, _loaded):
    from core.inspection.positions import order_effect

    yield_to_other_sessions()
    return order_effect(_loaded, text_a, text_b)


def order_effect(loaded, text_a: str, text_b: str):
    """Two texts with positions kept and removed (`order_effect`), once per model and pair of texts."""
    return _order_effect(model_key(loaded), text_a, text_b, loaded)


@st.cache_resource(show_spinner=False)
def training_job():
    """The one training job of this process, shared by every browser session."""
    from core.training.jobs import TrainingJob

    return TrainingJob(before_step=share_cores)


@st.cache_resource(show_spinner="Timing one training step of this model…", max_entries=16)
def _step_timing(key: str, seq_len: int, train_part: str, n_last_blocks: int, bf16: bool, _loaded, _config):
    from core.training.estimate import time_step

    return time_step(_loaded.model, _config)


def step_timing(loaded, config):
    """One training step of the loaded model under `config` (`estimate.time_step`), timed once per
    model and per setting that changes a step's work: sequence length, what trains, bf16."""
    n_last = config.n_last_blocks if config.train_part == "last_n_blocks" else 0
    key = model_key(loaded)
    return _step_timing(key, config.seq_len, config.train_part, n_last, config.bf16, loaded, config)


@st.cache_resource(show_spinner=False, max_entries=8)
def _live_chart_specs(run_id: int, step: int, log_scale: bool, _snapshot) -> dict[str, dict]:
    from core.views.training_charts import live_charts

    return {name: chart.to_dict() for name, chart in live_charts(_snapshot, log_scale).items()}


def live_chart_specs(snapshot, log_scale: bool) -> dict[str, dict]:
    """The running job's charts as Vega-Lite specs (`core.views.training_charts.live_charts`), built once
    per run and step and shared by every session watching: the live view redraws every second,
    its numbers change once a step."""
    return _live_chart_specs(snapshot.run_id, snapshot.step, log_scale, snapshot)


@st.cache_resource(show_spinner=False, max_entries=16)
def _next_token(
    key: str, text: str, n_tokens: int, temperature: float, top_k: int, top_p: float, n: int, _loaded, _trace
):
    from core.inspection.sampling import SamplingConfig, reshape, top_entries

    dist = reshape(_trace.last_logits, SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p))
    strings, _, _ = vocabulary(_loaded, spinner=False)
    return read_only((dist, top_entries(dist, strings, n=n)))


def next_token(loaded, trace, config, n: int):
    """(the last token's logits reshaped by `config`'s temperature / top-k / top-p, its `n` most likely
    tokens), once per model, traced text, settings and `n`; arrays read-only: shared by every session."""
    settings = (float(config.temperature), int(config.top_k), float(config.top_p))
    return _next_token(model_key(loaded), trace.text, trace.n_tokens, *settings, int(n), loaded, trace)


@st.cache_resource(show_spinner=False, max_entries=32)
def _nearest_tokens(key: str, token_id: int, k: int, _loaded):
    from core.inspection.tokens import nearest_tokens as compute

    strings, norms, embeddings = vocabulary(_loaded, spinner=False)
    return tuple(compute(embeddings, norms, token_id, strings, k=k))


def nearest_tokens(loaded, token_id: int, k: int):
    """The `k` vocabulary rows closest by cosine to row `token_id` (`core.inspection.tokens.
    nearest_tokens`), once per model, token and k."""
    return _nearest_tokens(model_key(loaded), int(token_id), int(k), loaded)


@st.cache_resource(show_spinner=False, max_entries=8)
def _token_map(key: str, token_ids: tuple[int, ...], per_token: int, _loaded):
    from core.inspection.tokens import neighbourhood_map

    strings, norms, embeddings = vocabulary(_loaded, spinner=False)
    return tuple(neighbourhood_map(embeddings, norms, list(token_ids), strings, per_token))


def token_map(loaded, token_ids, per_token: int):
    """The tokens and their neighbours on a shared 2-D PCA map (`core.inspection.tokens.
    neighbourhood_map`), once per model, token ids and neighbours per token."""
    return _token_map(model_key(loaded), tuple(int(t) for t in token_ids), int(per_token), loaded)


@st.cache_resource(show_spinner=False, max_entries=16)
def _qkv_split(key: str, text: str, n_tokens: int, layer: int, _loaded, _trace):
    from core.inspection.attention import qkv_split as split

    return read_only(split(_loaded, _trace, layer))


def qkv_split(loaded, trace, layer: int):
    """Layer `layer`'s q, k, v recomputed from its input and checked (`core.inspection.attention.qkv_split`),
    once per model, traced text and layer."""
    return _qkv_split(model_key(loaded), trace.text, trace.n_tokens, int(layer), loaded, trace)
