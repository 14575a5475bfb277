"""The "What if?" station's first draw under Streamlit's AppTest: a new session opening the page with
the model already loaded, and then each tab opened in turn.

    python bench/bench_whatif.py [--model bundled-smollm2] [--repeat 2]

One warm-up run loads the model and fills the process-wide caches (not timed). Each timed run is a
fresh AppTest session, so the page's kept results are empty and every experiment it draws really runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streamlit.testing.v1 import AppTest  # noqa: E402

from ui import state  # noqa: E402

PAGE = ROOT / "pages" / "10_experiments.py"
TAB_KEY = "whatif_tab"  # the page's st.tabs key
TIMEOUT = 1800  # seconds: the page on a real model on a busy CPU


def first_draw(spec: str, tab: str | None = None) -> float:
    """Seconds of one fresh session's first run of the page (on `tab` when given)."""
    at = AppTest.from_file(str(PAGE), default_timeout=TIMEOUT)
    at.session_state[state.MODEL_SPEC] = spec
    if tab is not None:
        at.session_state[TAB_KEY] = tab
    start = time.perf_counter()
    at.run()
    seconds = time.perf_counter() - start
    if at.exception or at.error:
        raise RuntimeError(f"the page failed: {[e.value for e in (*at.exception, *at.error)]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled-smollm2")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--tabs", action="store_true", help="also time each tab opened on its own")
    args = parser.parse_args()
    warm = first_draw(args.model)
    times = [first_draw(args.model) for _ in range(args.repeat)]
    each = ", ".join(f"{t:.1f}" for t in times)
    print(f"warm-up (model load, caches): {warm:.1f} s\n")
    print("| What if? station, new session | seconds |")
    print("|---|---:|")
    median = statistics.median(times)
    print(f"| first draw (the Steer tab), median of {args.repeat} | {median:.1f} ({each}) |")
    if args.tabs:
        for tab in ("Steer", "Positions", "Embedding arithmetic", "Ablate heads", "Patch activations"):
            print(f"| opened on {tab} | {first_draw(args.model, tab):.1f} |")


if __name__ == "__main__":
    main()
