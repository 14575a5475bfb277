"""Two browser sessions at once: one session's reruns while the other loads different models or traces
a long text, against the same reruns with nothing else going on.

    python bench/bench_sessions.py [--model bundled-smollm2] [--reruns 10] [--during 10]

One `streamlit run serve.py` server (as `make run` serves the app), headless Chromium, two sessions (two
browser contexts). Session B sits on station 2 (positional encoding: the model's trace read from the
cache, tables and charts drawn; a model page whose code is stable) with the bundled model loaded and its
caches warm, and reruns the page (Streamlit's "R" key), timed from the key to the run over. First
`--reruns` of those with session A idle on station 1; then while A is busy:

- A traces long texts: it types one text of 512 tokens after another into its sidebar on station 1,
  each traced once (a new text, so no cache helps);
- A loads other models: still on station 1, it picks one model folder after another under "another
  model…" — GPT-2 medium's architecture (355M parameters, random seeded weights, saved once and linked
  under new names, so each is a real load and nothing is downloaded), its pages dropped from the
  kernel's page cache before each pick, so the weights are read from disk as a model's first load is.

A's page records when it is busy: while its "Running the text through the model…" spinner is on
screen, or the load's progress bar in its sidebar (the page waits for the load and removes the bar
the moment it is over). Both lie inside the work itself (the spinner shows half a second into the
trace), so a rerun of B counts only when it starts and ends inside one; A is given more work until
`--during` reruns count (or `--rounds` pieces of work are spent).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from itertools import islice
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.browser import (  # noqa: E402
    APP,
    TIMEOUT_MS,
    Server,
    click_station,
    launch_chromium,
    open_when_up,
    set_text,
    wait_drawn,
)
from ui.state import TRACE_TOKENS  # noqa: E402  (the longest text a model page traces)
from ui.stations import STATIONS  # noqa: E402

SIDEBAR = '[data-testid="stSidebar"]'
LOADING = f'{SIDEBAR} [data-testid="stProgress"]'
TRACING = '[data-testid="stSpinner"]'
TRACING_TEXT = "Running the text through the model"  # ui.state.require_trace's spinner

# Records, in the page, the spans (Date.now() ms) during which an element matching `selector` and
# showing `text` is on screen: from its first drawing to its removal.
_WATCH_BUSY = """([selector, text]) => {
  const spans = window.__vlBusy = [];
  let open = null;
  const check = () => {
    const now = Date.now();
    const shown = [...document.querySelectorAll(selector)].some(
      (e) => e.offsetParent !== null && e.innerText.includes(text));
    if (shown && !open) { open = [now, now]; spans.push(open); }
    if (!shown && open) { open[1] = now; open = null; }
  };
  if (window.__vlBusyWatch) window.__vlBusyWatch.disconnect();
  window.__vlBusyWatch = new MutationObserver(check);
  window.__vlBusyWatch.observe(document.body, {subtree: true, childList: true, characterData: true});
}"""
# Records every script-run state the app passes through from now on. A rerun that is over within one
# frame goes from "rerunRequested" to "notRunning" without "running" ever reaching the page, so the run
# is over once any other state was seen and the state is "notRunning" again.
_WATCH_RUNS = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  if (window.__vlRunWatch) window.__vlRunWatch.disconnect();
  window.__vlStates = [];
  window.__vlRunWatch = new MutationObserver(
    (records) => records.forEach((r) => window.__vlStates.push(r.oldValue)));
  window.__vlRunWatch.observe(app, {attributes: true, attributeOldValue: true,
                                    attributeFilter: ['data-test-script-state']});
}"""
_RUN_OVER = """() => {
  const now = document.querySelector('[data-testid="stApp"]').getAttribute('data-test-script-state');
  return now === 'notRunning' && (window.__vlStates || []).some((s) => s !== 'notRunning');
}"""


@dataclass(frozen=True)
class Rerun:
    """One rerun of session B: wall-clock start and end (seconds since the epoch, as the pages' clocks
    read them) and its duration."""

    start: float
    end: float
    seconds: float


def save_gpt2_shape(folder: Path) -> Path:
    """GPT-2 medium's architecture (355M parameters) with seeded random weights, saved as a model folder."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from core.model.loading import gpt2_tokenizer

    torch.manual_seed(0)
    medium = GPT2Config(n_embd=1024, n_layer=24, n_head=16)
    GPT2LMHeadModel(medium).save_pretrained(folder, safe_serialization=True)
    gpt2_tokenizer().save_pretrained(folder)
    return folder


def drop_from_page_cache(folder: Path) -> None:
    """Ask the kernel to forget `folder`'s files' cached pages, so the next load reads them from disk
    as a model never loaded before is (the links share one copy of the pages: dropping one drops all)."""
    for f in folder.iterdir():
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def linked_copies(folder: Path, count: int) -> Iterator[Path]:
    """`count` folders holding `folder`'s files as hard links (copies where linking fails): each is
    another model spec, read from disk again, at no cost in disk space."""
    for k in range(1, count + 1):
        copy = folder.with_name(f"{folder.name}-{k}")
        copy.mkdir()
        for f in folder.iterdir():
            try:
                os.link(f, copy / f.name)
            except OSError:
                (copy / f.name).write_bytes(f.read_bytes())
        yield copy


def long_texts(model: str, n_tokens: int) -> Iterator[str]:
    """Texts of `n_tokens` tokens of `model`'s tokenizer, each different from the ones before."""
    from bench.bench_trace import WORDS
    from core.model.loading import load_model

    tokenizer = load_model(model).tokenizer
    k = 0
    while True:
        k += 1
        words = [f"Round {k}:"]
        while len(tokenizer(" ".join(words))["input_ids"]) < n_tokens:
            words.append(WORDS[(len(words) + k) % len(WORDS)])
        yield " ".join(words)


def rerun(page) -> Rerun:
    """Rerun the page (the "R" key) and time it until that run is over."""
    page.evaluate(_WATCH_RUNS)
    wall, start = time.time(), time.perf_counter()
    page.keyboard.press("r")
    page.wait_for_function(_RUN_OVER, timeout=TIMEOUT_MS, polling="raf")
    seconds = time.perf_counter() - start
    return Rerun(wall, time.time(), seconds)


def busy_spans(page) -> list[tuple[float, float]]:
    """The spans (seconds since the epoch) the page recorded as busy since `_WATCH_BUSY`."""
    return [(s / 1e3, e / 1e3) for s, e in page.evaluate("() => window.__vlBusy || []")]


def inside(run: Rerun, spans: list[tuple[float, float]]) -> bool:
    return any(s <= run.start and run.end <= e for s, e in spans)


def pick_model(page, spec: str) -> None:
    """Type `spec` under "another model…" in the sidebar's picker."""
    if Path(spec).is_dir():
        drop_from_page_cache(Path(spec))
    sidebar = page.locator(SIDEBAR)
    box = sidebar.get_by_role("textbox", name="Hub id or local directory")
    if not box.count():
        sidebar.locator('[data-testid="stSelectbox"]').first.click()
        page.get_by_role("option", name="another model…").click()
    box.fill(spec)
    box.press("Enter")


def reruns_while_busy(a, b, work: Iterator[Callable[[], None]], want: int) -> tuple[list[Rerun], int]:
    """Rerun B again and again while A does one piece of `work` after another (each started once A's
    run for the last is over), until `want` reruns fell inside A's busy spans or the work runs out.
    Those reruns, and how many pieces of work A did."""
    runs: list[Rerun] = []
    during: list[Rerun] = []
    rounds = 0
    for start in work:
        a.evaluate(_WATCH_RUNS)  # A's run for this piece: over once it left "notRunning" and came back
        start()
        rounds += 1
        while True:
            runs.append(rerun(b))
            if a.evaluate(_RUN_OVER):
                break
        during = [r for r in runs if inside(r, busy_spans(a))]
        if len(during) >= want:
            break
    return during, rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled-smollm2")
    parser.add_argument("--reruns", type=int, default=10, help="B's reruns with A idle")
    parser.add_argument("--during", type=int, default=10, help="B's reruns wanted inside A's work")
    parser.add_argument("--rounds", type=int, default=40, help="most pieces of work A does per case")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        shape = save_gpt2_shape(Path(tmp) / "gpt2-medium-shape")
        texts = long_texts(args.model, TRACE_TOKENS)
        env = {"VECTORLAB_MODEL": args.model, "VECTORLAB_DATA_DIR": str(Path(tmp) / "data")}
        with Server(APP, env, log=Path(tmp) / "server.log") as server:
            browser = launch_chromium(p)
            a = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            b = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            for page in (a, b):
                open_when_up(page, server.url)
                wait_drawn(page, "Vector Lab")
            for page, station in ((a, STATIONS[0]), (b, STATIONS[1])):
                click_station(page, station.title)
                wait_drawn(page, f"{station.number} ·")  # the model loaded, the text traced
            for _ in range(2):
                rerun(b)  # warm
            idle = [rerun(b) for _ in range(args.reruns)]

            a.evaluate(_WATCH_BUSY, [TRACING, TRACING_TEXT])
            tracing = (partial(set_text, a, t) for t in islice(texts, args.rounds))
            traced, n_texts = reruns_while_busy(a, b, tracing, args.during)

            a.evaluate(_WATCH_BUSY, [LOADING, ""])
            loading = (partial(pick_model, a, str(f)) for f in linked_copies(shape, args.rounds))
            loaded, n_models = reruns_while_busy(a, b, loading, args.during)
            browser.close()
    t_idle = statistics.median(r.seconds for r in idle)
    print("Medians of session B's reruns that started and ended while session A was busy.")
    print()
    print(f"| session B reruns station {STATIONS[1].number} | reruns | median (ms) | vs idle |")
    print("|---|---:|---:|---:|")
    print(f"| session A idle | {len(idle)} | {1e3 * t_idle:.0f} | 1.00× |")
    for what, runs in (
        (f"session A tracing texts of {TRACE_TOKENS} tokens ({n_texts} traced)", traced),
        (f"session A loading other models ({n_models} loaded)", loaded),
    ):
        if not runs:
            print(f"| {what} | 0 | – | – |")
            continue
        t = statistics.median(r.seconds for r in runs)
        print(f"| {what} | {len(runs)} | {1e3 * t:.0f} | {t / t_idle:.2f}× |")


if __name__ == "__main__":
    main()
