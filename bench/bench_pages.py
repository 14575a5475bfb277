"""Switching stations in the browser, caches warm, against one forward pass of the same text.

    python bench/bench_pages.py [--model bundled-smollm2] [--tokens 64] [--repeat 5]

One `streamlit run serve.py` server (as `make run` serves the app) and headless Chromium. The sidebar's
text is set to a text of `--tokens` tokens, every station 1–5 is visited once (model loaded, text traced,
caches filled, not timed), then each is opened again by a click on its sidebar link, `--repeat` rounds.
Each click is made once the browser is idle (the previous page has finished drawing, as when a reader
clicks), and is timed to the page fully drawn (script run over, its heading on screen) and, second column,
until the browser is idle again (every chart on the page rendered too). The baseline is one plain eager
forward pass of the same text, timed in this process before the server starts."""

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
    APP,
    Server,
    click_station,
    launch_chromium,
    open_when_up,
    set_text,
    wait_drawn,
    wait_idle,
)
from ui.stations import STATIONS  # noqa: E402

N_STATIONS = 5  # the stations that trace the text through the model


def forward_and_text(model: str, tokens: int) -> tuple[float, str]:
    """One plain forward pass of a `tokens`-token text (median seconds) and that text."""
    import torch

    from bench.bench_trace import text_of_tokens
    from bench.common import timeit
    from core.model.loading import load_model

    loaded = load_model(model)
    text = text_of_tokens(loaded, tokens)
    ids = torch.as_tensor(loaded.tokenizer(text)["input_ids"])[None]

    def forward():
        with torch.inference_mode():
            loaded.model(ids, use_cache=False)

    return timeit(forward, repeat=7), text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled-smollm2")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    t_forward, text = forward_and_text(args.model, args.tokens)
    print(f"model {args.model}, {args.tokens} tokens, one forward pass: {1e3 * t_forward:.0f} ms\n")
    from playwright.sync_api import sync_playwright

    stations = STATIONS[:N_STATIONS]
    times: dict[str, list[float]] = {s.title: [] for s in stations}
    settled: dict[str, list[float]] = {s.title: [] for s in stations}
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        env = {"VECTORLAB_MODEL": args.model, "VECTORLAB_DATA_DIR": str(Path(tmp) / "data")}
        with Server(APP, env, log=Path(tmp) / "server.log") as server:
            browser = launch_chromium(p)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            open_when_up(page, server.url)
            wait_drawn(page, "Vector Lab")
            set_text(page, text)
            for station in stations:  # warm-up: the model, the trace, every cache
                click_station(page, station.title)
                wait_drawn(page, f"{station.number} ·")
            for _ in range(args.repeat):
                for station in stations:
                    wait_idle(page)  # the reader clicks on a page that has finished drawing
                    start = time.perf_counter()
                    click_station(page, station.title)
                    times[station.title].append(wait_drawn(page, f"{station.number} ·") - start)
                    settled[station.title].append(wait_idle(page) - start)
            browser.close()
    print(
        "| station (click in the sidebar) | drawn (ms) | / forward | charts rendered too (ms) | / forward |"
    )
    print("|---|---:|---:|---:|---:|")
    for station in stations:
        t, idle = statistics.median(times[station.title]), statistics.median(settled[station.title])
        print(
            f"| {station.number}. {station.title} | {1e3 * t:.0f} | {t / t_forward:.2f}× "
            f"| {1e3 * idle:.0f} | {idle / t_forward:.2f}× |"
        )


if __name__ == "__main__":
    main()
