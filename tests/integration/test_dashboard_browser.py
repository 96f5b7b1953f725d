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
from tests.line_fakes import dashboard_center
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
    add_dashboard_routes(app, dashboard_center(state))
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



# --- production quality from fake review stations, the same routes, no Ray -------------------

TABLET = {"width": 820, "height": 1180}
_CJK_FONTS = ("Noto Sans CJK", "Noto Sans SC", "Source Han Sans", "WenQuanYi", "Microsoft YaHei", "PingFang")


@pytest.fixture(scope="module")
def quality_coordinator(tmp_path_factory):
    """A coordinator's dashboard routes over a FakeMonitor whose `quality` is a real
    QualityCollector reading two fake review stations (fab-a 北京一厂 with figures, fab-b 合肥二厂
    with none yet)."""
    from configs.monitoring import MonitoringConfig
    from configs.platform import SiteConfig
    from coordinator.monitoring.quality import QualityCollector
    from raycluster.gateway import gateway_for
    from tests.quality_fakes import CENTER_TOKEN, FakeStation, row

    rows = [row("p1", "adc@1", classified=872, automatic=812, review=60, audited_false_defect=812, escapes=3,
                audited_defect=170, overkill=2, backlog=14, oldest_age_s=720.0),
            row("p2", "adc@2", classified=128, automatic=120, backlog=0)]
    with FakeStation("fab-a", rows) as a, FakeStation("fab-b", []) as b:
        sites = [SiteConfig.model_validate({"name": n, "display_name": d, "store": {"url": f"/tmp/{n}"},
                                            "gateway": {"dashboard": s.url, "serve": s.url}})
                 for n, d, s in (("fab-a", "北京一厂", a), ("fab-b", "合肥二厂", b))]
        quality = QualityCollector(lambda: sites, gateway_for, lambda: CENTER_TOKEN,
                                   MonitoringConfig(interval_s=1, timeout_s=0.5), products={"p1": "55寸面板"})
        assert quality.collect() == {"fab-a": "ok", "fab-b": "ok"}
        state = State(tmp_path_factory.mktemp("quality-center") / "coordinator.db")
        app = FastAPI()
        install_door(app, "t", state)
        center = dashboard_center(state)
        center.lines.promote("adc", "fab-a", "1", by="eng", why="deploy")
        center.lines.set_alias("adc", "fab-a", "challenger", "2", by="eng", why="retrain")
        add_dashboard_routes(app, center)
        app.state.monitor = FakeMonitor(["fab-a", "fab-b"], quality=quality)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        try:
            wait_for(lambda: server.started, 30, "the fake coordinator")
            yield SimpleNamespace(base=f"http://127.0.0.1:{sock.getsockname()[1]}", quality=quality,
                                  stations={"fab-a": a, "fab-b": b})
        finally:
            server.should_exit = True
            thread.join(timeout=30)
            sock.close()
            quality.stop()
            state.close()


def _fonts_of(page, selector: str) -> list[str]:
    """The platform fonts Chromium really drew `selector`'s text with (DevTools CSS domain)."""
    cdp = page.context.new_cdp_session(page)
    try:
        cdp.send("DOM.enable")
        cdp.send("CSS.enable")
        root = cdp.send("DOM.getDocument")["root"]["nodeId"]
        node = cdp.send("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
        return [f["familyName"] for f in cdp.send("CSS.getPlatformFontsForNode", {"nodeId": node})["fonts"]]
    finally:
        cdp.detach()


@pytest.mark.parametrize("viewport", [{"width": 1920, "height": 1080}, TABLET], ids=["line-1920x1080", "tablet"])
def test_quality_tile_and_detail_show_the_sites_figures(quality_coordinator, browser, viewport):
    url = httpx.post(f"{quality_coordinator.base}/api/v1/dashboard/logins",
                     headers={"Authorization": "Bearer t"}).json()["url"]
    screen = Page(browser)
    screen.page.set_viewport_size(viewport)
    try:
        screen.page.goto(url)
        tile = screen.page.locator('.tile[data-site="fab-a"]')
        playwright_api.expect(tile).to_be_visible(timeout=30_000)
        want = next(s for s in quality_coordinator.quality.report()["sites"] if s["site"] == "fab-a")
        escape = tile.locator('[data-metric="fab-a:q_escape_rate"]')
        playwright_api.expect(escape).to_have_text("0.37 % (3/812)")
        assert float(escape.get_attribute("data-value")) == want["escape_rate"] == 3 / 812
        playwright_api.expect(tile.locator('[data-metric="fab-a:q_overkill_rate"]')).to_have_text("1.18 % (2/170)")
        playwright_api.expect(tile.locator('[data-metric="fab-a:q_automation_rate"]')).to_have_text("93.2 % (932/1000)")
        playwright_api.expect(tile.locator('[data-metric="fab-a:q_backlog"]')).to_have_text("14 · oldest 12 min")
        playwright_api.expect(tile.locator("h2")).to_have_text("北京一厂")
        playwright_api.expect(screen.page.locator('.tile[data-site="fab-b"] h2')).to_have_text("合肥二厂")
        playwright_api.expect(screen.page.locator('[data-metric="fab-b:q_escape_rate"]')).to_have_text("– (0/0)")
        # the model line at fab-a: champion 1, challenger 2 (no release: no stage); none at fab-b
        playwright_api.expect(tile.locator('[data-metric="fab-a:line:adc:champion"]')).to_have_text("★ 1")
        playwright_api.expect(tile.locator('[data-metric="fab-a:line:adc:challenger"]')).to_have_text("→ 2")
        assert screen.page.locator('.tile[data-site="fab-b"] .lines .lrow').count() == 0
        for box in (tile, tile.locator(".quality"), tile.locator(".lines")):  # each fits its tile, the tile the screen
            b = box.bounding_box()
            assert b["x"] >= 0 and b["x"] + b["width"] <= viewport["width"], (box, b)
        assert screen.page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        fonts = _fonts_of(screen.page, '.tile[data-site="fab-a"] h2')
        assert any(c in f for f in fonts for c in _CJK_FONTS), f"北京一厂 drawn without a CJK font: {fonts}"
        ARTIFACTS.mkdir(exist_ok=True)
        name = f"dashboard-quality-{viewport['width']}x{viewport['height']}"
        screen.page.screenshot(path=str(ARTIFACTS / f"{name}.png"))

        tile.click()
        playwright_api.expect(screen.page.locator("#detail-title")).to_have_text("北京一厂 (fab-a)")
        p1 = screen.page.locator('#detail-quality [data-quality-row="p1|adc@1"]')
        playwright_api.expect(p1).to_be_visible(timeout=15_000)
        playwright_api.expect(p1.locator("td").first).to_have_text("55寸面板")
        playwright_api.expect(p1.locator('[data-metric="fab-a:q_p1|adc@1:escape_rate"]')).to_have_text("0.37 % (3/812)")
        p2 = screen.page.locator('#detail-quality [data-quality-row="p2|adc@2"]')
        playwright_api.expect(p2.locator('[data-metric="fab-a:q_p2|adc@2:escape_rate"]')).to_have_text("– (0/0)")
        screen.page.screenshot(path=str(ARTIFACTS / f"{name}-detail.png"))
        assert screen.errors == []
    finally:
        screen.close()


def test_a_stale_site_shows_its_last_figures_marked_stale(quality_coordinator, browser):
    quality, station = quality_coordinator.quality, quality_coordinator.stations["fab-a"]
    last = quality.report("fab-a")["sites"][0]
    url = httpx.post(f"{quality_coordinator.base}/api/v1/dashboard/logins",
                     headers={"Authorization": "Bearer t"}).json()["url"]
    station.mode = "error"
    screen = Page(browser)
    try:
        assert "HTTP 503" in quality.collect()["fab-a"]
        screen.page.goto(url)
        state = screen.page.locator('[data-metric="fab-a:q_stale"]')
        playwright_api.expect(state).to_contain_text("STALE", timeout=30_000)
        playwright_api.expect(state).to_contain_text("HTTP 503")
        playwright_api.expect(screen.page.locator('[data-metric="fab-a:q_escape_rate"]')).to_have_text(
            f"0.37 % ({last['escapes']}/{last['audited_false_defect']})")
        assert screen.errors == []
    finally:
        screen.close()
        station.mode = "ok"
        assert quality.collect()["fab-a"] == "ok"
