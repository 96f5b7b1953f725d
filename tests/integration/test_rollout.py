"""Model rollout to two real local sites under one coordinator, as a user runs it: `adcp model
deploy` to both, a swap to another version under classification load at both sites (no request
fails), `adcp model rollback`, `adcp model list`, errors, and the coordinator's model routes."""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path

import httpx
import pytest

from coordinator import process as server
from coordinator.center.core import Center
from coordinator.process import read_token
from data.artifacts import ArtifactRef
from data.publish import publish_artifact
from raycluster.local import read_state
from tests.platform_fixtures import run_cli, running_platform
from tests.serve_fixtures import export_tiny_model, synth_png, wait_for

pytestmark = pytest.mark.integration

SITES = ("fab-a", "fab-b")
V1 = ArtifactRef("model", "adc", "1")
HOME: list[Path] = []  # the module's platform home (the autouse fixture resets ADCP_HOME per test)


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    return run_cli(capsys, HOME[0], *args)


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    home = tmp_path_factory.mktemp("rollout") / "home"
    HOME[:] = [home]
    with running_platform(home, dict.fromkeys(SITES, {})):
        center = Center.open(home)
        for version, seed in (("1", 1), ("2", 2)):
            folder = home.parent / f"adc-{version}"
            export_tiny_model(folder, version, seed=seed, name="adc")
            publish_artifact(center.central, "model", "adc", version, folder)
        yield center


def _served(center: Center, site: str) -> str:
    with center.gateway(site).client("serve") as c:
        return c.get("/v1/model").raise_for_status().json()["model_version"]


def test_deploy_to_both_sites(platform, capsys):
    center = platform
    code, _, err = _cli(capsys, "model", "rollback", "--site", "fab-a")
    assert code == 1 and "Nothing to roll back at fab-a" in err and len(err.strip().splitlines()) == 1, err

    code, out, err = _cli(capsys, "model", "deploy", "adc@1", "--to", "fab-a,fab-b", "--json")
    assert code == 0, err
    rows = {r["site"]: r for r in json.loads(out)}
    assert rows.keys() == set(SITES)
    for site in SITES:
        assert rows[site]["status"] == "serving" and rows[site]["model"] == "model/adc@1"
        assert rows[site]["previous"] is None and rows[site]["seconds"] > 0
        assert _served(center, site) == "adc@1"
        assert center.store(site).verify(V1).ok
    # the Serve app runs the code bundle and the model from the site's own store
    apps = center.gateway("fab-a").client("dashboard").get("/api/serve/applications/").json()["applications"]
    app = apps["adc"]["deployed_app_config"]
    assert app["runtime_env"]["working_dir"].startswith(center.store("fab-a").url + "/objects/")
    assert app["deployments"][0]["user_config"]["model_uri"] == center.store("fab-a").manifest_url(V1)


def test_swap_under_load_at_both_sites_drops_nothing(platform, capsys):
    center = platform
    urls = {site: center.gateway(site).base_url("serve") for site in SITES}
    blobs = [synth_png(i) for i in range(16)]
    stop = threading.Event()
    answers: dict[str, Counter[str]] = {site: Counter() for site in SITES}
    failures: list[str] = []

    def hammer(site: str, offset: int) -> None:
        with httpx.Client(timeout=60) as client:
            i = offset
            while not stop.is_set():
                try:
                    r = client.post(f"{urls[site]}/v1/classify", content=blobs[i % len(blobs)],
                                    headers={"Content-Type": "image/png"})
                    if r.status_code == 200:
                        answers[site][r.json()["model_version"]] += 1
                    else:
                        failures.append(f"{site}: {r.status_code} {r.text[:200]}")
                except httpx.HTTPError as e:
                    failures.append(f"{site}: {e!r}")
                i += 1

    threads = [threading.Thread(target=hammer, args=(site, k)) for site in SITES for k in range(2)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: all(answers[s]["adc@1"] >= 10 for s in SITES), 60, "load against adc@1 at both sites")
        code, out, err = _cli(capsys, "model", "deploy", "model/adc@2", "--to", "fab-a,fab-b", "--json")
        assert code == 0, err
        before = {s: answers[s]["adc@2"] for s in SITES}
        wait_for(lambda: all(answers[s]["adc@2"] >= before[s] + 10 for s in SITES), 60, "answers from adc@2")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert failures == []
    rows = {r["site"]: r for r in json.loads(out)}
    for site in SITES:
        assert rows[site]["status"] == "serving"
        assert rows[site]["previous"] == "model/adc@1" and rows[site]["model"] == "model/adc@2"
        assert rows[site]["seconds"] > 0  # measured (how fast is bench/bench_rollout.py's)
        assert _served(center, site) == "adc@2"
    print("rollout seconds under load:", {s: rows[s]["seconds"] for s in SITES})


def test_rollback_one_site_and_list(platform, capsys):
    center = platform
    code, out, err = _cli(capsys, "model", "rollback", "--site", "fab-a", "--why", "escapes at fab-a", "--json")
    assert code == 0, err
    row = json.loads(out)
    assert row["site"] == "fab-a" and row["model"] == "model/adc@1" and row["previous"] == "model/adc@2"
    assert _served(center, "fab-a") == "adc@1" and _served(center, "fab-b") == "adc@2"

    code, out, err = _cli(capsys, "model", "list", "--json")
    assert code == 0, err
    serving = {r["ref"]: r["serving_at"] for r in json.loads(out)}
    assert serving == {"model/adc@1": ["fab-a"], "model/adc@2": ["fab-b"]}
    code, out, err = _cli(capsys, "model", "list")
    assert code == 0 and any("model/adc@1" in line and "fab-a" in line for line in out.splitlines()), out

    # the line's aliases moved with the rollouts: champion per site, previous where a rollback returns
    code, out, err = _cli(capsys, "model", "list", "--json")
    assert {r["ref"]: r["aliases"] for r in json.loads(out)} == {
        "model/adc@1": {"fab-a": ["champion"], "fab-b": ["previous"]},
        "model/adc@2": {"fab-a": ["previous"], "fab-b": ["champion"]}}
    code, out, err = _cli(capsys, "model", "history", "adc", "--site", "fab-a", "--json")
    assert code == 0, err
    history = json.loads(out)
    assert history["aliases"] == {"fab-a": {"champion": "1", "previous": "2"}}
    moves = [(m["alias"], m["from_version"], m["to_version"], m["by"], m["why"]) for m in history["moves"]]
    assert moves == [("champion", "2", "1", "admin", "rollback: escapes at fab-a"),
                     ("previous", "1", "2", "admin", "rollback: escapes at fab-a"),
                     ("champion", "1", "2", "admin", "deploy"), ("previous", None, "1", "admin", "deploy"),
                     ("champion", None, "1", "admin", "deploy")]
    code, out, err = _cli(capsys, "model", "history", "adc")
    assert code == 0 and "rollback" in out and "champion" in out and "previous" in out, out  # (80 columns: cells fold)


def test_errors_are_one_line_and_recorded_nowhere(platform, capsys):
    center = platform
    before = len(center.state.deployments())
    code, _, err = _cli(capsys, "model", "deploy", "adc@9", "--to", "fab-a,fab-b")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "No version 9 of model/adc" in err, err
    code, _, err = _cli(capsys, "model", "deploy", "adc@1", "--to", "fab-z")
    assert code == 1 and "No site named fab-z" in err and len(err.strip().splitlines()) == 1, err
    code, _, err = _cli(capsys, "model", "deploy", "dataset/aoi@1", "--to", "fab-a")
    assert code == 1 and "only models" in err, err
    assert len(center.state.deployments()) == before


def test_api_routes_need_the_token(platform):
    center = platform
    token = read_token(HOME[0])
    client = httpx.Client(base_url=server.running(HOME[0])["url"], timeout=120)  # the coordinator process
    with client:
        for method, path in (("GET", "/api/v1/models"), ("GET", "/api/v1/deployments"),
                             ("POST", "/api/v1/models/adc/2/deploy"), ("POST", "/api/v1/sites/fab-a/rollback")):
            r = client.request(method, path, json={"to": ["fab-a"]} if "deploy" in path else None)
            assert r.status_code == 401, (path, r.text)
        auth_header = {"Authorization": f"Bearer {token}"}
        models = client.get("/api/v1/models", headers=auth_header).json()
        assert {m["ref"]: m["serving_at"] for m in models}["model/adc@2"] == ["fab-b"]
        r = client.post("/api/v1/models/adc/9/deploy", json={"to": ["fab-a"]}, headers=auth_header)
        assert r.status_code == 404 and r.json()["error"] == "NotFoundError", r.text
        r = client.post("/api/v1/sites/fab-a/rollback", headers=auth_header)  # fab-a: adc@1 -> adc@2
        assert r.status_code == 200, r.text
        assert r.json()["model"] == "model/adc@2" and r.json()["status"] == "serving"
        assert _served(center, "fab-a") == "adc@2"
        rows = client.get("/api/v1/deployments", params={"site": "fab-a"}, headers=auth_header).json()
        assert [r["model"] for r in rows[:2]] == ["model/adc@2", "model/adc@1"]
        assert all(r["status"] == "serving" for r in rows)


def test_pull_mode_site_gets_the_model_through_its_own_store(platform, capsys, tmp_path):
    """A site whose store the center cannot reach: Ray jobs there pull the model and the code
    bundle, and its Serve app loads both from its own store. (fab-b's Ray cluster plays the pull
    site, so this runs last: fab-b's records no longer describe its app afterwards.)"""
    center = platform
    fab_b = read_state("fab-b", HOME[0])
    pull_store = tmp_path / "fab-p-store"
    code, _, err = _cli(capsys, "site", "add", "fab-p", "--dashboard", fab_b.dashboard_url, "--serve",
                        fab_b.serve_url, "--store", str(pull_store), "--transfer", "pull",
                        "--token-file", str(fab_b.token_path))
    assert code == 0, err
    code, out, err = _cli(capsys, "model", "deploy", "adc@1", "--to", "fab-p", "--json")
    assert code == 0, err
    row = json.loads(out)[0]
    assert row["status"] == "serving" and row["previous"] is None
    assert _served(center, "fab-p") == "adc@1"
    site_store = center.store("fab-p")
    assert site_store.verify(V1).ok  # pulled there by a job at the site, not written by the center
    pulls = [t for t in center.transfers(limit=20) if t["destination"] == "fab-p"]
    assert {t["direction"] for t in pulls} == {"pull"} and {t["ref"].split("@")[0] for t in pulls} == {
        "model/adc", "code/adcp"}
    apps = center.gateway("fab-p").client("dashboard").get("/api/serve/applications/").json()["applications"]
    app = apps["adc"]["deployed_app_config"]
    assert app["deployments"][0]["user_config"]["model_uri"] == site_store.manifest_url(V1)
    assert app["runtime_env"]["working_dir"].startswith(site_store.url + "/objects/")
