"""Take the README's screenshots from the running app: `python scripts/screenshots.py [model-spec]`."""

from __future__ import annotations

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


def main(spec: str = "bundled-smollm2", out: Path = ROOT / "docs" / "screenshots") -> None:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(spec, Path(tmp))
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
                page = browser.new_page(viewport={"width": 1400, "height": 3600})
                page.goto(server.url)
                wait_idle(page, timeout=300_000)
                page.screenshot(path=str(out / "home.png"), full_page=True)
                for station in STATIONS:
                    page.locator('[data-testid="stSidebarNavLink"]', has_text=station.title).click()
                    wait_idle(page, timeout=300_000)
                    name = Path(station.page).stem
                    if name == "7_search":
                        search_something(page)
                    elif name == "8_training":
                        train_a_little(page)
                    page.wait_for_timeout(1500)  # let the charts draw
                    page.screenshot(path=str(out / f"{name}.png"), full_page=True)
                    print("wrote", out / f"{name}.png")
                browser.close()
        finally:
            server.stop()


if __name__ == "__main__":
    main(*sys.argv[1:2])
