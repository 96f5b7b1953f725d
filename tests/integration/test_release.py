"""A staged release through a running coordinator and one real local site: the challenger passed
its gate but sends every image to review live (thresholds 1.0 from its gate report), so at the
canary its review share crosses the line's limit under real traffic, the site is rolled back by
itself to the champion, the release stops as rolled_back, and an alert says why."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from coordinator.center.core import Center
from coordinator.process import read_token, running
from coordinator.state.db import State
from coordinator.state.model_lines import ModelLines
from data.publish import publish_artifact
from tests.platform_fixtures import run_cli, running_platform
from tests.serve_fixtures import export_tiny_model, synth_png
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

LINE = "adc-aoi"
LINES = [{"name": LINE, "dataset": "aoi", "sites": ["fab-a"], "shadow": {"min_verdicts": 0},
          "release": {"watch_s": 300}, "limits": {"max_review_share": 0.5, "min_requests": 5}}]


def test_a_challenger_that_sends_everything_to_review_is_rolled_back_at_the_canary(tmp_path, capsys):
    home = tmp_path / "home"
    extra = {"lines": LINES, "monitoring": {"interval_s": 2, "timeout_s": 2}}
    with running_platform(home, {"fab-a": {}}, extra=extra):
        center = Center.open(home)
        classes = []
        for version in ("1", "2"):
            folder = tmp_path / f"m{version}"
            _, meta = export_tiny_model(folder, version, seed=int(version), name=LINE)
            publish_artifact(center.central, "model", LINE, version, folder)
            classes = meta.classes
        code, _, err = run_cli(capsys, home, "model", "deploy", f"{LINE}@1", "--to", "fab-a")
        assert code == 0, err
        # the gate passed it (stored as run_gate stores it), with thresholds no answer reaches
        lines = ModelLines(State(home / "coordinator.db"))
        lines.put_report(LINE, "2", "gate", {"passed": True, "failed": [], "reasons": [],
                                             "thresholds": dict.fromkeys(classes, 1.0)})

        code, out, err = run_cli(capsys, home, "release", "start", f"{LINE}@2", "--json")
        assert code == 0, err
        started = json.loads(out)
        code, _, err = run_cli(capsys, home, "release", "start", f"{LINE}@2")
        assert code == 1 and "has a release under way" in err

        serve = center.gateway("fab-a").base_url("serve")
        stop, answers = threading.Event(), []

        def traffic() -> None:
            with httpx.Client(timeout=30) as client:
                i = 0
                while not stop.is_set():
                    r = client.post(f"{serve}/v1/classify", content=synth_png(i % 8),
                                    headers={"Content-Type": "image/png"})
                    answers.append((r.status_code, r.json().get("model_version"), r.json().get("decision")))
                    i += 1
                    stop.wait(0.05)

        thread = threading.Thread(target=traffic, daemon=True)
        thread.start()
        api = httpx.Client(base_url=running(home)["url"] + "/api/v1", timeout=30,
                           headers={"Authorization": f"Bearer {read_token(home)}"})
        try:
            body = wait_for(lambda: (b := api.get(f"/releases/{started['id']}").json())["status"] not in
                            ("running", "waiting_approval") and b, 240, "the release to stop", poll_s=1)
        finally:
            stop.set()
            thread.join(timeout=60)
        assert body["status"] == "rolled_back", body["detail"]
        assert body["stage"] == "watch:canary" and "fab-a: review_share" in body["detail"]["why"]
        site = body["sites"][0]
        assert site["state"] == "rolled_back" and site["serving"] == f"model/{LINE}@1" and site["champion"] == "1"
        assert site["watch"]["review_share"] > 0.5 and site["watch"]["requests"] >= 5
        assert any(v == f"{LINE}@2" and d == "review" for _, v, d in answers)  # the challenger did answer live
        with center.gateway("fab-a").client("serve") as c:
            assert c.get("/v1/model").json()["model_version"] == f"{LINE}@1"
        alerts = api.get("/alerts").json()
        assert any(a["rule"] == "release_rollback" and "review_share" in a["message"] for a in alerts), alerts
        code, out, err = run_cli(capsys, home, "release", "status", LINE)
        assert code == 0 and "rolled_back" in out and "fab-a" in out, err
        api.close()
        center.close()
