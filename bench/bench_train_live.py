"""Training speed with the training page open against the same run with its tab closed.

python bench/bench_train_live.py [--repeats 3] [--steps 10] [--batch 4] [--seq 64] [--model bundled-smollm2]

One `streamlit run app.py` server; Playwright drives Debian's Chromium (headless) to the training
page, sets the run and presses Start. "page open" keeps the tab on the page (its live view redraws
every second) until the run ends; "tab closed" closes the tab as soon as the run has started. The
two alternate, `--repeats` times each. Steps/s is the run's own clock (`TrainStep.elapsed_s` of the
last step, read from the checkpoint's history.json: steps and evaluations, not the final save); the
server's largest resident memory during each run is sampled from /proc.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("VECTORLAB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"]
OPEN, CLOSED = "page open", "tab closed"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, data_dir: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "VECTORLAB_MODEL": model, "VECTORLAB_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port)]
        + ["--server.address", "127.0.0.1", "--server.headless", "true"]
        # Each run uses a new tab: forget closed tabs' sessions (and the runs their pages still
        # reference) after 5 s instead of 120 s, so no run starts with earlier runs in memory.
        + ["--server.disconnectedSessionTTL", "5"],
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGTERM)
    raise RuntimeError(f"streamlit did not become healthy in 120 s; see {log}")


class PeakMemory:
    """The largest resident set size of one process while `with` lasts, sampled every 0.2 s."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_kb, self._done = pid, 0, threading.Event()

    def _sample(self) -> None:
        while not self._done.wait(0.2):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    self.peak_kb = max(self.peak_kb, int(line.split()[1]))

    def __enter__(self) -> PeakMemory:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()


def wait_idle(page, timeout: float = 300_000) -> None:
    try:
        page.wait_for_selector('[data-testid="stApp"][data-test-script-state="running"]', timeout=1500)
    except Exception:  # noqa: BLE001 - the run may already be over; Playwright's TimeoutError
        pass
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=timeout)
    page.wait_for_timeout(300)


def one_run(browser, url: str, mode: str, name: str, args, checkpoints: Path, pid: int) -> dict:
    """Start a run from the page; keep the tab open or close it; return the run's own figures."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    wait_idle(page)
    page.locator('[data-testid="stSidebarNavLink"]', has_text="Training with gradients").click()
    wait_idle(page)
    discard = page.get_by_role("button", name="Discard run")
    if discard.is_enabled():  # the previous run: free its model and skip its before/after views
        discard.click()
        wait_idle(page)
    for label, value in (("Steps", args.steps), ("Batch size", args.batch), ("Sequence length", args.seq)):
        box = page.get_by_role("spinbutton", name=label)
        box.fill(str(value))
        box.press("Enter")
        wait_idle(page)
        if box.input_value() != str(value):
            raise RuntimeError(f"the page did not take {label} = {value}")
    box = page.get_by_role("textbox", name="Save as checkpoint")
    box.fill(name)
    box.press("Enter")
    wait_idle(page)
    history = checkpoints / name / "history.json"
    with PeakMemory(pid) as memory:
        page.get_by_role("button", name="Start").click()
        page.get_by_text("Training: step").first.wait_for(timeout=120_000)
        if mode == CLOSED:
            page.close()
        deadline = time.time() + args.timeout
        while not history.exists():
            if time.time() > deadline:
                raise RuntimeError(f"{mode}: no checkpoint after {args.timeout} s")
            time.sleep(0.2)
    if mode == OPEN:  # let the page finish drawing the ended run before the next one starts
        page.get_by_text("Finished").first.wait_for(timeout=120_000)
        wait_idle(page)
        page.close()
    steps = json.loads(history.read_text())
    config = json.loads((checkpoints / name / "settings.json").read_text())["config"]
    shutil.rmtree(checkpoints / name, ignore_errors=True)
    ran = (len(steps), config["batch_size"], config["seq_len"])
    if ran != (args.steps, args.batch, args.seq):
        raise RuntimeError(f"{mode}: the page ran steps, batch, seq = {ran}, not the settings asked for")
    elapsed = steps[-1]["elapsed_s"]
    return {"steps_per_s": len(steps) / elapsed, "elapsed_s": elapsed, "peak_gb": memory.peak_kb / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--model", default="bundled-smollm2")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed per run")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    runs: dict[str, list[dict]] = {OPEN: [], CLOSED: []}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        proc, url = start_server(args.model, data, Path(tmp) / "streamlit.log")
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
                for i in range(args.repeats):  # alternate so machine drift hits both alike
                    for mode in (OPEN, CLOSED):
                        name = f"bench-{'open' if mode == OPEN else 'closed'}-{i}"
                        r = one_run(browser, url, mode, name, args, data / "checkpoints", proc.pid)
                        runs[mode].append(r)
                        print(
                            f"  {mode}: {r['elapsed_s']:.1f} s, {r['steps_per_s']:.3f} steps/s, "
                            f"peak {r['peak_gb']:.2f} GB",
                            file=sys.stderr,
                            flush=True,
                        )
                browser.close()
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)

    closed = statistics.median(r["steps_per_s"] for r in runs[CLOSED])
    print(f"\n{args.model}: {args.steps} steps of {args.batch} × {args.seq} tokens, median of {args.repeats}")
    print("| training page | run (s) | steps/s | vs tab closed | server peak memory (GB) |")
    print("|---|---:|---:|---:|---:|")
    for mode in (CLOSED, OPEN):
        rate = statistics.median(r["steps_per_s"] for r in runs[mode])
        elapsed = statistics.median(r["elapsed_s"] for r in runs[mode])
        peak = max(r["peak_gb"] for r in runs[mode])
        print(f"| {mode} | {elapsed:.1f} | {rate:.3f} | {rate / closed:.2f}× | {peak:.2f} |")


if __name__ == "__main__":
    main()
