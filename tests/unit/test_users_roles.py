"""Users, roles and the audit log at the coordinator's door, without Ray: the real `create_app`
over a Center of two (not started) local sites, called with FastAPI's TestClient."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import Request
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from configs.errors import ForbiddenError
from configs.loader import load_defaults
from coordinator.api.app import create_app
from coordinator.api.auth import (
    ROUTE_ROLES,
    Principal,
    require_site,
    roles_allowed,
    roles_table_markdown,
)
from coordinator.center.core import Center
from coordinator.jobs.runner import Trainer
from coordinator.state.users import ROLES
from tests.dashboard_fakes import FakeMonitor
from tests.platform_fixtures import platform_yaml

TOKEN = "bootstrap-admin-token-for-tests"
README = Path(__file__).resolve().parents[2] / "README.md"


class Monitor(FakeMonitor):
    """The fake's figures, plus what the coordinator's own /metrics reads."""

    last_sweep = None

    def scrape_ages(self) -> dict:
        return {}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def api(tmp_path):
    platform = tmp_path / "platform.yaml"
    platform.write_text(platform_yaml({"fab-a": {}, "fab-b": {}}))
    center = Center.open(tmp_path / "home", platform)
    try:
        app = create_app(center, TOKEN, Trainer(center, load_defaults()), monitor=Monitor(["fab-a", "fab-b"]))
        yield TestClient(app)
    finally:
        center.close()


def add_user(api: TestClient, name: str, role: str, sites: list[str] | None = None) -> str:
    r = api.post("/api/v1/users", headers=bearer(TOKEN), json={"name": name, "role": role, "sites": sites or []})
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == {"name", "role", "sites", "token"} and body["name"] == name and body["role"] == role
    return body["token"]


@pytest.fixture
def tokens(api) -> dict[str, str]:
    """One user per role (the reviewer on fab-a)."""
    return {role: add_user(api, f"{role[:3]}-user", role, ["fab-a"] if role == "reviewer" else None)
            for role in ROLES}


# --- the table ----------------------------------------------------------------------------

def test_every_api_route_of_the_app_has_roles(api):
    missing = sorted(f"{m} {r.path}" for r in api.app.routes if isinstance(r, APIRoute) and r.path.startswith("/api/")
                     for m in r.methods if (m, r.path) not in ROUTE_ROLES)
    assert not missing, f"add these to coordinator.api.auth.ROUTE_ROLES: {missing}"
    assert len([r for r in api.app.routes if isinstance(r, APIRoute) and r.path.startswith("/api/")]) > 20


def test_the_table_names_only_known_roles_and_admin_is_always_allowed():
    for key, roles in ROUTE_ROLES.items():
        assert set(roles) <= set(ROLES) - {"admin"}, key
        assert roles_allowed(*key)[0] == "admin"
    assert roles_allowed("POST", "/api/v1/no-such-route") == ["admin"]


def test_readme_holds_exactly_the_table():
    hint = "regenerate it: python -c 'from coordinator.api.auth import roles_table_markdown as t; print(t())'"
    assert roles_table_markdown() in README.read_text(), hint


def test_a_route_missing_from_the_table_is_refused_to_all_but_admin(api, tokens):
    @api.app.post("/api/v1/not-in-the-table")
    def unlisted() -> dict[str, str]:
        return {"ok": "yes"}

    r = api.post("/api/v1/not-in-the-table", headers=bearer(tokens["operator"]))
    assert r.status_code == 403 and r.json()["roles_allowed"] == ["admin"]
    assert api.post("/api/v1/not-in-the-table", headers=bearer(tokens["admin"])).status_code == 200
    assert api.post("/api/v1/not-in-the-table", headers=bearer(TOKEN)).status_code == 200


# --- authentication -----------------------------------------------------------------------

@pytest.mark.parametrize("header", [None, b"Basic abc", b"Bearer", b"Bearer wrong-token", b"Bearer a b",
                                    "Bearer t\u00f6ken".encode(), b"Bearer \xff\xfe",
                                    "Bearer \u00e9".encode("latin-1")])
def test_missing_wrong_or_non_ascii_tokens_are_401_json(api, header):
    headers = {} if header is None else {"Authorization": header}
    r = api.get("/api/v1/sites", params={"live": "false"}, headers=headers)
    assert r.status_code == 401
    body = r.json()
    assert body["error"] == "Unauthorized" and "bearer token" in body["detail"] and "api_token" in body["hint"]
    assert r.headers["www-authenticate"] == "Bearer"


def test_the_bootstrap_token_is_admin(api):
    assert api.get("/api/v1/whoami", headers=bearer(TOKEN)).json() == {"name": "admin", "role": "admin", "sites": []}


def test_whoami_names_each_user(api, tokens):
    assert api.get("/api/v1/whoami", headers=bearer(tokens["reviewer"])).json() == \
        {"name": "rev-user", "role": "reviewer", "sites": ["fab-a"]}


def test_outside_the_door_needs_no_token(api):
    assert api.get("/healthz").status_code == 200
    assert api.get("/metrics").status_code == 200
    assert api.get("/openapi.json").status_code == 200
    r = api.get("/dashboard")  # its own cookie session: a page, not the API's 401 JSON
    assert r.status_code == 401 and r.headers["content-type"].startswith("text/html")


def test_a_disabled_user_is_401_at_once(api, tokens):
    assert api.get("/api/v1/jobs", headers=bearer(tokens["engineer"])).status_code == 200
    r = api.post("/api/v1/users/eng-user/disable", headers=bearer(TOKEN))
    assert r.status_code == 200 and r.json()["disabled"] is True
    r = api.get("/api/v1/jobs", headers=bearer(tokens["engineer"]))
    assert r.status_code == 401 and "eng-user is disabled" in r.json()["detail"]


def test_a_new_token_works_and_the_old_one_stops_at_once(api, tokens):
    r = api.post("/api/v1/users/vie-user/token", headers=bearer(TOKEN))
    assert r.status_code == 200
    new = r.json()["token"]
    assert new != tokens["viewer"] and r.json()["role"] == "viewer"
    assert api.get("/api/v1/whoami", headers=bearer(tokens["viewer"])).status_code == 401
    assert api.get("/api/v1/whoami", headers=bearer(new)).json()["name"] == "vie-user"


# --- authorization, per role --------------------------------------------------------------

DEPLOY = ("POST", "/api/v1/models/aoi/1/deploy", {"to": ["fab-a"]})
PUSH = ("POST", "/api/v1/transfers", {"artifact": "dataset/nosuch@1", "to": ["fab-a"]})
CASES = [  # role, (method, path, body), allowed past the door?
    ("admin", ("GET", "/api/v1/audit", None), True),
    ("admin", ("POST", "/api/v1/sites", {"name": "x"}), True),
    ("operator", ("POST", "/api/v1/sites", {"name": "x"}), True),
    ("operator", ("GET", "/api/v1/sites/fab-a/logs", None), True),
    ("operator", PUSH, True),
    ("operator", DEPLOY, False),
    ("operator", ("POST", "/api/v1/jobs", {}), False),
    ("operator", ("GET", "/api/v1/users", None), False),
    ("engineer", PUSH, True),
    ("engineer", DEPLOY, True),
    ("engineer", ("POST", "/api/v1/jobs/plan", {}), True),
    ("engineer", ("POST", "/api/v1/sites", {"name": "x"}), False),
    ("engineer", ("DELETE", "/api/v1/sites/fab-a", None), False),
    ("engineer", ("GET", "/api/v1/audit", None), False),
    ("viewer", ("GET", "/api/v1/overview", None), True),
    ("viewer", ("GET", "/api/v1/models", None), True),
    ("viewer", ("POST", "/api/v1/dashboard/logins", None), True),
    ("viewer", DEPLOY, False),
    ("viewer", PUSH, False),
    ("viewer", ("GET", "/api/v1/sites/fab-a/logs", None), False),
    ("reviewer", ("GET", "/api/v1/whoami", None), True),
    ("reviewer", PUSH, False),
    ("reviewer", DEPLOY, False),
    ("reviewer", ("GET", "/api/v1/sites", None), False),
    ("reviewer", ("POST", "/api/v1/users", {"name": "x", "role": "admin"}), False),
]


@pytest.mark.parametrize(("role", "call", "allowed"), CASES, ids=[f"{c[0]}-{c[1][0]}-{c[1][1]}" for c in CASES])
def test_roles_at_the_door(api, tokens, role, call, allowed):
    method, path, body = call
    r = api.request(method, path, headers=bearer(tokens[role]), json=body)
    if allowed:  # the handler may still say no (missing data, bad body), but not the door
        assert r.status_code not in (401, 403), r.text
        return
    assert r.status_code == 403, r.text
    template = next(rt.path for rt in api.app.routes if isinstance(rt, APIRoute) and rt.matches(
        {"type": "http", "path": path, "method": method})[0].name == "FULL")
    want = roles_allowed(method, template)
    user = f"{role[:3]}-user"
    assert r.json() == {"error": "Forbidden", "detail": f"{user} (role {role}) may not {method} {template}",
                        "roles_allowed": want, "role": role, "allowed": f"roles {', '.join(want)}"}


def test_reviewer_refused_a_push_and_viewer_a_deploy_naming_the_roles(api, tokens):
    r = api.post(PUSH[1], headers=bearer(tokens["reviewer"]), json=PUSH[2])
    assert r.status_code == 403 and r.json()["roles_allowed"] == ["admin", "operator", "engineer"]
    r = api.post(DEPLOY[1], headers=bearer(tokens["viewer"]), json=DEPLOY[2])
    assert r.status_code == 403 and r.json()["roles_allowed"] == ["admin", "engineer"]
    assert r.json()["detail"] == "vie-user (role viewer) may not POST /api/v1/models/{name}/{version}/deploy"
    for call in (PUSH, DEPLOY):  # the engineer gets past the door on both: the handler answers (no such data)
        r = api.post(call[1], headers=bearer(tokens["engineer"]), json=call[2])
        assert r.status_code == 404, r.text


def test_require_site_limits_a_reviewer_to_its_sites():
    require_site(Principal("ann", "reviewer", ("fab-a",)), "fab-a")
    require_site(Principal("admin", "admin"), "fab-b")
    require_site(Principal("eve", "engineer"), "fab-b")
    with pytest.raises(ForbiddenError) as e:
        require_site(Principal("ann", "reviewer", ("fab-a",)), "fab-b")
    assert e.value.http_status == 403 and "fab-b" in str(e.value) and "fab-a" in str(e.value)


# --- the users API ------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "status", "words"), [
    ({"name": "ann", "role": "boss"}, 400, "admin, operator, engineer, reviewer, viewer"),
    ({"name": "Ann_1", "role": "viewer"}, 400, "lowercase"),
    ({"name": "admin", "role": "viewer"}, 400, "bootstrap"),
    ({"name": "rev", "role": "reviewer"}, 400, "--sites"),
    ({"name": "rev", "role": "reviewer", "sites": ["Fab A"]}, 400, "site name"),
    ({"name": "ann", "role": "viewer", "token": "mine"}, 422, "token"),
])
def test_bad_users_are_clear_4xx(api, body, status, words):
    r = api.post("/api/v1/users", headers=bearer(TOKEN), json=body)
    assert r.status_code == status, r.text
    assert words in str(r.json())


def test_users_list_never_shows_tokens_and_duplicates_are_409(api, tokens):
    r = api.post("/api/v1/users", headers=bearer(TOKEN), json={"name": "eng-user", "role": "viewer"})
    assert r.status_code == 409 and "exists" in r.json()["detail"]
    rows = api.get("/api/v1/users", headers=bearer(TOKEN)).json()
    assert [u["name"] for u in rows] == sorted(f"{r[:3]}-user" for r in ROLES)
    assert all("token" not in u and u["created_by"] == "admin" for u in rows)
    assert not any(t in str(rows) for t in tokens.values())
    assert api.post("/api/v1/users/nobody/disable", headers=bearer(TOKEN)).status_code == 404
    assert api.post("/api/v1/users/nobody/token", headers=bearer(TOKEN)).status_code == 404


def test_an_admin_user_can_make_users_and_is_their_creator(api, tokens):
    add = api.post("/api/v1/users", headers=bearer(tokens["admin"]), json={"name": "bob", "role": "operator"})
    assert add.status_code == 201
    bob = next(u for u in api.get("/api/v1/users", headers=bearer(TOKEN)).json() if u["name"] == "bob")
    assert bob["created_by"] == "adm-user"


# --- the audit log ------------------------------------------------------------------------

def test_every_change_is_audited_with_who_what_and_status(api, tokens):
    api.post(PUSH[1], headers=bearer(tokens["engineer"]), json=PUSH[2])
    api.post(PUSH[1], headers=bearer(tokens["reviewer"]), json=PUSH[2])
    api.post(PUSH[1], headers=bearer("nobody-holds-this"), json=PUSH[2])
    api.get("/api/v1/jobs", headers=bearer(tokens["engineer"]))  # a read: not in the log
    rows = api.get("/api/v1/audit", headers=bearer(TOKEN), params={"since": "-1h"}).json()
    pushes = [(r["user"], r["role"], r["status"]) for r in rows if r["action"] == "POST /api/v1/transfers"]
    assert pushes == [("", "", 401), ("rev-user", "reviewer", 403), ("eng-user", "engineer", 404)]  # newest first
    newest = rows[0]
    assert newest["path"] == "/api/v1/transfers" and newest["route"] == "/api/v1/transfers"
    assert newest["source"] == "testclient" and newest["at"].endswith("+00:00")
    assert newest["detail"]["body"] == PUSH[2]
    assert not any(r["action"].startswith("GET ") for r in rows)
    # the users made by the fixture are there too, by admin, without their tokens
    made = [r for r in rows if r["action"] == "POST /api/v1/users"]
    assert len(made) == len(ROLES) and all(r["user"] == "admin" and r["status"] == 201 for r in made)
    assert not any(t in str(rows) for t in tokens.values())


def test_audit_filters_by_user_since_and_limit(api, tokens):
    for _ in range(3):
        api.post(DEPLOY[1], headers=bearer(tokens["viewer"]), json=DEPLOY[2])
    mine = api.get("/api/v1/audit", headers=bearer(TOKEN), params={"user": "vie-user"}).json()
    assert len(mine) == 3 and {r["status"] for r in mine} == {403}
    assert mine[0]["id"] > mine[1]["id"] > mine[2]["id"]
    assert len(api.get("/api/v1/audit", headers=bearer(TOKEN), params={"limit": 2}).json()) == 2
    assert api.get("/api/v1/audit", headers=bearer(TOKEN), params={"since": "2999-01-01T00:00:00Z"}).json() == []
    r = api.get("/api/v1/audit", headers=bearer(TOKEN), params={"since": "yesterday"})
    assert r.status_code == 422 and "-1h" in r.json()["allowed"]


def test_audit_detail_redacts_secrets_in_bodies(api):
    body = {"name": "fab-c", "dashboard": "http://h:1", "store": "s3://b/p",
            "store_options": {"key": "AKIA", "secret": "s3cr3t", "endpoint_url": "http://s3"}}
    api.post("/api/v1/sites", headers=bearer(TOKEN), json=body)
    row = api.get("/api/v1/audit", headers=bearer(TOKEN), params={"limit": 1}).json()[0]
    assert row["action"] == "POST /api/v1/sites"
    assert row["detail"]["body"]["store_options"] == {"key": "***", "secret": "***", "endpoint_url": "http://s3"}
    assert "s3cr3t" not in str(row) and "AKIA" not in str(row)


def test_handlers_see_the_principal(api, tokens):
    @api.app.post("/api/v1/whoami-test")
    def who(request: Request) -> dict[str, str]:
        return {"name": request.state.principal.name}

    assert api.post("/api/v1/whoami-test", headers=bearer(TOKEN)).json() == {"name": "admin"}


def test_a_change_that_crashes_is_audited_as_500(api):
    @api.app.post("/api/v1/crash-test")
    def crash() -> None:
        raise RuntimeError("a bug")

    r = TestClient(api.app, raise_server_exceptions=False).post("/api/v1/crash-test", headers=bearer(TOKEN))
    assert r.status_code == 500
    row = api.get("/api/v1/audit", headers=bearer(TOKEN), params={"limit": 1}).json()[0]
    assert (row["action"], row["user"], row["status"]) == ("POST /api/v1/crash-test", "admin", 500)
