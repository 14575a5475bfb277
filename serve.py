"""Vector Lab's server: `streamlit run serve.py` (what `make run` does) serves `app.py` and begins
loading the model the moment the server starts, before any browser connects.

Streamlit runs a page's script only once a browser session asks for it, so a first visitor would
wait for the imports of torch and transformers and the model's load to begin after their page had
opened. Here they run while the browser still fetches and starts the page, and the first station
opened finds the load under way, or the model loaded and the default text traced
(`ui.state.prepare_default_model`). It also leaves out Streamlit's search of the installed packages
for custom components, which the app has none of (`_skip_component_discovery`). `streamlit run app.py`
serves the same app and loads the model at the first visit instead.
"""

from __future__ import annotations

import threading
from contextlib import asynccontextmanager

import streamlit as st

PREPARING = "prepare the default model"  # the thread's name


def _skip_component_discovery() -> bool:
    """Leave out Streamlit's search of the installed packages for custom components; True if done.

    As the runtime starts, Streamlit reads the metadata of every installed distribution looking for
    components of its v2 kind (Streamlit 1.67: `BidiComponentManager.discover_and_register_components`).
    Vector Lab uses none, and its dependencies make ~140 distributions to read: about 0.15 s of the
    interpreter before the server listens and the model's load can begin, on every start. A
    Streamlit without that method is left as it is (the search runs; nothing else changes)."""
    try:
        from streamlit.components.v2 import component_manager
    except ImportError:
        return False
    manager = getattr(component_manager, "BidiComponentManager", None)
    if manager is None or not hasattr(manager, "discover_and_register_components"):
        return False
    manager.discover_and_register_components = _no_components
    return True


def _no_components(self, **_kwargs) -> None:
    """What the component search finds for Vector Lab: nothing to register, nothing to watch."""


def _prepare() -> None:
    from ui.state import prepare_default_model

    prepare_default_model()


@asynccontextmanager
async def _load_while_starting(_app):
    # In a thread: importing torch and transformers takes seconds and the server must answer at once.
    threading.Thread(target=_prepare, name=PREPARING, daemon=True).start()
    yield


_skip_component_discovery()  # before the App below creates the runtime, which runs the search
app = st.App("app.py", lifespan=_load_while_starting)
