"""Shared by the browser benchmarks: a `streamlit run` server on a free loopback port, headless
Chromium through Playwright, and the moment a page is fully drawn (its script run over, its content
on screen) as the user sees it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("VECTORLAB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"]
APP = "serve.py"  # what `make run` serves: app.py, its model's load begun as the server starts
TIMEOUT_MS = 600_000  # a cold first load on a busy machine can take minutes; nothing here is a limit

# True once the app's script run is over and `text` is on screen in an element matching `selector`.
# Streamlit marks its root with the script's run state; "notRunning" before the first run has drawn
# anything is excluded by requiring the text.
_DRAWN = """([selector, text]) => {
  const app = document.querySelector('[data-testid="stApp"]');
  if (!app || app.getAttribute('data-test-script-state') !== 'notRunning') return false;
  return [...document.querySelectorAll(selector)].some(
    (e) => e.offsetParent !== null && e.innerText.includes(text));
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`streamlit run <script>` on a free loopback port, its process group ended by `stop`.

    `launched` is the perf_counter reading just before the process started: start-up figures count
    from there (Python, Streamlit and the app's imports included)."""

    def __init__(self, script: str | Path, env: dict[str, str] | None = None, log: Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log or os.devnull, "w")  # noqa: SIM115 - closed in stop()
        self.launched = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(script), "--server.port", str(self.port)]
            + ["--server.address", "127.0.0.1", "--server.headless", "true"],
            cwd=ROOT,
            env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._log.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def launch_chromium(playwright):
    """Debian's Chromium, headless."""
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)


def open_when_up(page, url: str) -> None:
    """Load `url`, retrying while the server is not listening yet (it is starting)."""
    from playwright.sync_api import Error

    deadline = time.perf_counter() + TIMEOUT_MS / 1000
    while True:
        try:
            page.goto(url, wait_until="commit", timeout=TIMEOUT_MS)
            return
        except Error:
            if time.perf_counter() > deadline:
                raise
            time.sleep(0.02)


def wait_drawn(page, text: str, selector: str = "h1", timeout_ms: float = TIMEOUT_MS) -> float:
    """Wait until the script run is over and `text` shows in a `selector` element; perf_counter then."""
    page.wait_for_function(_DRAWN, arg=[selector, text], timeout=timeout_ms, polling="raf")
    return time.perf_counter()


def click_station(page, title: str) -> None:
    page.locator('[data-testid="stSidebarNavLink"]', has_text=title).click()


def wait_idle(page, timeout_ms: float = 5000) -> float:
    """Wait until the browser's main thread is idle (charts rendered, nothing queued); perf_counter then."""
    page.evaluate("(t) => new Promise((done) => requestIdleCallback(() => done(), {timeout: t}))", timeout_ms)
    return time.perf_counter()


def set_text(page, text: str) -> None:
    """Put `text` in the sidebar's shared text box and apply it (what every model page traces)."""
    box = page.get_by_role("textbox", name="The text every model page traces")
    box.fill(text)
    box.press("Control+Enter")
