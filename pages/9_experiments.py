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

tabs = st.tabs(
    ["Steer", "Positions", "Embedding arithmetic", "Ablate heads", "Patch activations"],
    key="whatif_tab",  # tracked, so a rerun from a widget inside a tab stays on that tab
    on_change="rerun",
)
for tab, section in zip(tabs, (steering, positions, arithmetic, ablation, patching), strict=True):
    with tab:
        section.render(loaded)
