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
                    page.wait_for_timeout(1500)  # let the charts draw
                    name = Path(station.page).stem
                    page.screenshot(path=str(out / f"{name}.png"), full_page=True)
                    print("wrote", out / f"{name}.png")
                browser.close()
        finally:
            server.stop()


if __name__ == "__main__":
    main(*sys.argv[1:2])
