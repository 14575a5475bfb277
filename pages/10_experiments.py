"""Station 10: "What if?" — change one vector inside the real model and watch the output move."""

from __future__ import annotations

import streamlit as st

from ui import state
from ui.experiments import ablation, arithmetic, patching, positions, steering
from ui.sidebar import render_sidebar

st.title("10 · What if? Experiments")
st.markdown(
    "**What happens.** One vector inside the real model is changed — a direction added, heads removed, "
    "an activation copied from another prompt — and the same prompt runs again beside the original. "
    "**Why it matters.** Looking shows what is there; changing it shows what the model uses. Every "
    'experiment also runs its "do nothing" version, which must reproduce the original exactly.'
)

render_sidebar()
loaded = state.require_model()

TAB = "whatif_tab"  # st.tabs key: the open tab's label in session state
tabs = st.tabs(
    ["Steer", "Positions", "Embedding arithmetic", "Ablate heads", "Patch activations"],
    key=TAB,  # tracked, so a rerun from a widget inside a tab stays on that tab
    on_change="rerun",  # opening a tab reruns the page, which then draws that tab
)
# Each tab runs its experiments on the model: only the open one is drawn, the others stay empty until
# they are opened.
for tab, section in zip(tabs, (steering, positions, arithmetic, ablation, patching), strict=True):
    if tab.open:
        with tab:
            section.render(loaded)
