"""Take the README's screenshots from the running app: `python scripts/screenshots.py [model-spec]
[--only NAME ...]` (NAME: home, 1_tokens … 10_experiments, 7_search_vectors; default: all)."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from playwright.sync_api import sync_playwright  # noqa: E402
from test_e2e import CHROMIUM, CHROMIUM_FLAGS, Server, wait_idle  # noqa: E402

from ui.stations import STATIONS  # noqa: E402

CORPUS = ROOT / "tests" / "data" / "corpus"
SEARCH_VECTORS = "7_search_vectors"  # the search page's "query and a hit as vectors" section alone
STATION_TIMEOUT = 600_000  # ms: a station's first draw on the real model (the What if? tab's included)
VECTORS_HEIGHT = 1400  # pixels of the page shown from that section's heading down


def shot_name(station) -> str:
    """'9_journey' for station 9 drawn by pages/9_journey.py: the README's number, the page's name."""
    return f"{station.number}_{Path(station.page).stem.split('_', 1)[1]}"


def button(page, name: str):
    return page.locator('[data-testid^="stBaseButton-"]:not([kind="elementToolbar"])').get_by_text(
        name, exact=True
    )


def search_something(page) -> None:
    """Index a few of the test corpus's documents and ask a paraphrased question."""
    with page.expect_file_chooser() as chooser:
        page.locator('[data-testid="stFileUploaderDropzone"]').click()
    chooser.value.set_files([str(CORPUS / n) for n in ("honeybees.txt", "tides.txt", "volcanoes.txt")])
    wait_idle(page)
    button(page, "Index").click()
    wait_idle(page, timeout=300_000)
    page.get_by_role("textbox", name="Question or phrase").fill("How do bees tell each other where food is?")
    button(page, "Search").click()
    wait_idle(page, timeout=300_000)


def train_a_little(page) -> None:
    """A short real fine-tune, so the live charts and the before/after have something to show."""
    steps = page.get_by_role("spinbutton", name="Steps")
    steps.fill("8")
    steps.press("Enter")
    wait_idle(page)
    button(page, "Start").click()
    page.get_by_text("Finished: step 8 of 8").first.wait_for(timeout=600_000)
    wait_idle(page, timeout=300_000)


def patch_every_cell(page) -> None:
    """The patching tab on its default prompts (France / Italy), with the layer × position sweep run."""
    page.get_by_role("tab", name="Patch activations").click()
    wait_idle(page, timeout=300_000)
    button(page, "Patch every cell").click()
    wait_idle(page, timeout=600_000)
    page.get_by_text("Fraction restored by patching").first.wait_for(state="attached", timeout=60_000)


# Every chart on screen (not in a hidden tab) has drawn its canvas.
CHARTS_DRAWN = """() => [...document.querySelectorAll('.vega-embed')]
  .filter((e) => e.checkVisibility())
  .every((e) => e.querySelector('canvas, svg') !== null && e.getBoundingClientRect().height > 30)"""


def wait_for_charts(page) -> None:
    """Wait until every chart on the page is drawn (Vega draws after the script has finished)."""
    page.wait_for_function(CHARTS_DRAWN, timeout=120_000)
    page.wait_for_timeout(1500)


def vectors_section(page, path: Path) -> None:
    """Screenshot the search page's "both vectors" section, from its heading down."""
    heading = page.get_by_role("heading", name="The query and a hit as vectors")
    heading.wait_for(timeout=60_000)
    box = heading.bounding_box()
    size = page.viewport_size
    page.screenshot(
        path=str(path),
        full_page=True,
        clip={"x": 0, "y": box["y"] - 20, "width": size["width"], "height": VECTORS_HEIGHT},
    )


def main(
    spec: str = "bundled-smollm2", only: set[str] | None = None, out: Path = ROOT / "docs" / "screenshots"
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    wanted = (lambda name: True) if not only else (lambda name: name in only)
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(spec, Path(tmp))
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
                page = browser.new_page(viewport={"width": 1400, "height": 3600})
                page.goto(server.url)
                wait_idle(page, timeout=300_000)
                if wanted("home"):
                    page.screenshot(path=str(out / "home.png"), full_page=True)
                for station in STATIONS:
                    name = shot_name(station)
                    vectors = name == "7_search" and wanted(SEARCH_VECTORS)
                    if not (wanted(name) or vectors):
                        continue
                    page.locator('[data-testid="stSidebarNavLink"]', has_text=station.title).click()
                    wait_idle(page, timeout=STATION_TIMEOUT)
                    if name == "7_search":
                        search_something(page)
                    elif name == "8_training":
                        train_a_little(page)
                    elif name == "10_experiments":
                        patch_every_cell(page)
                    wait_for_charts(page)
                    if wanted(name):
                        page.screenshot(path=str(out / f"{name}.png"), full_page=True)
                        print("wrote", out / f"{name}.png")
                    if vectors:
                        vectors_section(page, out / f"{SEARCH_VECTORS}.png")
                        print("wrote", out / f"{SEARCH_VECTORS}.png")
                browser.close()
        finally:
            server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "spec", nargs="?", default="bundled-smollm2", help="model spec (default: bundled-smollm2)"
    )
    parser.add_argument("--only", nargs="+", metavar="NAME", help="take only these screenshots")
    args = parser.parse_args()
    main(args.spec, set(args.only or ()))
