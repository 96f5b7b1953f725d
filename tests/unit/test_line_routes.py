"""The model-line routes through the real coordinator app in-process, and `adcp model history` /
`adcp model list` behind the CLI's own client: versions newest first with lineage, aliases per site
and the newest report of each kind; moves with who and why; setting an alias by hand (engineer,
not viewer); unknown lines, sites and versions refused."""

from __future__ import annotations

import io
import json

import pytest
from fastapi.testclient import TestClient

from coordinator.api.app import create_app
from coordinator.center.core import Center
from coordinator.cli.client import Coordinator, CoordinatorClient
from coordinator.cli.context import Context
from coordinator.cli.lines import verdict
from coordinator.jobs import rollout
from tests.dashboard_fakes import FakeMonitor
from tests.line_fakes import fake_site_legs, publish_model
from tests.platform_fixtures import platform_yaml, run_cli

TOKEN = "bootstrap-admin-token-for-line-tests"


@pytest.fixture
def api(tmp_path, monkeypatch):
    """(http client as admin, center, a dict whose "token" the CLI's client sends)."""
    platform = tmp_path / "platform.yaml"
    platform.write_text(platform_yaml({"fab-a": {}, "fab-b": {}}))
    center = Center.open(tmp_path / "home", platform)
    publish_model(center, tmp_path, "adc", "1", dataset="aoi@1", annotations="aoi@1")
    publish_model(center, tmp_path, "adc", "2", dataset="aoi@1", parent="adc@1", trained_at="fab-b")
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
    fake_site_legs(monkeypatch, center)
    try:
        yield http, center, as_token
    finally:
        center.close()


def _released(http, center):
    """adc@1 at both sites, adc@2 challenger then champion at fab-a (a gate report with it)."""
    assert http.post("/models/adc/1/deploy", json={"to": ["fab-a", "fab-b"]}).status_code == 200
    center.lines.put_report("adc", "2", "gate", {"passed": False, "failed": ["escape_rate"],
                                                  "figures": {"champion": {"escape_rate": 0.001},
                                                              "challenger": {"escape_rate": 0.012}}})
    center.lines.put_report("adc", "2", "gate", {"passed": True, "failed": [], "figures": {}})
    r = http.put("/models/adc/aliases/challenger", json={"site": "fab-a", "version": "2", "why": "retrained"})
    assert r.status_code == 200, r.text
    assert r.json() == {"line": "adc", "site": "fab-a", "aliases": {"champion": "1", "challenger": "2"}}
    r = http.post("/models/adc/2/deploy", json={"to": ["fab-a"], "why": "canary"})
    assert r.status_code == 200, r.text


def test_history_has_versions_aliases_reports_and_moves(api):
    http, center, _ = api
    _released(http, center)
    body = http.get("/models/adc/history").json()
    assert body["line"] == "adc" and body["release"] is None
    assert body["aliases"] == {"fab-a": {"champion": "2", "previous": "1"}, "fab-b": {"champion": "1"}}
    v2, v1 = body["versions"]
    assert (v2["version"], v2["model_id"], v2["aliases"]) == ("2", "adc@2", {"fab-a": ["champion"]})
    assert v2["lineage"] == {"dataset": "aoi@1", "parent": "adc@1", "trained_at": "fab-b"}
    assert v2["reports"]["gate"]["passed"] is True and v2["reports"]["shadow"] is None  # the newest gate report
    assert v1["aliases"] == {"fab-a": ["previous"], "fab-b": ["champion"]} and v1["reports"]["gate"] is None
    moves = [(m["site"], m["alias"], m["from_version"], m["to_version"], m["by"], m["why"]) for m in body["moves"]]
    assert moves[:3] == [("fab-a", "challenger", "2", None, "admin", "canary"),
                         ("fab-a", "champion", "1", "2", "admin", "canary"),
                         ("fab-a", "previous", None, "1", "admin", "canary")]
    assert ("fab-a", "challenger", None, "2", "admin", "retrained") in moves
    assert ("fab-b", "champion", None, "1", "admin", "deploy") in moves
    only_b = http.get("/models/adc/history", params={"site": "fab-b"}).json()
    assert only_b["aliases"] == {"fab-b": {"champion": "1"}} and {m["site"] for m in only_b["moves"]} == {"fab-b"}
    listed = {r["ref"]: r["aliases"] for r in http.get("/models").json()}
    assert listed == {"model/adc@1": {"fab-a": ["previous"], "fab-b": ["champion"]},
                      "model/adc@2": {"fab-a": ["champion"]}}


def test_rollback_through_the_api_records_the_caller_and_the_reason(api):
    http, center, _ = api
    _released(http, center)
    r = http.post("/sites/fab-a/rollback", json={"why": "escapes"})
    assert r.status_code == 200, r.text
    first = http.get("/models/adc/history", params={"site": "fab-a"}).json()["moves"][0]
    assert (first["alias"], first["to_version"], first["by"], first["why"]) == ("champion", "1", "admin",
                                                                                "rollback: escapes")


def test_bad_requests_are_refused(api):
    http, _, as_token = api
    assert http.get("/models/nothing/history").status_code == 404
    assert http.get("/models/adc/history", params={"site": "fab-z"}).status_code == 404
    assert http.put("/models/adc/aliases/champion", json={"site": "fab-z", "version": "1"}).status_code == 404
    assert http.put("/models/adc/aliases/champion", json={"site": "fab-a", "version": "9"}).status_code == 404
    assert http.put("/models/adc/aliases/winner", json={"site": "fab-a", "version": "1"}).status_code == 400
    assert http.put("/models/adc/aliases/champion", json={"site": "fab-a", "version": "1", "x": 1}).status_code == 422
    viewer = http.post("/users", json={"name": "screen", "role": "viewer"}).json()["token"]
    as_viewer = {"Authorization": f"Bearer {viewer}"}
    assert http.get("/models/adc/history", headers=as_viewer).status_code == 200
    r = http.put("/models/adc/aliases/champion", headers=as_viewer, json={"site": "fab-a", "version": "1"})
    assert r.status_code == 403
    assert http.get("/models/adc/history").json()["moves"] == []


def test_cli_history_json_is_the_api_answer_and_the_table_shows_verdicts(api, capsys, tmp_path):
    http, center, _ = api
    _released(http, center)
    code, out, err = run_cli(capsys, tmp_path / "cli", "model", "history", "adc", "--json")
    assert code == 0, err
    assert json.loads(out) == http.get("/models/adc/history").json()
    center.lines.put_report("adc", "1", "watch", {"passed": False, "site": "fab-a", "crossed": [
        {"figure": "review_share", "value": 0.9, "limit": 0.5}]})
    code, out, err = run_cli(capsys, tmp_path / "cli", "model", "history", "adc", "--site", "fab-a")
    assert code == 0, err
    assert "fail: review_share 0.9 > 0.5" in out and "pass" in out
    assert "1 -> 2" in out and "canary" in out and "admin" in out
    code, out, err = run_cli(capsys, tmp_path / "cli", "model", "list")
    assert code == 0, err
    assert "fab-a champion" in out and "fab-b champion" in out and "fab-a previous" in out


def test_verdict_words():
    assert verdict(None) == "-"
    assert verdict({"passed": True, "failed": []}) == "pass"
    assert verdict({"passed": False, "failed": ["escape_rate", "auto_precision"],
                    "figures": {"challenger": {"escape_rate": 0.012}}}) == "fail: escape_rate 0.012 (+1)"
    assert verdict({"passed": False, "reasons": ["agreement 0.4 < 0.9"]}) == "fail: agreement 0.4 < 0.9"
    assert verdict({"agreement": 0.97}) == "?"


def test_deploy_by_a_user_is_recorded_with_its_name(api):
    http, center, as_token = api
    token = http.post("/users", json={"name": "eng1", "role": "engineer"}).json()["token"]
    r = http.post("/models/adc/1/deploy", headers={"Authorization": f"Bearer {token}"}, json={"to": ["fab-b"]})
    assert r.status_code == 200, r.text
    assert center.lines.moves("adc", "fab-b")[0]["by"] == "eng1"
    rows = rollout.list_models(center)
    assert next(r for r in rows if r["ref"] == "model/adc@1")["aliases"] == {"fab-b": ["champion"]}


def test_overview_top_and_the_big_screen_show_each_sites_lines_and_the_release_stage(api):
    from rich.console import Console

    from coordinator.cli.monitoring import top_table
    from coordinator.state.releases import Releases

    http, center, _ = api
    _released(http, center)
    center.lines.set_alias("adc", "fab-b", "challenger", "2", by="eng", why="retrain")
    release = Releases(center.state).create("adc", "2", {"canary": ["fab-a"]}, "eng")
    Releases(center.state).update(release["id"], stage="watch:canary",
                                  detail={"why": "watching", "sites": {"fab-a": {"state": "watching"}}})
    body = http.get("/overview").json()
    per_site = {s["name"]: s["lines"] for s in body["sites"]}
    assert per_site == {
        "fab-a": [{"line": "adc", "champion": "2", "challenger": None, "stage": "watch:canary", "status": "running",
                   "site_state": "watching"}],
        "fab-b": [{"line": "adc", "champion": "1", "challenger": "2", "stage": "watch:canary", "status": "running",
                   "site_state": None}]}
    assert [(entry["line"], entry["release"]["version"]) for entry in body["lines"]] == [("adc", "2")]
    assert http.get("/models/adc/history").json()["release"]["stage"] == "watch:canary"
    # the big screen reads the same body behind its session cookie
    login = http.post("/dashboard/logins").json()["url"]
    screen = TestClient(http.app)
    assert screen.get(login.split("testserver", 1)[-1], follow_redirects=False).status_code == 303
    page_body = screen.get("/dashboard/data/overview").json()
    assert {s["name"]: s["lines"] for s in page_body["sites"]} == per_site
    narrow, wide = io.StringIO(), io.StringIO()
    Console(file=narrow, width=80).print(top_table(body))
    Console(file=wide, width=200).print(top_table(body, wide=True))
    assert "model" in narrow.getvalue() and "1→2" in narrow.getvalue()
    assert max(len(line) for line in narrow.getvalue().splitlines()) <= 80
    assert "adc@2 (watch:canary · watching)" in wide.getvalue() and "adc@1→2 (watch:canary)" in wide.getvalue()
