"""The review routes and `adcp review ...` against the real coordinator app in-process (FastAPI's
TestClient behind the CLI's own client) and a fake review station on 127.0.0.1: station tokens
scoped to a reviewer's sites, the queue through the gateway, sync as a task, conflicts, the
disabled list pushed when an admin disables a user."""

from __future__ import annotations

import json

import pytest
import yaml
from fastapi.testclient import TestClient

from configs.platform import load_platform
from configs.station_tokens import verify
from coordinator.api.app import create_app
from coordinator.center.core import Center
from coordinator.center.station_keys import StationKeys
from coordinator.cli.client import Coordinator, CoordinatorClient
from coordinator.cli.context import Context
from tests.dashboard_fakes import FakeMonitor
from tests.fake_station import FakeStation, serve_station
from tests.platform_fixtures import run_cli
from tests.waiting import wait_for

TOKEN = "bootstrap-admin-token-for-review-tests"


@pytest.fixture
def api(tmp_path, monkeypatch):
    """(http client as admin, the station of fab-a, a function to act as another token)."""
    home = tmp_path / "center"
    pem = StationKeys(home).public_pem()
    with serve_station(FakeStation(pem, "fab-a", tmp_path / "store-a")) as station:
        doc = {"center": {"state_db": "{home}/coordinator.db", "store": {"url": "{home}/store"}},
               "sites": [{"name": n, "store": {"url": str(tmp_path / f"store-{n}")},
                          "gateway": {"kind": "direct", "dashboard": "http://127.0.0.1:9", "serve": url}}
                         for n, url in (("fab-a", station.url), ("fab-b", "http://127.0.0.1:9"))]}
        platform = tmp_path / "platform.yaml"
        platform.write_text(yaml.safe_dump(doc))
        center = Center(load_platform(platform, home), home)
        app = create_app(center, TOKEN, monitor=FakeMonitor(["fab-a", "fab-b"]))
        as_token = {"token": TOKEN}

        def client(_ctx: Context) -> CoordinatorClient:
            c = CoordinatorClient(Coordinator("http://testserver", as_token["token"], "test"))
            c.http.close()
            c.http = TestClient(app, base_url="http://testserver/api/v1",
                                headers={"Authorization": f"Bearer {as_token['token']}"})
            return c

        monkeypatch.setattr(Context, "client", property(client))
        http = TestClient(app, base_url="http://testserver/api/v1", headers={"Authorization": f"Bearer {TOKEN}"})
        try:
            yield http, station, as_token, center
        finally:
            center.close()


def adcp(capsys, tmp_path, *args):
    return run_cli(capsys, tmp_path / "home", *args)


def add_user(http, name, role, sites=()):
    r = http.post("/users", json={"name": name, "role": role, "sites": list(sites)})
    assert r.status_code == 201, r.text
    return r.json()["token"]


def test_station_tokens_are_scoped_to_the_reviewers_sites(api, capsys, tmp_path):
    http, _, as_token, center = api
    as_token["token"] = add_user(http, "line1", "reviewer", ["fab-a"])
    code, out, _ = adcp(capsys, tmp_path, "review", "token", "--site", "fab-a", "--json")
    assert code == 0
    body = json.loads(out)
    claims = verify(center.station_keys.public_pem(), body["token"])
    assert (claims.sub, claims.role, claims.sites) == ("line1", "reviewer", ["fab-a"])
    assert (body["user"], body["sites"]) == ("line1", ["fab-a"])
    code, out, err = adcp(capsys, tmp_path, "review", "token", "--site", "fab-b")
    assert code == 1 and out == "" and err.count("\n") == 1 and "fab-b" in err
    as_token["token"] = add_user(http, "viewer1", "viewer")
    code, _, err = adcp(capsys, tmp_path, "review", "token", "--site", "fab-a")
    assert code == 1 and "may not POST /api/v1/review/station-token" in err


def test_the_public_key_route(api):
    http, _, _, center = api
    assert http.get("/review/public-key").json() == {"public_key_pem": center.station_keys.public_pem()}


def test_the_queue_comes_from_the_station(api, capsys, tmp_path):
    http, station, as_token, _ = api
    station.verdict(b"img-1", "scratch", why="audit", decision="defect")
    code, out, _ = adcp(capsys, tmp_path, "review", "queue", "--site", "fab-a", "--json")
    assert code == 0
    (item,) = json.loads(out)
    assert {"id", "decision", "why", "model_version"} <= set(item)
    assert (item["decision"], item["why"], item["model_version"]) == ("defect", "audit", "adc@3")
    code, out, _ = adcp(capsys, tmp_path, "review", "queue", "--site", "fab-a")
    assert code == 0 and "audit" in out and max(map(len, out.splitlines())) <= 80
    code, _, err = adcp(capsys, tmp_path, "review", "queue", "--site", "fab-b")  # no station answers
    assert code == 1 and err.count("\n") == 1 and "fab-b" in err
    as_token["token"] = add_user(http, "line2", "reviewer", ["fab-b"])
    code, _, err = adcp(capsys, tmp_path, "review", "queue", "--site", "fab-a")
    assert code == 1 and "may not act on site fab-a" in err


def test_sync_and_conflicts_from_the_cli(api, capsys, tmp_path):
    import hashlib
    import io

    from PIL import Image

    def png(n):
        out = io.BytesIO()
        Image.new("L", (4, 4), color=n).save(out, format="PNG")
        return out.getvalue()

    http, station, _, _ = api
    station.verdict(png(1), "scratch", reviewer="ann")
    station.verdict(png(1), "particle", reviewer="bob", role="engineer")
    station.verdict(png(2), "mura", reviewer="ann")
    code, out, _ = adcp(capsys, tmp_path, "review", "sync", "--json")
    assert code == 0
    body = json.loads(out)
    assert body["verdicts_new"] == 3 and body["annotations"] == "reviewed-aoi@1"
    assert body["conflicts"] == 1
    code, out, _ = adcp(capsys, tmp_path, "review", "sync", "--json")
    assert code == 0 and json.loads(out)["verdicts_new"] == 0
    code, out, _ = adcp(capsys, tmp_path, "review", "conflicts", "--json")
    (c,) = json.loads(out)
    assert c["image"] == hashlib.sha256(png(1)).hexdigest() and (c["label"], c["rule"]) == ("particle", "senior_role")
    code, out, _ = adcp(capsys, tmp_path, "review", "conflicts")
    assert code == 0 and "senior_role" in out
    code, out, _ = adcp(capsys, tmp_path, "review", "sync")
    assert code == 0 and "0 new verdicts" in out and "fab-b" in out  # the silent site is in the table
    r = http.post("/review/sync", params={"wait": "true"}, json={"sites": ["fab-a"]})
    assert r.status_code == 200 and [s["site"] for s in r.json()["sites"]] == ["fab-a"]
    assert http.post("/review/sync", json={"sites": ["fab-x"]}).status_code == 404


def test_disabling_a_user_reaches_the_stations(api):
    http, station, _, _ = api
    add_user(http, "bob", "reviewer", ["fab-a"])
    assert http.post("/users/bob/disable").status_code == 200
    wait_for(lambda: station.disabled and station.disabled[-1] == ["bob"], timeout_s=10,
             what="the disabled list at the station", poll_s=0.05)


def test_a_reviewer_may_not_sync(api):
    http, _, _, _ = api
    token = add_user(http, "line3", "reviewer", ["fab-a"])
    r = http.post("/review/sync", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 403
    r = http.get("/review/conflicts", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and r.json() == {"conflicts": []}
