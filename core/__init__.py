"""Vector Lab core: model loading, tracing and the maths behind every page (no Streamlit here)."""
