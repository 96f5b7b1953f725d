"""`adcp user ...` and `adcp audit` against the real coordinator app in-process (FastAPI's
TestClient behind the CLI's own API client): JSON shapes, one-line refusals, 80-column tables."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from coordinator.api.app import create_app
from coordinator.center.core import Center
from coordinator.cli.client import Coordinator, CoordinatorClient
from coordinator.cli.context import Context
from tests.dashboard_fakes import FakeMonitor
from tests.platform_fixtures import platform_yaml, run_cli

TOKEN = "bootstrap-admin-token-for-cli-tests"


@pytest.fixture
def coordinator(tmp_path, monkeypatch):
    """The coordinator app; every CLI call in the test goes to it with `as_token["token"]`."""
    platform = tmp_path / "platform.yaml"
    platform.write_text(platform_yaml({"fab-a": {}}))
    center = Center.open(tmp_path / "center", platform)
    app = create_app(center, TOKEN, monitor=FakeMonitor(["fab-a"]))
    as_token = {"token": TOKEN}

    def client(_ctx: Context) -> CoordinatorClient:
        c = CoordinatorClient(Coordinator("http://testserver", as_token["token"], "test"))
        c.http.close()
        c.http = TestClient(app, base_url="http://testserver/api/v1",
                            headers={"Authorization": f"Bearer {as_token['token']}"})
        return c

    monkeypatch.setattr(Context, "client", property(client))
    try:
        yield as_token
    finally:
        center.close()


def adcp(capsys, tmp_path, *args: str) -> tuple[int, str, str]:
    return run_cli(capsys, tmp_path / "home", *args)


def test_user_add_json_prints_name_role_token(capsys, tmp_path, coordinator):
    code, out, _ = adcp(capsys, tmp_path, "user", "add", "ann", "--role", "engineer", "--json")
    assert code == 0
    body = json.loads(out)
    assert set(body) == {"name", "role", "token", "sites"} and (body["name"], body["role"]) == ("ann", "engineer")
    coordinator["token"] = body["token"]
    code, out, err = adcp(capsys, tmp_path, "user", "list")
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "ann (role engineer) may not GET /api/v1/users" in err and "roles admin" in err


def test_user_add_prints_the_token_alone_on_stdout(capsys, tmp_path, coordinator):
    code, out, err = adcp(capsys, tmp_path, "user", "add", "line1", "--role", "reviewer", "--sites", "fab-a,fab-b")
    assert code == 0 and len(out.split()) == 1 and "shown only now" in err and "fab-a, fab-b" in err


def test_bad_role_and_reviewer_without_sites_are_one_line(capsys, tmp_path, coordinator):
    code, out, err = adcp(capsys, tmp_path, "user", "add", "ann", "--role", "boss")
    assert code == 1 and out == "" and err.count("\n") == 1
    assert "admin, operator, engineer, reviewer, viewer" in err
    code, _, err = adcp(capsys, tmp_path, "user", "add", "rev", "--role", "reviewer")
    assert code == 1 and "--sites" in err


def test_token_rotation_disable_and_the_audit_from_the_cli(capsys, tmp_path, coordinator):
    adcp(capsys, tmp_path, "user", "add", "night-operator", "--role", "operator", "--sites", "fab-a")
    code, out, _ = adcp(capsys, tmp_path, "user", "token", "night-operator", "--json")
    assert code == 0 and json.loads(out)["role"] == "operator"
    code, out, _ = adcp(capsys, tmp_path, "user", "disable", "night-operator")
    assert code == 0 and "no longer works" in out
    code, out, _ = adcp(capsys, tmp_path, "user", "list")
    assert code == 0 and "disabled" in out and "night-operator" in out
    assert max(map(len, out.splitlines())) <= 80
    code, out, _ = adcp(capsys, tmp_path, "audit", "--since", "-1h")
    assert code == 0 and max(map(len, out.splitlines())) <= 80
    assert "disable" in out and "POST" in out and "201" in out and "at (UTC)" in out
    code, out, _ = adcp(capsys, tmp_path, "audit", "--user", "admin", "--limit", "2", "--json")
    rows = json.loads(out)
    assert [r["action"] for r in rows] == ["POST /api/v1/users/{name}/disable", "POST /api/v1/users/{name}/token"]
    assert all(r["user"] == "admin" and r["status"] == 200 for r in rows)
