"""Vector Lab: follow one vector through a real language model. Run with `make run`."""

from __future__ import annotations

import streamlit as st

from ui.stations import STATIONS

st.set_page_config(page_title="Vector Lab", page_icon=":material/scatter_plot:", layout="wide")

pages = [st.Page("pages/home.py", title="Overview", icon=":material/map:", default=True)] + [
    st.Page(s.page, title=f"{s.number}. {s.title}", icon=s.icon) for s in STATIONS
]
# Each page draws the shared sidebar itself (ui.sidebar), so it also works when opened alone.
navigation = st.navigation(pages)
navigation.run()
