"""Landing page: the map of the stations a vector passes through."""

from __future__ import annotations

import streamlit as st
from streamlit.errors import StreamlitAPIException

from ui.sidebar import render_sidebar
from ui.stations import STATIONS

st.title("Vector Lab")
st.markdown(
    "A language model is a machine that moves **vectors**. Follow one: a piece of your text becomes a "
    "row of numbers, gets a position, looks at the other tokens, is rewritten layer after layer, and "
    "finally turns into a probability for every possible next token. Each station below opens one of "
    "those places on the real model picked in the sidebar, and checks its formulas against the model's "
    "own numbers."
)
for station in STATIONS:
    with st.container(border=True):
        label = f"**{station.number}. {station.title}**"
        try:
            st.page_link(station.page, label=label, icon=station.icon)
        except StreamlitAPIException:  # opened on its own, without app.py's navigation
            st.markdown(label)
        left, right = st.columns(2)
        left.markdown(f"**What happens.** {station.what}")
        right.markdown(f"**Why it matters.** {station.why}")

# Drawn last, and without waiting for the model: this page needs none, so it is on screen at once and
# the model starts loading in the background only after the page's own content has gone out.
render_sidebar(wait_for_model=False)
