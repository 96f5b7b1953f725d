"""The big screen in headless Chromium (Debian's /usr/bin/chromium driven by Playwright).

Against a real platform (`adcp up`: the coordinator and two local Ray sites): `adcp dashboard
--url` logs the screen in once, both sites' tiles appear, a figure on the page equals the API's,
the detail view draws its charts, the link fails a second time, and the page logs no console
errors; the screenshot goes to test-artifacts/dashboard.png. Against 100 made-up sites (a fake
Monitor behind the same routes, no Ray): the grid sorts down sites first and pages.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from coordinator.api.auth import install_door
from coordinator.dashboard.routes import add_dashboard_routes
from coordinator.process import read_token, running
from coordinator.state.db import State
from tests.dashboard_fakes import FakeMonitor
from tests.platform_fixtures import run_cli, running_platform
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

playwright_api = pytest.importorskip("playwright.sync_api", reason="make install-test installs playwright")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
UP_S = 180  # two local Ray sites on a shared 2-core machine: first sweep and first history rows
VIEWPORT = {"width": 1600, "height": 900}


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make install-test` installs Debian's chromium")
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        try:
            yield b
        finally:
            b.close()


class Page:
    """A fresh browser context and page that records console errors and uncaught exceptions."""

    def __init__(self, browser) -> None:
        self.context = browser.new_context(viewport=VIEWPORT)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))

    def value(self, metric: str) -> str | None:
        return self.page.locator(f'[data-metric="{metric}"]').first.get_attribute("data-value")

    def close(self) -> None:
        self.context.close()


@pytest.fixture(scope="module")
def platform_home(tmp_path_factory):
    with running_platform(tmp_path_factory.mktemp("dashboard") / "home",
                          {"fab-a": {}, "fab-b": {"num_gpus": 2}}) as home:
        yield home


def _api_overview(home: Path) -> dict:
    info = running(home)
    r = httpx.get(f"{info['url']}/api/v1/overview", headers={"Authorization": f"Bearer {read_token(home)}"}, timeout=10)
    r.raise_for_status()
    return r.json()


def _site(overview: dict, name: str) -> dict:
    return next(s for s in overview["sites"] if s["name"] == name)


def test_big_screen_on_a_real_platform(platform_home, browser, capsys):
    code, out, err = run_cli(capsys, platform_home, "dashboard", "--url")
    assert code == 0, err
    url = out.strip()
    assert url.startswith(running(platform_home)["url"] + "/dashboard/login?once=")
    screen = Page(browser)
    try:
        response = screen.page.goto(url)
        assert response.status == 200 and screen.page.url.endswith("/dashboard")
        for site in ("fab-a", "fab-b"):
            playwright_api.expect(screen.page.locator(f'.tile[data-site="{site}"]')).to_be_visible(timeout=UP_S * 1000)

        # Both sites read at least once (their tiles show memory), then page and API agree.
        wait_for(lambda: all(screen.value(f"{s}:mem_total") for s in ("fab-a", "fab-b")), UP_S, "memory on both tiles")
        wait_for(lambda: _same_figures(screen, _api_overview(platform_home)), 60,
                 "the page's figures to equal the API's")
        ARTIFACTS.mkdir(exist_ok=True)
        wait_for(lambda: screen.page.locator('.tile[data-site="fab-a"] .spark .uplot').count() > 0, 60, "sparklines")
        screen.page.screenshot(path=str(ARTIFACTS / "dashboard.png"))

        screen.page.locator('.tile[data-site="fab-b"]').click()
        playwright_api.expect(screen.page.locator("#detail-view")).to_be_visible()
        playwright_api.expect(screen.page.locator('#charts [data-chart="fab-b:util"] .uplot')).to_be_visible(
            timeout=UP_S * 1000)
        ray_link = screen.page.locator("#detail-ray").get_attribute("href")
        assert ray_link == _site(_api_overview(platform_home), "fab-b")["dashboard_url"]
        screen.page.screenshot(path=str(ARTIFACTS / "dashboard-detail.png"))
        assert screen.errors == []
    finally:
        screen.close()

    second = Page(browser)
    try:
        assert second.page.goto(url).status == 401
        assert "already used" in second.page.content()
    finally:
        second.close()


def _same_figures(screen: Page, api: dict) -> bool:
    """The figures that do not move between two reads: memory size per site and the GPU total."""
    page = [screen.value(f"{s}:mem_total") for s in ("fab-a", "fab-b")] + [screen.value("total:gpus_total")]
    want = [_site(api, s)["latest"]["mem_total"] for s in ("fab-a", "fab-b")] + [api["totals"]["gpus_total"]]
    return all(p not in (None, "") and float(p) == float(w) for p, w in zip(page, want, strict=True)) and want[-1] == 2


# --- 100 made-up sites, the same routes, no Ray ---------------------------------------------

@pytest.fixture(scope="module")
def fake_coordinator(tmp_path_factory):
    state = State(tmp_path_factory.mktemp("fake-center") / "coordinator.db")
    app = FastAPI()
    install_door(app, "t", state)
    add_dashboard_routes(app, SimpleNamespace(state=state, site=lambda name: name))
    app.state.monitor = FakeMonitor(n=100)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        wait_for(lambda: server.started, 30, "the fake coordinator")
        yield SimpleNamespace(base=base, monitor=app.state.monitor)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
        state.close()


def test_hundred_sites_sort_down_first_and_page(fake_coordinator, browser):
    url = httpx.post(f"{fake_coordinator.base}/api/v1/dashboard/logins",
                     headers={"Authorization": "Bearer t"}).json()["url"]
    screen = Page(browser)
    try:
        screen.page.goto(url)
        tiles = screen.page.locator(".tile")
        playwright_api.expect(tiles.first).to_be_visible(timeout=30_000)
        shown = tiles.count()
        assert 1 <= shown < 100
        healths = [t.get_attribute("class").split()[-1] for t in tiles.all()]
        down = sum(1 for s in fake_coordinator.monitor.overview()["sites"] if s["health"] == "down")
        assert healths[: min(down, shown)] == ["down"] * min(down, shown)
        playwright_api.expect(screen.page.locator("#pager")).to_be_visible()
        pages = -(-100 // shown)
        playwright_api.expect(screen.page.locator("#page-label")).to_contain_text(f"/ {pages}")
        first = tiles.first.get_attribute("data-site")
        screen.page.locator("#page-next").click()
        playwright_api.expect(tiles.first).not_to_have_attribute("data-site", first)
        name = tiles.first.get_attribute("data-site")
        want = next(s for s in fake_coordinator.monitor.overview()["sites"] if s["name"] == name)
        assert float(screen.value(f"{name}:mem_total")) == want["latest"]["mem_total"]
        assert screen.value("total:sites") == "100"
        # Live: the next poll (interval_s = 1 s here) rewrites the page without a reload.
        screen.page.evaluate("window.notReloaded = true")
        stamp = screen.page.locator("#freshness").text_content()
        playwright_api.expect(screen.page.locator("#freshness")).not_to_have_text(stamp, timeout=15_000)
        assert screen.page.evaluate("window.notReloaded === true")
        assert screen.errors == []
    finally:
        screen.close()

