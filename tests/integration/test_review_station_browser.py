"""The review station page in Debian's Chromium (Playwright), against the station app served by
uvicorn on 127.0.0.1 (tests/station_fixtures.py; the Ray Serve wrapper is exercised elsewhere).

A reviewer logs in and judges 50 images with the keyboard only, then undoes one: the DB holds 49
live verdicts of theirs and the undo event of the 50th. A second reviewer in another browser
context, working at the same time, never sees an image the first holds. A reviewer of fab-a gets
403 at fab-b. At 1920x1080 and on tablets (touch) the page has no horizontal overflow and its
buttons are on screen; taps give verdicts; the language toggle switches zh -> en and persists.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from configs.station_tokens import STATION_TOKEN_HEADER
from tests.station_fixtures import served_station
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

playwright_api = pytest.importorskip("playwright.sync_api", reason="make install-test installs playwright")
expect = playwright_api.expect
CHROMIUM = "/usr/bin/chromium"
DESKTOP = {"width": 1920, "height": 1080}
TABLETS = [{"width": 1024, "height": 768}, {"width": 820, "height": 1180}]
KEYS = ["1", "2", "3", "4", "5", "F"]
LABELS = dict(zip(KEYS, ["particle", "scratch", "mura", "line_defect", "pinhole", "false_defect"], strict=True))
WAIT_MS = 15_000


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


class Reviewer:
    """One browser context logged in at a station; records console errors."""

    def __init__(self, browser, url: str, token: str | None, *, viewport=DESKTOP, touch: bool = False) -> None:
        self.context = browser.new_context(viewport=viewport, has_touch=touch)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        assert self.page.goto(url).status == 200
        if token is not None:
            self.login(token)
            expect(self.page.locator("#image[data-item-id]")).to_be_attached(timeout=WAIT_MS)

    def login(self, token: str) -> None:
        self.page.locator("#credential").fill(token)
        self.page.locator("#login-submit").click()

    def current(self) -> str | None:
        return self.page.locator("#image").get_attribute("data-item-id")

    def judge(self, key: str) -> str:
        """Press `key` on the image on screen; returns that image's item id once the next is shown."""
        item = self.current()
        assert item, (self.page.locator("#status").text_content(), self.page.evaluate("window.station.state()"),
                      self.errors)
        self.page.keyboard.press(key)
        self.next_shown(item)
        return item

    def next_shown(self, item: str) -> None:
        """Wait until an image other than `item` is on screen (a claim may be in flight in between)."""
        self.page.wait_for_function("(prev) => { const id = document.getElementById('image').dataset.itemId;"
                                    " return id && id !== prev; }", arg=item, timeout=WAIT_MS)

    def shown(self) -> list[str]:
        return self.page.evaluate("window.station.shown")

    def close(self) -> None:
        self.context.close()


def _live_verdicts(db, reviewer: str) -> tuple[list[dict], list[dict]]:
    events, _ = db.events_after(0, 10_000)
    undone = {e["verdict_id"] for e in events if e["kind"] == "undo"}
    mine = [e for e in events if e["reviewer"] == reviewer]
    return [e for e in mine if e["kind"] == "verdict" and e["event_id"] not in undone], \
        [e for e in mine if e["kind"] == "undo"]


def test_fifty_by_keyboard_two_reviewers_apart_and_undo(browser, tmp_path):
    with served_station(tmp_path / "fab-a", "fab-a", 60) as station:
        a = Reviewer(browser, station.url, station.token("li.wei"))
        b = Reviewer(browser, station.url, station.token("wang.fang", role="operator"))
        try:
            expect(a.page.locator("#site-name")).to_have_text("北京一厂")
            judged_a: list[str] = []
            judged_b: list[str] = []
            started = time.monotonic()
            for i in range(50):
                judged_a.append(a.judge(KEYS[i % len(KEYS)]))
                if i < 5:  # the second reviewer works at the same time, then logs out (releasing the rest)
                    judged_b.append(b.judge(KEYS[(i + 2) % len(KEYS)]))
                    if i == 4:
                        released, a_before = b.current(), len(a.shown())  # on b's screen, not judged
                        b.page.locator("#logout").click()
                        expect(b.page.locator("#login-view")).to_be_visible()
            seconds = time.monotonic() - started
            expect(a.page.locator("#done-count")).to_have_text("50")
            a.page.keyboard.press("z")
            expect(a.page.locator("#image")).to_have_attribute("data-item-id", judged_a[-1], timeout=WAIT_MS)
            wait_for(lambda: _live_verdicts(station.db, "li.wei")[1], 30, "the undo event in the DB")

            live, undos = _live_verdicts(station.db, "li.wei")
            assert len(live) == 49 and len(undos) == 1
            assert {e["item_id"] for e in live} == set(judged_a[:-1])
            assert undos[0]["item_id"] == judged_a[-1] and undos[0]["label"] == LABELS[KEYS[49 % len(KEYS)]]
            live_b, _ = _live_verdicts(station.db, "wang.fang")
            assert {e["item_id"] for e in live_b} == set(judged_b) and len(judged_b) == 5
            assert {e["label"] for e in live} == {"particle", "scratch", "mura", "line_defect", "pinhole",
                                                  "false_defect"}
            # Neither page ever showed an image the other held: the one image both showed is the one b
            # had on screen when it logged out (and gave back), and a got it only after that.
            shown_a, shown_b = a.shown(), b.shown()
            assert len(set(shown_a)) >= 50 and set(shown_a) & set(shown_b) <= {released}
            assert released not in shown_a[:a_before]
            assert not set(judged_b) & set(shown_a)
            assert seconds < 50, f"50 images took {seconds:.1f} s: slower than one a second"
            assert a.errors == [] and b.errors == []
        finally:
            a.close()
            b.close()


def test_a_reviewer_of_fab_a_gets_403_at_fab_b(browser, tmp_path):
    with served_station(tmp_path / "fab-a", "fab-a", 3) as fab_a, \
            served_station(tmp_path / "fab-b", "fab-b", 3, key=fab_a.key, seed=1) as fab_b:
        token = fab_a.token("li.wei")
        r = httpx.post(fab_b.url + "api/login", json={"token": token})
        assert r.status_code == 403 and r.json()["allowed"] == "fab-a"
        assert httpx.get(fab_b.url + "api/me", headers={STATION_TOKEN_HEADER: token}).status_code == 403
        page = Reviewer(browser, fab_b.url, None)
        try:
            page.login(token)
            expect(page.page.locator("#login-error")).to_contain_text("403", timeout=WAIT_MS)
            expect(page.page.locator("#login-error")).to_contain_text("fab-a")
            expect(page.page.locator("#station-view")).to_be_hidden()
            # a center API token needs the center: this station has none, and says a station token works
            page.page.locator('input[name="kind"][value="api_token"]').check()
            page.login("some-api-token")
            expect(page.page.locator("#login-error")).to_contain_text("503", timeout=WAIT_MS)
            expect(page.page.locator("#login-error")).to_contain_text("station token")
            page.page.locator('input[name="kind"][value="token"]').check()
            page.login(fab_b.token("li.wei", sites=("fab-a", "fab-b")))  # a token for both sites works
            expect(page.page.locator("#image[data-item-id]")).to_be_attached(timeout=WAIT_MS)
        finally:
            page.close()


def _fits(reviewer: Reviewer, viewport: dict) -> None:
    page = reviewer.page
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= page.evaluate("document.documentElement.clientWidth"), f"horizontal overflow at {viewport}"
    buttons = page.locator(".side button")
    assert buttons.count() == 9  # 5 classes, false defect, not sure, undo, second opinion
    for button in buttons.all():
        expect(button).to_be_visible()
        expect(button).to_be_in_viewport()
        box = button.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= viewport["width"] and box["height"] >= 40
    expect(page.locator("#image")).to_be_in_viewport()


def test_layouts_without_overflow_taps_and_the_language_toggle(browser, tmp_path):
    with served_station(tmp_path / "fab-a", "fab-a", 12) as station:
        desk = Reviewer(browser, station.url, station.token("li.wei"))
        try:
            _fits(desk, DESKTOP)
            # zoom, contrast, a verdict and a second opinion on it, all by key
            desk.page.keyboard.press("+")
            expect(desk.page.locator("#zoom-level")).to_have_text("125%")
            desk.page.keyboard.press("c")
            expect(desk.page.locator("#image")).to_have_class("contrast")
            desk.page.keyboard.press("c")
            judged = desk.judge("3")
            desk.page.keyboard.press("s")
            wait_for(lambda: next(it for it in station.db.items(limit=100) if it["id"] == judged)["second_opinion"],
                     30, "the second-opinion request in the DB")
            expect(desk.page.locator("html")).to_have_attribute("lang", "zh-CN")
            expect(desk.page.locator("#btn-particle")).to_contain_text("颗粒")
            expect(desk.page.locator("#queue-rows tr").first).to_be_visible(timeout=WAIT_MS)
            desk.page.locator("#lang").click()
            expect(desk.page.locator("html")).to_have_attribute("lang", "en")
            expect(desk.page.locator("#btn-particle .name")).to_contain_text("particle")
            expect(desk.page.locator("#btn-unsure")).to_contain_text("Not sure")
            desk.page.reload()  # the choice persists (localStorage), and so does the login (this tab)
            expect(desk.page.locator("#lang")).to_have_text("中文")
            expect(desk.page.locator("#image[data-item-id]")).to_be_attached(timeout=WAIT_MS)
            desk.page.locator("#lang").click()
            expect(desk.page.locator("#btn-unsure")).to_contain_text("不确定")
            desk.page.locator("#logout").click()  # gives its claimed items back for the tablets
            expect(desk.page.locator("#login-view")).to_be_visible()
            assert desk.errors == []
        finally:
            desk.close()
        for i, viewport in enumerate(TABLETS):
            tablet = Reviewer(browser, station.url, station.token(f"tablet{i}"), viewport=viewport, touch=True)
            try:
                _fits(tablet, viewport)
                item = tablet.current()
                tablet.page.locator("#btn-scratch").tap()
                tablet.next_shown(item)
                wait_for(lambda n=f"tablet{i}", it=item: [e for e in _live_verdicts(station.db, n)[0]
                                                          if e["item_id"] == it and e["label"] == "scratch"],
                         30, "the tapped verdict in the DB")
                tablet.page.locator("#logout").tap()
                expect(tablet.page.locator("#login-view")).to_be_visible()
                assert tablet.errors == []
            finally:
                tablet.close()
