"""Real-browser tests: Playwright drives Debian's Chromium against `streamlit run serve.py` (what `make run`
serves) on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from ui.stations import STATIONS

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("VECTORLAB_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _require_browser() -> None:
    missing = None
    if not Path(CHROMIUM).exists():
        missing = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            missing = "Playwright for Python is not installed"
    if missing:
        if os.environ.get("VECTORLAB_REQUIRE_BROWSER") == "1":
            pytest.fail(f"Browser tests are required here but cannot run: {missing}")
        pytest.skip(f"Browser tests skipped: {missing}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(
        self, model_spec: str, tmp: Path, extra_env: dict[str, str] | None = None, entry: str = "serve.py"
    ):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "VECTORLAB_MODEL": model_spec,
            "VECTORLAB_DATA_DIR": str(tmp / "data"),
            "HF_HUB_OFFLINE": "1",
            **(extra_env or {}),
        }
        self.log = open(tmp / "streamlit.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamlit",
                "run",
                entry,
                "--server.port",
                str(self.port),
                "--server.address",
                "127.0.0.1",
                "--server.headless",
                "true",
            ],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError("streamlit did not become healthy in 90 s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="module")
def browser():
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_gpt2_dir):
    _require_browser()
    srv = Server(str(tiny_gpt2_dir), tmp_path_factory.mktemp("e2e"))
    yield srv
    srv.stop()


def wait_idle(page, timeout: float = 120_000) -> None:
    """Wait until Streamlit has started (if it is about to) and finished running this page's script."""
    try:
        page.wait_for_selector('[data-testid="stApp"][data-test-script-state="running"]', timeout=1500)
    except Exception:  # noqa: BLE001 - the run may already be over; Playwright's TimeoutError
        pass
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=timeout)
    page.wait_for_selector('[data-testid="stSpinner"]', state="detached", timeout=timeout)
    page.wait_for_timeout(300)


def assert_no_exception(page, name: str) -> None:
    exceptions = page.locator('[data-testid="stException"]')
    if exceptions.count():
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
        pytest.fail(f"{name}: {exceptions.first.inner_text()[:2000]}")


@pytest.fixture
def page(browser, request):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    yield pg
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        ARTIFACTS.mkdir(exist_ok=True)
        pg.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    context.close()


def test_visit_every_page_and_type(server, page):
    page.goto(server.url)
    wait_idle(page)
    page.get_by_role("heading", name="Vector Lab").wait_for()
    assert_no_exception(page, "home")
    for station in STATIONS:
        page.locator('[data-testid="stSidebarNavLink"]', has_text=station.title).click()
        wait_idle(page)
        page.get_by_role("heading", name=f"{station.number} ·").first.wait_for()
        assert_no_exception(page, station.title)

    box = page.get_by_role("textbox", name="The text every model page traces")
    box.fill("Hello world, a browser typed this 🙂")
    box.press("Control+Enter")
    wait_idle(page)
    assert_no_exception(page, "typed")
    page.locator('[data-testid="stSidebarNavLink"]', has_text=STATIONS[0].title).click()
    wait_idle(page)
    assert page.get_by_text("15496").count() >= 1  # "Hello" is GPT-2 id 15496, shown under its piece
    assert_no_exception(page, "tokens-after-typing")

    # Output station: generate in the browser and see every step reported.
    page.locator('[data-testid="stSidebarNavLink"]', has_text="Output softmax").click()
    wait_idle(page)
    page.get_by_role("button", name="Generate").click()
    wait_idle(page)
    page.get_by_text("12 tokens in").first.wait_for()
    assert_no_exception(page, "generate")
    # Charts offer the Vega menu (save as SVG / PNG).
    assert page.locator(".vega-embed").count() >= 2
    # Sections drawn only once opened: a click on the expander draws its content.
    assert page.get_by_text("Perplexity").count() == 0
    page.get_by_text("How surprised was the model by your text?").click()
    page.get_by_text("Perplexity").first.wait_for()
    page.get_by_text("Inspect one step's distribution").click()
    page.get_by_text("Step 0: chose").first.wait_for()
    assert_no_exception(page, "lazy sections")

    # Training station: start a run, see it step, stop it.
    page.locator('[data-testid="stSidebarNavLink"]', has_text="Training with gradients").click()
    wait_idle(page)
    steps = page.get_by_role("spinbutton", name="Steps")
    steps.fill("5000")
    steps.press("Enter")
    wait_idle(page)
    page.get_by_text("Estimated time: about").first.wait_for()  # timed on the model, before Start
    page.get_by_role("button", name="Start").click()
    page.get_by_text("Training: step").first.wait_for(timeout=60_000)
    page.get_by_text("Loss", exact=True).first.wait_for(timeout=60_000)
    page.get_by_role("button", name="Stop").click()
    page.get_by_text("Stopped — press Resume").first.wait_for(timeout=60_000)
    assert_no_exception(page, "training")

    page.locator('[data-testid="stSidebarNavLink"]', has_text=STATIONS[0].title).click()
    wait_idle(page)
    box = page.get_by_role("textbox", name="The text every model page traces")
    box.fill("   ")
    box.press("Control+Enter")
    wait_idle(page)
    page.get_by_text("The text is empty. Type a sentence in the sidebar to trace it.").first.wait_for()
    assert_no_exception(page, "empty")


def test_gpt2_from_local_hf_cache_is_served(browser, tmp_path, tiny_gpt2_dir):
    """VECTORLAB_MODEL=gpt2 with GPT-2 in the local Hugging Face cache serves GPT-2, offline."""
    from test_models import _make_hf_cache

    cache = tmp_path / "hub"
    _make_hf_cache(cache, "gpt2", tiny_gpt2_dir)
    srv = Server("gpt2", tmp_path, extra_env={"HF_HUB_CACHE": str(cache)})
    try:
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.goto(srv.url)
        wait_idle(pg)
        sidebar = pg.locator('[data-testid="stSidebar"]')
        sidebar.get_by_text("From the local Hugging Face cache.").wait_for()
        assert sidebar.get_by_text("learned absolute table (wpe)").count() == 1
        pg.locator('[data-testid="stSidebarNavLink"]', has_text="Positional encoding").click()
        wait_idle(pg)
        pg.get_by_text("input = token embedding + position vector").first.wait_for()
        assert_no_exception(pg, "gpt2-from-cache")
        pg.close()
    finally:
        srv.stop()


# A snapshot of one moment: the landing page's heading and its last station card are on screen while
# the sidebar still shows the model's load in progress (and no model card yet).
LANDING_DRAWN_WHILE_LOADING = """([last]) => {
  const heading = [...document.querySelectorAll('h1')].some((h) => h.innerText.includes('Vector Lab'));
  const cards = [...document.querySelectorAll('a')].some((a) => a.innerText.includes(last));
  const sidebar = document.querySelector('[data-testid="stSidebar"]');
  const loading = sidebar && sidebar.querySelector('[data-testid="stProgress"]') !== null;
  const card = sidebar && sidebar.innerText.includes('Parameters');
  return heading && cards && loading && !card;
}"""


@pytest.mark.slow
def test_the_landing_page_is_drawn_while_the_model_loads(browser, tmp_path):
    """On a cold server the landing page does not wait for the bundled model: its content is on
    screen while the sidebar shows the load's progress, and the model's card replaces it once loaded.
    Served from app.py, whose load begins with the first visit: serve.py's begins as the server starts
    and may be over before the page is opened."""
    srv = Server("bundled-smollm2", tmp_path, entry="app.py")
    try:
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.goto(srv.url)
        last = f"{STATIONS[-1].number}. {STATIONS[-1].title}"
        pg.wait_for_function(LANDING_DRAWN_WHILE_LOADING, arg=[last], timeout=120_000)
        sidebar = pg.locator('[data-testid="stSidebar"]')
        sidebar.get_by_text("SmolLM2-135M-Instruct (bundled)").wait_for(timeout=600_000)
        sidebar.get_by_text("Parameters").wait_for()
        wait_idle(pg)
        assert sidebar.locator('[data-testid="stProgress"]').count() == 0  # the refreshing stopped
        assert_no_exception(pg, "landing-while-loading")
        pg.close()
    finally:
        srv.stop()


WAITING = "Loading the model: this page is drawn as soon as it is ready (progress in the sidebar)."
# One moment: the page says it waits for the model, the sidebar shows the load's progress and no model
# card, and nothing the page draws from the model is there yet.
STATION_WAITING = """([note, part]) => {
  const main = document.querySelector('[data-testid="stMain"]');
  const sidebar = document.querySelector('[data-testid="stSidebar"]');
  if (!main || !sidebar) return false;
  const progress = sidebar.querySelector('[data-testid="stProgress"]') !== null;
  return main.innerText.includes(note) && !main.innerText.includes(part) && progress
    && !sidebar.innerText.includes('Parameters');
}"""


@pytest.mark.slow
def test_a_station_opened_while_the_model_loads_waits_then_draws(browser, tmp_path):
    """The first station opened first on a cold server says it waits for the model, then draws (served
    from app.py, as the test above)."""
    srv = Server("bundled-smollm2", tmp_path, entry="app.py")
    station = STATIONS[0]
    try:
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.goto(f"{srv.url}/{Path(station.page).stem.split('_', 1)[1]}")
        pg.wait_for_function(STATION_WAITING, arg=[WAITING, "The pieces"], timeout=120_000)
        pg.get_by_role("heading", name="The pieces").wait_for(timeout=600_000)  # drawn from the model
        wait_idle(pg, timeout=600_000)
        assert pg.get_by_text(WAITING).count() == 0
        sidebar = pg.locator('[data-testid="stSidebar"]')
        assert sidebar.get_by_text("SmolLM2-135M-Instruct (bundled)").count() == 1
        assert_no_exception(pg, "station-while-loading")
        pg.close()
    finally:
        srv.stop()


def open_station(page, title: str) -> None:
    page.locator('[data-testid="stSidebarNavLink"]', has_text=title).click()
    wait_idle(page)


def shown_checks(page) -> dict[str, str]:
    """Every check metric on the page: its label -> its verdict ("exact", "within rounding …", "FAILED …")."""
    checks = {}
    for metric in page.locator('[data-testid="stMetric"]').all():
        label = metric.locator('[data-testid="stMetricLabel"]').inner_text().strip()
        if label.startswith(("Check", "Identity check")):
            checks[label] = metric.locator('[data-testid="stMetricDelta"]').inner_text().strip()
    return checks


def passed(verdict: str) -> bool:
    return verdict.startswith(("exact", "within rounding"))


def test_what_if_ablation_runs_end_to_end(server, page):
    """Pick a head in the What if? station's ablation tab: both runs side by side, the identity check
    passed, and the head sweep drawn."""
    page.goto(server.url)
    wait_idle(page)
    open_station(page, "What if? Experiments")
    page.get_by_role("tab", name="Ablate heads").click()
    panel = page.get_by_role("tabpanel", name="Ablate heads")
    panel.locator('[data-testid="stMultiSelect"]').click()
    page.get_by_role("option", name="L1H0").click()
    page.keyboard.press("Escape")
    wait_idle(page)
    panel.get_by_text("Changed: zero-ablate L1H0").wait_for()
    panel.get_by_text("Original", exact=True).wait_for()
    kl = panel.locator('[data-testid="stMetric"]', has_text="KL(original ‖ changed)")
    assert kl.locator('[data-testid="stMetricValue"]').inner_text().strip() != "0 nats"
    assert passed(shown_checks(panel)["Identity check: ablate no heads"])
    panel.get_by_role("button", name="Rank every head").click()
    wait_idle(page)
    assert panel.locator(".vega-embed").count() >= 2  # the comparison chart and the sweep heatmap
    assert panel.get_by_text("Stopped after").count() == 0
    assert_no_exception(page, "what-if-ablation")


def test_journey_draws_every_step_with_its_checks_and_links_on(server, page):
    """Pick a token in "One token's journey": every step is drawn, every check passes, and a step's
    link opens the station that explains it."""
    page.goto(server.url)
    wait_idle(page)
    open_station(page, "One token's journey")
    page.get_by_role("combobox", name="Follow the token").click()
    page.get_by_role("option", name="1: ").first.click()
    wait_idle(page)
    position = page.locator('[data-testid="stMetric"]', has_text="Position t")
    assert position.locator('[data-testid="stMetricValue"]').inner_text().startswith("1 of ")
    for step in range(1, 9):
        page.get_by_role("heading", name=f"{step} ·").first.wait_for()
    checks = shown_checks(page)
    assert len(checks) >= 5 and all(passed(v) for v in checks.values()), checks
    assert_no_exception(page, "journey")
    page.get_by_role("link", name="Explained in station 3: Self-attention").click()
    wait_idle(page)
    page.get_by_role("heading", name="3 · Self-attention").first.wait_for()
    assert_no_exception(page, "journey-link")


def test_attention_station_draws_a_section_when_it_is_opened(server, page):
    """Station 3 shows one chart at first; opening "Every head at once" draws its image and table."""
    page.goto(server.url)
    wait_idle(page)
    open_station(page, "Self-attention")
    page.get_by_role("heading", name="3 · Self-attention").first.wait_for()
    assert page.locator(".vega-embed").count() == 1
    assert passed(shown_checks(page)["Check: max |hand-computed output − model's head output|"])
    page.locator('[data-testid="stExpander"] summary', has_text="Every head at once").click()
    wait_idle(page)
    page.get_by_text("Colour the layer × head table by").wait_for()
    assert page.locator(".vega-embed").count() == 2
    assert page.locator('[data-testid="stExpander"] img').count() == 1
    assert_no_exception(page, "attention-section")
