"""The sidebar every page shares: pick the model, type the text, see what is loaded and why."""

from __future__ import annotations

import streamlit as st

from core.errors import DataDirError, VectorLabError
from core.model.loading import SUGGESTED_SPECS
from core.paths import DATA_DIR_ENV
from ui import state

OTHER = "another model…"
LOADING_REFRESH_S = 1.0  # seconds between redraws of the load's progress on the landing page
LABELS = {
    "auto": "auto (GPT-2 if available, else bundled SmolLM2)",
    "bundled-smollm2": "bundled SmolLM2-135M-Instruct (offline)",
}


def checkpoint_labels() -> dict[str, str]:
    """Fine-tuned checkpoints saved by the training station: model spec (their folder) → picker label.

    Raises DataDirError when the data directory, where they live, cannot be used.
    """
    from core.training.checkpoints import list_checkpoints

    return {str(c.path): f"fine-tuned: {c.name}" for c in list_checkpoints()}


def _apply_choice() -> None:
    choice = st.session_state[state.MODEL_CHOICE]
    st.session_state[state.MODEL_OTHER] = choice == OTHER
    if choice != OTHER:
        st.session_state[state.MODEL_SPEC] = choice


def _apply_custom() -> None:
    custom = st.session_state.get(state.MODEL_CUSTOM, "").strip()
    if custom:
        st.session_state[state.MODEL_SPEC] = custom


def render_sidebar(wait_for_model: bool = True) -> None:
    """Draw the model picker, the shared text box and the loaded model's card.

    The model loads in the background. With `wait_for_model` (pages that need it) the page waits for
    it here, its progress in the card; without (the landing page) the page draws at once and the card
    shows the load's progress, refreshed until it is done.
    """
    state.init_state()
    spec = st.session_state[state.MODEL_SPEC]
    try:
        checkpoints, data_dir_problem = checkpoint_labels(), False
    except DataDirError:  # the pages that write there say why; the model stations work without it
        checkpoints, data_dir_problem = {}, True
    labels = {**LABELS, **checkpoints}
    options = list(SUGGESTED_SPECS) + [o for o in labels if o not in SUGGESTED_SPECS] + [OTHER]
    other = st.session_state[state.MODEL_OTHER] or spec not in options
    # The picker's widgets are re-seeded on every page from the spec they stand for (the picked
    # option, or the typed spec under "another model…"), not from a copy of their own value.
    st.session_state[state.MODEL_CHOICE] = OTHER if other else spec
    st.session_state[state.MODEL_CUSTOM] = "" if spec in options else spec
    waiting = _waiting_note() if wait_for_model else None
    with st.sidebar:
        st.markdown("### Model")
        st.selectbox(
            "Model",
            options,
            key=state.MODEL_CHOICE,
            format_func=lambda o: labels.get(o, o),
            on_change=_apply_choice,
            label_visibility="collapsed",
        )
        if data_dir_problem:
            st.caption(
                f"Fine-tuned checkpoints are not listed: the data directory ({DATA_DIR_ENV}) cannot "
                "be used. The search and training pages say why."
            )
        if other:
            st.text_input(
                "Hub id or local directory",
                key=state.MODEL_CUSTOM,
                on_change=_apply_custom,
                placeholder="gpt2-medium or /path/to/saved/model",
                help="Press Enter to load. A directory must hold config.json and model.safetensors.",
            )
        st.markdown("### Text")
        st.text_area(
            "The text every model page traces",
            height=110,
            max_chars=state.MAX_TEXT_CHARS,
            help=f"Up to {state.TRACE_TOKENS} tokens are traced; longer text is cut with a note.",
            **state.persist(state.TEXT_WIDGET, state.DEFAULT_TEXT, plain=state.TEXT),
        )
        if wait_for_model:
            _wait_for_model(waiting)
        else:
            _model_card_when_ready()


def _waiting_note():
    """A note at the top of the page while the model loads (its main area stays empty until then)."""
    if not state.model_status().loading:
        return None
    note = st.empty()
    note.info("Loading the model: this page is drawn as soon as it is ready (progress in the sidebar).")
    return note


def _wait_for_model(waiting) -> None:
    """The model's card once it is loaded, its load's progress meanwhile (the page waits); then the
    `waiting` note, if any, goes."""
    try:
        loaded = state.load_current_model()
    except VectorLabError as e:
        st.error(str(e))  # said here only: pages that need the model point to it (state.require_model)
        return
    finally:
        if waiting is not None:
            waiting.empty()
    _model_card(loaded.info)


def _model_card_when_ready() -> None:
    """The model's card if it is loaded, its error if it failed, else the load's progress, refreshed."""
    status = state.model_status()
    if status.loading:
        _loading_card()
    elif status.error is not None:
        if not isinstance(status.error, VectorLabError):
            raise status.error
        st.error(str(status.error))
    else:
        _model_card(status.model.info)


@st.fragment(run_every=LOADING_REFRESH_S)
def _loading_card() -> None:
    """The background load's progress; once it is over the whole page runs again, without this part,
    and draws the card (or the error) in its place."""
    status = state.model_status()
    if not status.loading:
        st.rerun()
    st.progress(status.fraction, text=f"{status.message} ({status.seconds:.0f} s)")
    st.caption("Pages that need the model wait for it; this one does not.")


def _model_card(info) -> None:
    st.markdown(f"**{info.name}**")
    st.caption(info.reason)
    cols = st.columns(2)
    cols[0].metric("Parameters", f"{info.n_params / 1e6:.0f} M")
    cols[1].metric("Layers", info.n_layer)
    cols[0].metric("Heads", info.n_head)
    cols[1].metric("Width d", info.d_model)
    kv = "" if info.n_kv_head == info.n_head else f"{info.n_kv_head} K/V heads (grouped-query) · "
    st.caption(
        f"{kv}head width {info.d_head} · positions: {info.position_scheme} · vocabulary {info.vocab_size:,}"
    )
