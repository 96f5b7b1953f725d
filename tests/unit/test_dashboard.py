"""The big screen's routes without Ray: one-time login links, session cookies, the 401 pages, the
cookie-authenticated data routes over a fake Monitor, and the files the page is made of."""

from __future__ import annotations

import hashlib
import re
import sqlite3
import time
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, urlparse

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from configs.errors import NotFoundError
from configs.monitoring import LOGIN_TTL_S
from configs.runs import Attempt, Job, JobSpec
from coordinator.api.auth import install_door
from coordinator.dashboard.routes import COOKIE, STATIC, add_dashboard_routes
from coordinator.state.dashboard_sessions import SESSION_TTL_S
from coordinator.state.db import State
from coordinator.state.jobs import JobRecords
from tests.dashboard_fakes import FakeMonitor
from tests.line_fakes import dashboard_center

TOKEN = "api-token-for-tests"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _center(db: Path) -> SimpleNamespace:
    state = State(db)

    def site(name: str) -> str:
        if name not in ("fab-a", "fab-b"):
            raise NotFoundError(f"No site {name}.")
        return name

    return dashboard_center(state, site)


@pytest.fixture
def env(tmp_path):
    clock = Clock()
    center = _center(tmp_path / "coordinator.db")
    app = FastAPI()
    install_door(app, TOKEN, center.state)
    add_dashboard_routes(app, center, clock=clock)
    app.state.monitor = FakeMonitor(["fab-a", "fab-b"])
    yield SimpleNamespace(app=app, client=TestClient(app), clock=clock, center=center, db=tmp_path / "coordinator.db")
    app.state.dashboard_auth.close()
    center.state.close()


def _login_url(client: TestClient, **body) -> str:
    r = client.post("/api/v1/dashboard/logins", headers=BEARER, json=body or None)
    assert r.status_code == 201, r.text
    return r.json()["url"]


def _logged_in(env) -> TestClient:
    r = env.client.get(_login_url(env.client), follow_redirects=False)
    assert r.status_code == 303
    return env.client


# --- login links and sessions -------------------------------------------------------------

@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}])
def test_login_links_need_the_api_token(env, headers):
    r = env.client.post("/api/v1/dashboard/logins", headers=headers)
    assert r.status_code == 401
    assert "bearer" in r.json()["detail"]


def test_login_link_sets_a_strict_httponly_cookie_and_redirects(env):
    r = env.client.post("/api/v1/dashboard/logins", headers=BEARER)
    body = r.json()
    assert body["expires_at"] == pytest.approx(env.clock.now + LOGIN_TTL_S)
    url = urlparse(body["url"])
    assert url.path == "/dashboard/login" and parse_qs(url.query)["once"]
    r = env.client.get(body["url"], follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/dashboard"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    for attribute in ("HttpOnly", "Path=/dashboard", "SameSite=strict", f"Max-Age={int(SESSION_TTL_S)}"):
        assert attribute in cookie
    page = env.client.get("/dashboard")
    assert page.status_code == 200 and '<script src="/dashboard/static/app.js"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]


def test_login_link_works_once(env):
    url = _login_url(env.client)
    assert env.client.get(url, follow_redirects=False).status_code == 303
    again = TestClient(env.app).get(url, follow_redirects=False)
    assert again.status_code == 401
    assert "already used" in again.text and "adcp dashboard --url" in again.text


def test_login_link_expires(env):
    url = _login_url(env.client, valid_for_s=60)
    env.clock.now += 61
    r = env.client.get(url, follow_redirects=False)
    assert r.status_code == 401 and "expired" in r.text
    assert COOKIE not in r.headers.get("set-cookie", "")


@pytest.mark.parametrize("query", ["", "?once=", "?once=not-a-token"])
def test_unknown_login_link_is_refused(env, query):
    r = env.client.get(f"/dashboard/login{query}", follow_redirects=False)
    assert r.status_code == 401 and "not known" in r.text


@pytest.mark.parametrize("valid_for_s", [0, -5, 10 * 86400])
def test_login_lifetime_out_of_range_is_a_422(env, valid_for_s):
    r = env.client.post("/api/v1/dashboard/logins", headers=BEARER, json={"valid_for_s": valid_for_s})
    assert r.status_code == 422


def test_session_expires(env):
    client = _logged_in(env)
    assert client.get("/dashboard").status_code == 200
    env.clock.now += SESSION_TTL_S + 1
    assert client.get("/dashboard").status_code == 401
    assert client.get("/dashboard/data/overview").status_code == 401


def test_logout_ends_the_session(env):
    client = _logged_in(env)
    cookie = client.cookies[COOKIE]
    assert client.post("/dashboard/logout", follow_redirects=False).status_code == 303
    forged = TestClient(env.app, cookies={COOKIE: cookie})
    assert forged.get("/dashboard").status_code == 401


def test_without_a_session_the_page_is_a_401_login_hint(env):
    r = env.client.get("/dashboard")
    assert r.status_code == 401 and r.headers["content-type"].startswith("text/html")
    assert "adcp dashboard --url" in r.text and "<script" not in r.text
    forged = TestClient(env.app, cookies={COOKIE: "made-up"})
    assert forged.get("/dashboard").status_code == 401


def test_db_holds_only_hashes_of_secrets(env):
    url = _login_url(env.client)
    once = parse_qs(urlparse(url).query)["once"][0]
    env.client.get(url, follow_redirects=False)
    session = env.client.cookies[COOKIE]
    with sqlite3.connect(env.db) as db:
        logins = [r[0] for r in db.execute("SELECT token_sha256 FROM dashboard_logins")]
        sessions = [r[0] for r in db.execute("SELECT token_sha256 FROM dashboard_sessions")]
    assert logins == [hashlib.sha256(once.encode()).hexdigest()]
    assert sessions == [hashlib.sha256(session.encode()).hexdigest()]
    raw = env.db.read_bytes() + (env.db.with_name(env.db.name + "-wal").read_bytes()
                                 if env.db.with_name(env.db.name + "-wal").exists() else b"")
    assert once.encode() not in raw and session.encode() not in raw


# --- data routes ------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/dashboard/data/overview", "/dashboard/data/alerts",
                                  "/dashboard/data/sites/fab-a/metrics", "/dashboard/data/sites/fab-a/logs",
                                  "/dashboard/data/sites/fab-a/jobs", "/dashboard/data/quality"])
def test_data_routes_need_a_session_not_the_api_token(env, path):
    assert env.client.get(path).status_code == 401
    assert env.client.get(path, headers=BEARER).status_code == 401


def test_overview_and_alerts_are_the_monitors_bodies(env):
    client = _logged_in(env)
    body = client.get("/dashboard/data/overview").json()
    direct = env.app.state.monitor.overview()
    assert body["totals"] == direct["totals"]
    assert [s["name"] for s in body["sites"]] == ["fab-a", "fab-b"]
    assert body["sites"][1]["latest"]["mem_total"] == direct["sites"][1]["latest"]["mem_total"]
    assert client.get("/dashboard/data/alerts?active=false").status_code == 200
    assert ("alerts", (False,)) in env.app.state.monitor.calls


def test_quality_route_is_the_monitors_quality_report(env):
    client = _logged_in(env)
    body = client.get("/dashboard/data/quality", params={"site": "fab-b"}).json()
    assert body == env.app.state.monitor.quality.report("fab-b") and [s["site"] for s in body["sites"]] == ["fab-b"]
    assert body["sites"][0]["by"][0]["escapes"] == 1
    assert len(client.get("/dashboard/data/quality").json()["sites"]) == 2
    overview = client.get("/dashboard/data/overview").json()
    assert overview["sites"][0]["quality"]["escape_rate"] == pytest.approx(1 / 400)
    assert overview["sites"][0]["display_name"] == "fab-a"


def test_metrics_route_passes_window_names_and_step(env):
    client = _logged_in(env)
    before = time.time()
    r = client.get("/dashboard/data/sites/fab-b/metrics", params={"window_s": 900, "names": "cpu_util, mem_used",
                                                                   "step": 30})
    assert r.status_code == 200
    _, (site, names, since, step) = env.app.state.monitor.calls[-1]
    assert (site, names, step) == ("fab-b", ["cpu_util", "mem_used"], 30)
    assert before - 900 - 1 <= since <= time.time() - 900 + 1
    assert set(r.json()["series"]) == {"cpu_util", "mem_used"}
    assert client.get("/dashboard/data/sites/fab-b/metrics?since=100&window_s=60").status_code == 400
    assert client.get("/dashboard/data/sites/fab-b/metrics?step=0").status_code == 422


def test_logs_route_passes_job_and_lines(env):
    client = _logged_in(env)
    r = client.get("/dashboard/data/sites/fab-a/logs", params={"job": "raysubmit_1", "lines": 5})
    assert r.status_code == 200 and len(r.json()["lines"]) == 5
    assert env.app.state.monitor.calls[-1] == ("logs", ("fab-a", "raysubmit_1", 5))
    assert client.get("/dashboard/data/sites/fab-a/logs?lines=0").status_code == 422


def test_unknown_site_is_a_404_with_the_error_body(env):
    client = _logged_in(env)
    r = client.get("/dashboard/data/sites/nowhere/metrics")
    assert r.status_code == 404 and r.json()["error"] == "NotFoundError"
    assert client.get("/dashboard/data/sites/nowhere/jobs").status_code == 404


def test_no_monitor_is_a_503(env):
    client = _logged_in(env)
    del env.app.state.monitor
    r = client.get("/dashboard/data/overview")
    assert r.status_code == 503 and "Monitoring" in r.json()["detail"]


def test_jobs_route_lists_jobs_for_or_at_the_site(env):
    records = JobRecords(env.center.state)

    def put(job_id, kind, origin, status, at=None, attempt_status="running"):
        spec = JobSpec(origin=origin, dataset="dataset/aoi@1", kind=kind, model="model/m@1", checkpoints="m-1")
        attempts = [Attempt(n=1, site=at, submission_id=f"adcp-{job_id}-1", status=attempt_status)] if at else []
        records.save(Job(id=job_id, kind=kind, origin=origin, status=status, spec=spec, attempts=attempts))

    put("j-for-a", "train", "fab-a", "running")
    put("j-at-a", "tune", "fab-b", "succeeded", at="fab-a", attempt_status="succeeded")
    put("j-b-only", "train", "fab-b", "failed", at="fab-b", attempt_status="failed")
    client = _logged_in(env)
    jobs = client.get("/dashboard/data/sites/fab-a/jobs").json()
    assert sorted(j["id"] for j in jobs) == ["j-at-a", "j-for-a"]
    at_a = next(j for j in jobs if j["id"] == "j-at-a")
    assert at_a["attempts"] == [{"site": "fab-a", "submission_id": "adcp-j-at-a-1", "status": "succeeded"}]


# --- the page's files ---------------------------------------------------------------------

@pytest.mark.parametrize("path, media", [("vendor/uPlot.iife.min.js", "text/javascript"),
                                         ("vendor/uPlot.min.css", "text/css"),
                                         ("static/app.js", "text/javascript"), ("static/app.css", "text/css"),
                                         ("static/quality.js", "text/javascript"),
                                         ("static/lines.js", "text/javascript")])
def test_page_files_are_served_by_the_coordinator(env, path, media):
    r = env.client.get(f"/dashboard/{path}")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith(media)
    folder, name = path.split("/")
    on_disk = STATIC / "node_modules" / "uplot" / "dist" / name if folder == "vendor" else STATIC / name
    assert r.content == on_disk.read_bytes()


@pytest.mark.parametrize("path", ["static/index.html", "static/..%2Fdashboard.py", "vendor/package.json",
                                  "static/node_modules"])
def test_nothing_else_is_served_from_disk(env, path):
    assert env.client.get(f"/dashboard/{path}").status_code == 404


def test_page_loads_nothing_from_other_hosts():
    for name in ("index.html", "app.js", "quality.js", "lines.js", "app.css"):
        text = (STATIC / name).read_text()
        assert not re.search(r"""(src|href)\s*=\s*["'](https?:)?//""", text), name
        assert "cdn" not in text.lower(), name


def test_every_element_the_script_looks_up_is_in_the_page():
    ids = set(re.findall(r'\$\("([\w-]+)"\)', (STATIC / "app.js").read_text()))
    assert '<script src="/dashboard/static/quality.js" defer></script>' in (STATIC / "index.html").read_text()
    assert '<script src="/dashboard/static/lines.js" defer></script>' in (STATIC / "index.html").read_text()
    page = (STATIC / "index.html").read_text()
    assert ids, "the script looks up no elements?"
    missing = sorted(i for i in ids if f'id="{i}"' not in page)
    assert not missing


def test_the_coordinator_app_serves_the_dashboard_with_the_apis_bodies(tmp_path):
    from coordinator.api.app import create_app
    from coordinator.center.core import Center
    from tests.platform_fixtures import platform_yaml

    platform = tmp_path / "platform.yaml"
    platform.write_text(platform_yaml({"fab-a": {}, "fab-b": {}}))
    center = Center.open(tmp_path / "home", platform)
    try:
        client = TestClient(create_app(center, TOKEN, monitor=FakeMonitor(["fab-a", "fab-b"])))
        client.get(_login_url(client), follow_redirects=False)
        page = client.get("/dashboard/data/overview").json()
        api = client.get("/api/v1/overview", headers=BEARER).json()
        assert page["totals"] == api["totals"] and [s["name"] for s in page["sites"]] == ["fab-a", "fab-b"]
        assert client.get("/api/v1/overview").status_code == 401  # the cookie is no API credential
    finally:
        center.close()
