"""The README's screenshot of the review station: the station app (served by uvicorn on 127.0.0.1,
tests/station_fixtures.py) with 60 queued synthetic AOI images of three products, a reviewer who
has judged a few, in Debian's Chromium through Playwright at 1920x1080.

    .venv/bin/python -m bench.station_screenshot [--out docs/station.png] [--lang zh|en]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from tests.station_fixtures import served_station

WAIT_MS = 15_000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("docs/station.png"))
    ap.add_argument("--lang", choices=("zh", "en"), default="zh")
    ap.add_argument("--width", type=int, default=1920)
    ap.add_argument("--height", type=int, default=1080)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="adcp-station-") as tmp, \
            served_station(Path(tmp), "fab-a", 60, seed=7) as station, sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": args.width, "height": args.height})
            page.goto(station.url)
            page.evaluate(f"localStorage.setItem('adcp.station.lang', '{args.lang}')")
            page.reload()
            page.locator("#credential").fill(station.token("li.wei"))
            page.locator("#login-submit").click()
            image = page.locator("#image")
            expect(page.locator("#image[data-item-id]")).to_be_attached(timeout=WAIT_MS)
            for key in ("2", "F", "1", "3", "F", "2", "F"):
                shown = image.get_attribute("data-item-id")
                page.keyboard.press(key)
                page.wait_for_function("(prev) => { const id = document.getElementById('image').dataset.itemId;"
                                       " return id && id !== prev; }", arg=shown, timeout=WAIT_MS)
            expect(page.locator("#queue-rows tr").first).to_be_visible(timeout=WAIT_MS)
            expect(page.locator(".flash")).to_have_count(0, timeout=WAIT_MS)  # the last key's flash is over
            expect(page.locator("#queue-total")).to_have_text(str(60 - 7), timeout=WAIT_MS)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out))
            print(f"wrote {args.out} ({args.width}x{args.height}, {args.lang})")
        finally:
            browser.close()


if __name__ == "__main__":
    main()
