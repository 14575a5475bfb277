"""Two browser sessions at once: one session's reruns while the other loads a different model, against
the same reruns with nothing else going on.

    python bench/bench_sessions.py [--model bundled-smollm2] [--reruns 10]

One `streamlit run app.py` server, headless Chromium, two sessions (two browser contexts). Session B
sits on station 1 with the bundled model loaded and its caches warm, and reruns the page (Streamlit's
"R" key), timed from the key to the run over. First `--reruns` of those with session A idle; then
session A picks another model in its sidebar — GPT-2 small's architecture (124M parameters, random
seeded weights) saved as a model folder, so nothing is downloaded — and while A's sidebar shows that
load's progress, B keeps rerunning; the reruns that start during A's load count.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.browser import (  # noqa: E402
    Server,
    click_station,
    launch_chromium,
    open_when_up,
    wait_drawn,
    wait_run_over,
    watch_runs,
)
from ui.stations import STATIONS  # noqa: E402

LOADING = '[data-testid="stSidebar"] [data-testid="stProgress"]'


def save_gpt2_shape(folder: Path) -> Path:
    """GPT-2 small's architecture with seeded random weights, saved as a model folder."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from core.model.loading import gpt2_tokenizer

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config()).save_pretrained(folder, safe_serialization=True)
    gpt2_tokenizer().save_pretrained(folder)
    return folder


def rerun(page) -> float:
    """Rerun the page (the "R" key) and return the seconds until that run is over."""
    watch_runs(page)
    start = time.perf_counter()
    page.keyboard.press("r")
    return wait_run_over(page) - start


def pick_model(page, spec: str) -> None:
    """Type `spec` under "another model…" in the sidebar's picker."""
    sidebar = page.locator('[data-testid="stSidebar"]')
    sidebar.locator('[data-testid="stSelectbox"]').first.click()
    page.get_by_role("option", name="another model…").click()
    box = sidebar.get_by_role("textbox", name="Hub id or local directory")
    box.fill(spec)
    box.press("Enter")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled-smollm2")
    parser.add_argument("--reruns", type=int, default=10)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        other = save_gpt2_shape(Path(tmp) / "gpt2-shape")
        env = {"VECTORLAB_MODEL": args.model, "VECTORLAB_DATA_DIR": str(Path(tmp) / "data")}
        with Server("app.py", env, log=Path(tmp) / "server.log") as server:
            browser = launch_chromium(p)
            a = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            b = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            for page in (a, b):
                open_when_up(page, server.url)
                wait_drawn(page, "Vector Lab")
            station = STATIONS[0]
            click_station(b, station.title)
            wait_drawn(b, f"{station.number} ·")  # the model loaded, the text traced
            for _ in range(2):
                rerun(b)  # warm
            idle = [rerun(b) for _ in range(args.reruns)]
            pick_model(a, str(other))
            a.wait_for_selector(LOADING)
            during = []
            while a.locator(LOADING).count():  # A still loading when this rerun starts
                during.append(rerun(b))
            a.get_by_text("Parameters").first.wait_for()
            browser.close()
    if not during:
        sys.exit("the other model loaded before session B could rerun: nothing to compare")
    t_idle, t_during = statistics.median(idle), statistics.median(during)
    print("| session B reruns station 1 | reruns | median (ms) | vs idle |")
    print("|---|---:|---:|---:|")
    print(f"| session A idle | {len(idle)} | {1e3 * t_idle:.0f} | 1.00× |")
    ratio = t_during / t_idle
    print(f"| session A loading another model | {len(during)} | {1e3 * t_during:.0f} | {ratio:.2f}× |")


if __name__ == "__main__":
    main()
