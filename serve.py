"""Serve Vector Lab, the default model already loading: what `make run` runs.

    python serve.py [streamlit options, e.g. --server.port 8501]

The default model (VECTORLAB_MODEL, else "auto") starts loading in a background thread of the server
process before Streamlit starts, so its imports and weights are read while the server comes up and the
browser fetches the page; the first station opened waits only for what is left. `streamlit run app.py`
works as well: the model then starts loading on the first visit.
"""

from __future__ import annotations

import sys
from pathlib import Path

APP = Path(__file__).resolve().parent / "app.py"


def main() -> None:
    from core.model.store import default_spec, shared_store

    shared_store().start(default_spec())
    from streamlit.web import cli

    sys.argv = ["streamlit", "run", str(APP), *sys.argv[1:]]
    cli.main()


if __name__ == "__main__":
    main()
