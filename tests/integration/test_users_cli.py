"""`adcp user add --json` against a real coordinator (`adcp up` of a platform with no sites, so no
Ray), then each user's token from the environment alone (ADCP_API + ADCP_TOKEN): a reviewer's
push and a viewer's deploy are refused naming the roles allowed, an engineer's get past the door
on both, and `adcp audit` names who tried what."""

from __future__ import annotations

import json

import pytest

from coordinator.cli.main import main
from tests.platform_fixtures import running_platform

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def center(tmp_path_factory):
    with running_platform(tmp_path_factory.mktemp("users") / "home", {}) as home:
        yield home


def adcp(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def as_user(monkeypatch, api_url: str, token: str) -> None:
    monkeypatch.setenv("ADCP_API", api_url)
    monkeypatch.setenv("ADCP_TOKEN", token)


def test_tokens_from_user_add_meet_their_roles_at_the_door(center, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # no saved contexts of whoever runs the tests
    monkeypatch.delenv("ADCP_API", raising=False)
    code, out, _ = adcp(capsys, "--home", str(center), "up", "--json")
    assert code == 0
    api_url = json.loads(out)["api_url"]
    tokens = {}
    for name, role, sites in (("rev", "reviewer", "fab-a"), ("vic", "viewer", ""), ("eng", "engineer", "")):
        code, out, err = adcp(capsys, "--home", str(center), "user", "add", name, "--role", role,
                              *(["--sites", sites] if sites else []), "--json")
        assert code == 0, err
        body = json.loads(out)
        assert {"name", "role", "token"} <= set(body) and (body["name"], body["role"]) == (name, role)
        tokens[name] = body["token"]

    as_user(monkeypatch, api_url, tokens["rev"])
    code, out, err = adcp(capsys, "push", "dataset/aoi@1", "--to", "fab-a")
    assert code == 1 and "rev (role reviewer) may not POST /api/v1/transfers" in err
    assert "admin, operator, engineer" in err

    as_user(monkeypatch, api_url, tokens["vic"])
    code, out, err = adcp(capsys, "model", "deploy", "adc-aoi@1", "--to", "fab-a")
    assert code == 1 and "vic (role viewer) may not POST /api/v1/models/{name}/{version}/deploy" in err
    assert "admin, engineer" in err

    as_user(monkeypatch, api_url, tokens["eng"])
    for args in (("push", "dataset/aoi@1", "--to", "fab-a"), ("model", "deploy", "adc-aoi@1", "--to", "fab-a")):
        code, _, err = adcp(capsys, *args)
        assert code == 1 and "may not" not in err and "fab-a" in err, err  # past the door: no such site

    monkeypatch.delenv("ADCP_API")
    monkeypatch.delenv("ADCP_TOKEN")
    code, out, _ = adcp(capsys, "--home", str(center), "audit", "--since", "-1h", "--json")
    assert code == 0
    tries = [(r["user"], r["action"], r["status"]) for r in json.loads(out) if r["user"] != "admin"]
    assert ("rev", "POST /api/v1/transfers", 403) in tries
    assert ("vic", "POST /api/v1/models/{name}/{version}/deploy", 403) in tries
    assert [t[0] for t in tries].count("eng") == 2 and all(t[2] not in (401, 403) for t in tries if t[0] == "eng")
