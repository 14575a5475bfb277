"""Streamlit-aware helpers: cached loaders, session-state keys, and the shared sidebar."""
