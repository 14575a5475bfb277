"""Vector Lab's server: `streamlit run serve.py` (what `make run` does) serves `app.py` and begins
loading the model the moment the server starts, before any browser connects.

Streamlit runs a page's script only once a browser session asks for it, so a first visitor would
wait for the imports of torch and transformers and the model's load to begin after their page had
opened. Here they run while the browser still fetches and starts the page, and the first station
opened finds the load under way, or the model loaded and the default text traced
(`ui.state.prepare_default_model`). `streamlit run app.py` serves the same app and loads the model
at the first visit instead.
"""

from __future__ import annotations

import threading
from contextlib import asynccontextmanager

import streamlit as st

PREPARING = "prepare the default model"  # the thread's name


def _prepare() -> None:
    from ui.state import prepare_default_model

    prepare_default_model()


@asynccontextmanager
async def _load_while_starting(_app):
    # In a thread: importing torch and transformers takes seconds and the server must answer at once.
    threading.Thread(target=_prepare, name=PREPARING, daemon=True).start()
    yield


app = st.App("app.py", lifespan=_load_while_starting)
