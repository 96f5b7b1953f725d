"""One rollout per site at a time, owned by the coordinator: a second rollout to a busy site is
refused with ConflictError, HTTP 409 through the API, naming the site and the rollout it runs;
other sites stay free, and the site is free again once the first rollout ends."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from configs.errors import ConflictError, NotFoundError
from coordinator.api.app import create_app
from coordinator.center.core import Center
from coordinator.jobs import rollout
from tests.dashboard_fakes import FakeMonitor
from tests.platform_fixtures import platform_yaml

TOKEN = "bootstrap-admin-token-for-tests"


class _Monitor(FakeMonitor):
    last_sweep = None

    def scrape_ages(self) -> dict:
        return {}


@pytest.fixture
def center(tmp_path):
    platform = tmp_path / "platform.yaml"
    platform.write_text(platform_yaml({"fab-a": {}, "fab-b": {}}))
    center = Center.open(tmp_path / "home", platform)
    try:
        yield center
    finally:
        center.close()


def test_a_second_rollout_to_a_busy_site_is_refused_with_409(center, monkeypatch):
    entered, release = threading.Event(), threading.Event()

    def resolve(ref):
        """The first rollout (adc@1) holds its sites until released; other models do not exist."""
        if ref.version == "1":
            entered.set()
            assert release.wait(30)
        raise NotFoundError(f"No {ref} in the central store.")

    monkeypatch.setattr(center.central, "resolve", resolve)
    api = TestClient(create_app(center, TOKEN, monitor=_Monitor(["fab-a", "fab-b"])))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(rollout.deploy, center, "adc@1", ["fab-a"])
        assert entered.wait(30), "the first rollout did not start"
        try:
            with pytest.raises(ConflictError, match="A rollout of model/adc@1 to fab-a is already running"):
                rollout.deploy(center, "adc@2", ["fab-b", "fab-a"])
            r = api.post("/api/v1/models/adc/2/deploy", headers=auth, json={"to": ["fab-a"]})
            assert r.status_code == 409, r.text
            body = r.json()
            assert body["error"] == "ConflictError" and body["site"] == "fab-a"
            assert body["running"]["model"] == "model/adc@1" and body["running"]["since"]
            assert "already running" in body["detail"] and "retry" in body["hint"]
            # started as a task, the refusal is immediate too: no task is created
            r = api.post("/api/v1/models/adc/2/deploy", params={"wait": "false"}, headers=auth, json={"to": ["fab-a"]})
            assert r.status_code == 409 and r.json()["running"]["model"] == "model/adc@1", r.text
            assert api.app.state.tasks.list() == []
            # the refused rollout took no lock: fab-b is free (404: no such model, not 409)
            assert api.post("/api/v1/models/adc/2/deploy", headers=auth, json={"to": ["fab-b"]}).status_code == 404
        finally:
            release.set()
        with pytest.raises(NotFoundError):
            first.result(30)
    # the first rollout ended: fab-a takes rollouts again
    assert api.post("/api/v1/models/adc/2/deploy", headers=auth, json={"to": ["fab-a"]}).status_code == 404


def test_a_rollout_as_a_task_answers_202_and_its_result_is_the_rows(center, monkeypatch):
    monkeypatch.setattr(center.central, "resolve", lambda ref: ref)
    seen = []

    def deploy(center_, ref, sites, serve_cfg=None, *, timeout_s, on_event=None, by=None, why=None):
        on_event(sites[0], "deploying")
        seen.append((str(ref), sites))
        return [{"site": sites[0], "model": str(ref), "previous": None, "seconds": 1.5, "status": "serving",
                 "deployment_id": "d1"}]

    monkeypatch.setattr(rollout, "deploy", deploy)
    api = TestClient(create_app(center, TOKEN, monitor=_Monitor(["fab-a", "fab-b"])))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = api.post("/api/v1/models/adc/3/deploy", params={"wait": "false"}, headers=auth, json={"to": ["fab-b"]})
    assert r.status_code == 202, r.text
    task = api.app.state.tasks.wait(r.json()["id"], 30)
    assert task.state == "succeeded" and task.kind == "deploy" and task.result[0]["status"] == "serving"
    assert any("fab-b: deploying" in e for e in task.events) and seen == [("model/adc@3", ["fab-b"])]
    r = api.post("/api/v1/models/adc/9/deploy", params={"wait": "false"}, headers=auth, json={"to": ["fab-z"]})
    assert r.status_code == 404 and "fab-z" in r.json()["detail"]  # checked before a task starts
