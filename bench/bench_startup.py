"""Start-up as a new user meets it: a fresh server, headless Chromium, until the page is fully drawn.

    python bench/bench_startup.py [--repeat 5] [--model bundled-smollm2]

Vector Lab is served as `make run` serves it (`streamlit run serve.py`: the default model's load begins
as the server starts). (a) The landing page: Vector Lab's against a bare one-line Streamlit app's, each
from the launch of `streamlit run` to the page drawn (script run over, heading on screen), interleaved,
a fresh server each time. (b) The first station opened on a cold server (its URL as the first visit: the
model loads, the text is traced, the page drawn) against what that needs at the least, in a fresh Python
process: import torch and transformers, load the same model, one forward pass of the same text."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.browser import APP, Server, launch_chromium, open_when_up, wait_drawn  # noqa: E402
from ui.state import DEFAULT_TEXT  # noqa: E402
from ui.stations import STATIONS  # noqa: E402

BARE_APP = 'import streamlit as st\nst.title("hello")\n'
PLAIN = "imports + model load + one forward pass (fresh python)"
LAST_STATION = f"{STATIONS[-1].number}. {STATIONS[-1].title}"  # the landing page's last card

# The least a first station needs, in a fresh interpreter: imports, the model, one forward pass.
PLAIN_LOAD_AND_FORWARD = """
import sys
import torch
import transformers
from core.model.loading import load_model

loaded = load_model(sys.argv[1])
ids = torch.as_tensor(loaded.tokenizer(sys.argv[2])["input_ids"])[None]
with torch.inference_mode():
    loaded.model(ids, use_cache=False)
"""


def page_drawn(browser, server: Server, path: str, heading: str, marker: tuple[str, str] | None = None):
    """Seconds from the server's launch to `path` drawn with `heading` (and `marker`: selector, text)."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    try:
        open_when_up(page, f"{server.url}/{path}")
        done = wait_drawn(page, heading)
        if marker is not None:
            done = max(done, wait_drawn(page, marker[1], marker[0]))
        return done - server.launched
    finally:
        context.close()


def plain_load_and_forward(model: str, text: str) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", PLAIN_LOAD_AND_FORWARD, model, text],
        cwd=ROOT,
        check=True,
        capture_output=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    return time.perf_counter() - start


def station_path() -> str:
    """The URL path Streamlit gives the first station's page (its file name without the number)."""
    return Path(STATIONS[0].page).stem.split("_", 1)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--model", default="bundled-smollm2")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        bare = Path(tmp) / "bare.py"
        bare.write_text(BARE_APP)
        env = {"VECTORLAB_MODEL": args.model, "VECTORLAB_DATA_DIR": str(Path(tmp) / "data")}
        browser = launch_chromium(p)
        landing: dict[str, list[float]] = {"bare one-line Streamlit app": [], "Vector Lab landing page": []}
        plain, first = PLAIN, f"station {STATIONS[0].number} opened first on a cold server"
        station: dict[str, list[float]] = {plain: [], first: []}
        for i in range(args.repeat):  # interleaved so machine drift hits every row alike
            with Server(bare) as server:
                landing["bare one-line Streamlit app"].append(page_drawn(browser, server, "", "hello"))
            with Server(APP, env, log=Path(tmp) / f"landing{i}.log") as server:
                seconds = page_drawn(browser, server, "", "Vector Lab", ("a", LAST_STATION))
                landing["Vector Lab landing page"].append(seconds)
            station[plain].append(plain_load_and_forward(args.model, DEFAULT_TEXT))
            with Server(APP, env, log=Path(tmp) / f"station{i}.log") as server:
                heading = f"{STATIONS[0].number} ·"
                station[first].append(page_drawn(browser, server, station_path(), heading))
            print(f"repeat {i + 1}/{args.repeat} done", file=sys.stderr, flush=True)
        browser.close()
    for title, runs in (("landing page", landing), ("first station", station)):
        base = statistics.median(next(iter(runs.values())))
        print(f"\n| {title}: launch to fully drawn | median s | ratio |")
        print("|---|---:|---:|")
        for name, times in runs.items():
            med = statistics.median(times)
            print(f"| {name} | {med:.2f} | {med / base:.2f}× |")


if __name__ == "__main__":
    main()
