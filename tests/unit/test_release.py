"""Staged releases without sites: the Releaser over a real Center and State (temp SQLite), with
fakes for the gate, the deploys and rollbacks, the shadow and watch figures and an injected clock,
so a watch window passes without sleeping. Each test asserts what the sites were sent, the stored
stage and status, the aliases and the alert."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from configs.errors import ConflictError
from coordinator.api.app import create_app
from coordinator.center.core import Center
from coordinator.jobs import aliases
from coordinator.jobs.release import Releaser
from coordinator.monitoring.alerts import AlertEngine
from tests.dashboard_fakes import FakeMonitor
from tests.platform_fixtures import platform_yaml
from tests.waiting import wait_for

TOKEN = "bootstrap-admin-token-for-tests"
LINE = "adc-aoi"
SITES = ["fab-a", "fab-b", "fab-c"]
GOOD = {"requests": 100, "answers": 100, "reviews": 10, "errors": 0, "review_share": 0.1, "error_rate": 0.0,
        "latency_p99_ms": 40.0, "escapes": 0, "audited_false_defect": 0, "escape_rate": None}
BAD = {**GOOD, "reviews": 100, "review_share": 1.0}


def _line(**over: Any) -> dict[str, Any]:
    line = {"name": LINE, "dataset": "aoi", "sites": SITES,
            "shadow": {"rate": 0.5, "min_verdicts": 0},
            "release": {"canary": ["fab-a"], "waves": [["fab-b", "fab-c"]], "watch_s": 60},
            "limits": {"max_review_share": 0.5, "min_requests": 20}}
    for key, value in over.items():
        line[key] = {**line.get(key, {}), **value}
    return line


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


class Sites:
    """The sites as the fakes see them: what each serves (in the center's deployments table, as
    rollout.deploy records it, aliases moved as it moves them) and every call made."""

    def __init__(self, center: Center) -> None:
        self.center = center
        self.calls: list[tuple[str, str, tuple[str, ...], dict[str, Any]]] = []

    def deploy(self, center, ref, sites, serve_cfg=None, *, timeout_s=240, by=None, why=None, **kw) -> list[dict]:
        rows = []
        for site in sites:
            self.calls.append(("deploy", str(ref), (site,), kw))
            current = next((r["model"] for r in center.state.deployments(site=site) if r["status"] == "serving"), None)
            did = center.state.start_deployment(site, "adc", str(ref), current)
            center.state.finish_deployment(did, seconds=0.1)
            aliases.on_deployed(center, ref, site, by=by, why=why)
            rows.append({"site": site, "model": str(ref), "previous": current, "status": "serving"})
        return rows

    def rollback(self, center, site, serve_cfg=None, *, timeout_s=240, by=None, why=None) -> dict:
        current = next(r for r in center.state.deployments(site=site) if r["status"] == "serving")
        self.calls.append(("rollback", current["previous"], (site,), {"why": why}))
        did = center.state.start_deployment(site, "adc", current["previous"], current["model"])
        center.state.finish_deployment(did, seconds=0.1)
        aliases.on_deployed(center, current["previous"], site, by=by, why=f"rollback: {why}")
        return {"site": site, "model": current["previous"], "status": "serving"}

    def deployed(self, kind: str = "deploy") -> list[tuple[str, str]]:
        return [(ref, sites[0]) for k, ref, sites, _ in self.calls if k == kind]


class Watch:
    """Watch figures per site (GOOD unless set), read after the baseline."""

    def __init__(self) -> None:
        self.figures_of: dict[str, dict[str, Any]] = {}

    def baseline(self, site: str, after: float) -> dict[str, Any]:
        return {"t": after}

    def figures(self, site: str, baseline: dict[str, Any], model_version: str) -> dict[str, Any]:
        return dict(self.figures_of.get(site, GOOD))


class _Monitor(FakeMonitor):
    last_sweep = None

    def __init__(self) -> None:
        super().__init__(SITES)
        self.alerts_engine = AlertEngine([])

    def scrape_ages(self) -> dict:
        return {}


def _gate_pass(center, line, version, **kw) -> dict:
    return {"passed": True, "failed": [], "reasons": [], "thresholds": {"scratch": 0.9}}


@pytest.fixture
def make(tmp_path, monkeypatch):
    """make(**line overrides) -> (center, releaser, sites, watch, clock, monitor); every site serves adc-aoi@1."""
    made: list[tuple[Center, Releaser]] = []

    def build(gate=_gate_pass, shadow_figures=None, center=None, **over: Any):
        if center is None:
            platform = tmp_path / "platform.yaml"
            platform.write_text(platform_yaml(dict.fromkeys(SITES, {}), extra={"lines": [_line(**over)]}))
            center = Center.open(tmp_path / "home", platform)
        monkeypatch.setattr(center.central, "resolve", lambda ref: ref)
        sites, watch, clock, monitor = Sites(center), Watch(), Clock(), _Monitor()
        if not center.state.deployments():
            sites.deploy(center, _ref("1"), SITES)
            sites.calls.clear()
        releaser = Releaser(center, monitor, gate=gate, deploy=sites.deploy, rollback=sites.rollback,
                            shadow_figures=shadow_figures, watch=watch, clock=clock, interval_s=0.05,
                            model_id=lambda ref: f"{ref.name}@{ref.version}")
        made.append((center, releaser))
        return center, releaser, sites, watch, clock, monitor

    yield build
    for center, releaser in made:
        releaser.stop()
        center.close()


def _ref(version: str):
    from data.artifacts import ArtifactRef

    return ArtifactRef("model", LINE, version)


def _run(releaser: Releaser, clock: Clock, steps: int = 20, advance_s: float = 0.0) -> dict[str, Any]:
    """Step the line's release until it stops moving (or `steps`), the clock `advance_s` per step."""
    for _ in range(steps):
        if not releaser.step_all():
            break
        clock.t += advance_s
    return releaser.status(LINE)


def test_a_gate_that_refuses_stops_the_release_before_any_deploy(make):
    def refuse(center, line, version, **kw):
        return {"passed": False, "failed": ["escape_rate"], "reasons": ["challenger escape 0.012 > champion 0.004"]}

    center, releaser, sites, *_ = make(gate=refuse)
    releaser.start(LINE, "2", by="ann")
    assert center.lines.aliases(LINE)["fab-a"]["challenger"] == "2"
    status = _run(releaser, Clock())
    assert status["status"] == "refused" and status["stage"] == "gate"
    assert "escape_rate" in status["detail"]["why"] and "0.012 > champion 0.004" in status["detail"]["why"]
    assert sites.calls == []
    assert all("challenger" not in held for held in center.lines.aliases(LINE).values())


def test_shadow_figures_worse_than_the_champions_refuse_the_release(make):
    figures = {"shadowed": 40, "agreement": 0.95, "with_verdicts": 12,
               "challenger_figures": {"escapes": 3, "audited_false_defect": 12},
               "champion_figures": {"escapes": 0, "audited_false_defect": 12}}
    asked: list[tuple[str, str]] = []

    def shadow(center, site, model_version, timeout_s):
        asked.append((site, model_version))
        return figures

    center, releaser, sites, _, clock, _ = make(shadow_figures=shadow, shadow={"min_verdicts": 10})
    releaser.start(LINE, "2", by="ann")
    status = _run(releaser, clock)
    assert status["status"] == "refused" and status["stage"] == "shadow"
    assert "challenger escapes 3 > champion's 0" in status["detail"]["why"]
    # the champion with the challenger beside it at the canary, then the champion alone again; nothing else
    assert sites.deployed() == [(f"model/{LINE}@1", "fab-a"), (f"model/{LINE}@1", "fab-a")]
    shadowing = sites.calls[0][3]
    assert str(shadowing["shadow"][0]) == f"model/{LINE}@2" and shadowing["shadow"][1] == 0.5
    assert shadowing["shadow_thresholds"] == {"scratch": 0.9} and "shadow" not in sites.calls[1][3]
    assert asked == [("fab-a", f"{LINE}@2")]
    report = next(r for r in center.lines.reports(LINE, "2") if r["kind"] == "shadow")["report"]
    assert report["passed"] is False and report["with_verdicts"] == 12


def test_shadow_waits_for_enough_verdicts_then_goes_on(make):
    answers = iter([{"shadowed": 5, "with_verdicts": 2, "agreement": 1.0},
                    {"shadowed": 30, "with_verdicts": 10, "agreement": 0.97,
                     "challenger_figures": {"escapes": 0}, "champion_figures": {"escapes": 1}}])
    _, releaser, sites, _, clock, _ = make(shadow_figures=lambda *a, **k: next(answers), shadow={"min_verdicts": 10})
    releaser.start(LINE, "2", by="ann")
    releaser.step_all()  # gate
    releaser.step_all()  # shadow deployed, 2 of 10 verdicts
    status = releaser.status(LINE)
    assert status["stage"] == "shadow" and "2/10 shadowed images with verdicts" in status["detail"]["why"]
    releaser.step_all()
    assert releaser.status(LINE)["stage"] == "canary"
    assert sites.deployed() == [(f"model/{LINE}@1", "fab-a")]  # the canary replaces the shadowing champion


def test_a_canary_over_its_limits_is_rolled_back_by_itself_and_the_waves_never_deployed(make):
    center, releaser, sites, watch, clock, monitor = make()
    watch.figures_of["fab-a"] = BAD
    releaser.start(LINE, "2", by="ann")
    status = _run(releaser, clock, advance_s=10)
    assert status["status"] == "rolled_back" and status["stage"] == "watch:canary", status["detail"]["why"]
    assert "fab-a: review_share 1 > 0.5" in status["detail"]["why"]
    assert sites.deployed() == [(f"model/{LINE}@2", "fab-a")]
    assert sites.deployed("rollback") == [(f"model/{LINE}@1", "fab-a")]  # back to what it served before
    assert sites.calls[-1][3]["why"] == "auto rollback: review_share 1 > 0.5"
    assert center.lines.aliases(LINE, "fab-a")["fab-a"]["champion"] == "1"
    assert all(center.lines.aliases(LINE, s)[s]["champion"] == "1" for s in ("fab-b", "fab-c"))
    alerts = monitor.alerts_engine.active("fab-a")
    assert [a["rule"] for a in alerts] == ["release_rollback"] and "review_share 1 > 0.5" in alerts[0]["message"]
    fab_a = next(s for s in status["sites"] if s["site"] == "fab-a")
    assert fab_a["state"] == "rolled_back" and fab_a["watch"]["crossed"][0]["figure"] == "review_share"
    watch_report = next(r for r in center.lines.reports(LINE, "2") if r["kind"] == "watch")["report"]
    assert watch_report["passed"] is False


def test_figures_with_too_few_requests_do_not_roll_back_and_hold_the_release_for_approval(make):
    _, releaser, sites, watch, clock, _ = make()
    watch.figures_of["fab-a"] = {**BAD, "requests": 3, "answers": 3}
    releaser.start(LINE, "2", by="ann")
    status = _run(releaser, clock, advance_s=30)
    assert status["status"] == "waiting_approval" and status["stage"] == "watch:canary"
    assert "too few requests to judge fab-a" in status["detail"]["why"]
    assert sites.deployed("rollback") == []
    releaser.approve(LINE, "2", by="eve")
    watch.figures_of.clear()
    assert _run(releaser, clock, advance_s=30)["status"] == "done"


def test_all_good_goes_canary_then_waves_then_done_and_moves_the_aliases(make):
    center, releaser, sites, _, clock, _ = make()
    releaser.start(LINE, "2", by="ann")
    releaser.step_all()  # gate
    releaser.step_all()  # shadow: skipped (min_verdicts 0)
    releaser.step_all()  # canary deployed
    releaser.step_all()  # watching, the window not over
    status = releaser.status(LINE)
    assert status["stage"] == "watch:canary" and status["status"] == "running"
    assert sites.deployed() == [(f"model/{LINE}@2", "fab-a")]
    clock.t += 61
    status = _run(releaser, clock, advance_s=61)
    assert status["status"] == "done" and status["stage"] == "done"
    assert sites.deployed() == [(f"model/{LINE}@2", "fab-a"), (f"model/{LINE}@2", "fab-b"),
                                (f"model/{LINE}@2", "fab-c")]
    assert all(sites.calls[i][3]["thresholds"] == {"scratch": 0.9} for i in range(3))
    for site in SITES:
        held = center.lines.aliases(LINE, site)[site]
        assert held["champion"] == "2" and held["previous"] == "1" and "challenger" not in held
    assert [s["state"] for s in status["sites"]] == ["released"] * 3
    assert [e["stage"] for e in status["events"]] == ["gate", "shadow", "canary", "watch:canary", "wave-1",
                                                      "watch:wave-1", "done"]


def test_a_site_that_misbehaves_in_a_wave_is_rolled_back_while_the_others_keep_the_challenger(make):
    center, releaser, sites, watch, clock, _ = make()
    watch.figures_of["fab-c"] = {**GOOD, "errors": 30, "error_rate": 0.3}
    releaser.start(LINE, "2", by="ann")
    status = _run(releaser, clock, advance_s=61)
    assert status["status"] == "rolled_back" and status["stage"] == "watch:wave-1"
    assert "fab-c: error_rate 0.3 > 0.05" in status["detail"]["why"]
    assert [c[2] for c in sites.calls if c[0] == "rollback"] == [("fab-c",)]
    champions = {s: center.lines.aliases(LINE, s)[s]["champion"] for s in SITES}
    assert champions == {"fab-a": "2", "fab-b": "2", "fab-c": "1"}


def test_an_approval_holds_the_release_until_approve(make):
    center, releaser, sites, _, clock, _ = make(release={"approval": "before_waves"})
    releaser.start(LINE, "2", by="ann")
    status = _run(releaser, clock, advance_s=61)
    assert status["status"] == "waiting_approval" and status["stage"] == "wave-1"
    assert "adcp model approve adc-aoi@2" in status["detail"]["why"]
    assert releaser.step_all() == [] and sites.deployed() == [(f"model/{LINE}@2", "fab-a")]
    with pytest.raises(ConflictError):
        releaser.start(LINE, "3", by="bob")
    releaser.approve(LINE, "2", by="eve")
    status = _run(releaser, clock, advance_s=61)
    assert status["status"] == "done"
    assert [(a["stage"], a["by"]) for a in status["approvals"]] == [("wave-1", "eve")]
    assert any(e["by"] == "eve" and e["status"] == "running" for e in status["events"])


def test_a_new_releaser_over_the_same_db_goes_on_from_the_stored_stage(make, tmp_path):
    center, releaser, sites, _, clock, _ = make()
    releaser.start(LINE, "2", by="ann")
    for _ in range(4):
        releaser.step_all()
    assert releaser.status(LINE)["stage"] == "watch:canary"
    releaser.stop()
    center.close()  # the coordinator went away mid-watch

    center2 = Center.open(tmp_path / "home", tmp_path / "platform.yaml")
    center2, releaser2, sites2, _, clock2, _ = make(center=center2)
    clock2.t = clock.t + 61
    assert releaser2.resume() == [releaser2.status(LINE)["id"]]

    def finished() -> dict[str, Any] | None:
        clock2.t += 30  # time passes while the loop steps: the wave's window ends too
        status = releaser2.status(LINE)
        return status if status["status"] == "done" else None

    status = wait_for(finished, 30, "the resumed release to finish", poll_s=0.05)
    assert sites2.deployed() == [(f"model/{LINE}@2", "fab-b"), (f"model/{LINE}@2", "fab-c")]  # not fab-a again
    assert [e["stage"] for e in status["events"]][-4:] == ["watch:canary", "wave-1", "watch:wave-1", "done"]


def test_a_second_start_for_the_same_line_is_refused_with_409(make):
    center, releaser, *_ = make()
    api = TestClient(create_app(center, TOKEN, monitor=_Monitor(), releaser=releaser))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    first = api.post("/api/v1/releases", headers=auth, json={"line": LINE, "version": "2"})
    assert first.status_code == 201 and first.json()["stage"] == "gate" and first.json()["by"] == "admin"
    second = api.post("/api/v1/releases", headers=auth, json={"line": LINE, "version": "3"})
    assert second.status_code == 409 and second.json()["release"] == first.json()["id"]
    listed = api.get("/api/v1/releases", headers=auth, params={"line": LINE}).json()
    assert [r["id"] for r in listed] == [first.json()["id"]]
    assert api.post(f"/api/v1/models/{LINE}/2/approve", headers=auth).status_code == 409  # nothing waits
    assert api.post("/api/v1/releases", headers=auth, json={"line": "nope", "version": "1"}).status_code == 404


def test_window_figures_cover_only_the_window_and_judge_needs_min_requests():
    from coordinator.jobs.release_watch import judge, window_figures

    base = {"requests": 100, "errors": 1, "answers": 100, "reviews": 10, "buckets": {"10.0": 90, "100.0": 100,
                                                                                     "inf": 100}}
    cur = {"requests": 150, "errors": 6, "answers": 150, "reviews": 60, "buckets": {"10.0": 90, "100.0": 150,
                                                                                    "inf": 150}}
    f = window_figures(base, cur)
    assert (f["requests"], f["review_share"], f["error_rate"]) == (50, 1.0, 0.1)
    assert 10.0 < f["latency_p99_ms"] <= 100.0  # the window's requests all took 10-100 ms
    restarted = window_figures(base, {**cur, "requests": 20, "answers": 20, "reviews": 2, "errors": 0})
    assert (restarted["requests"], restarted["review_share"]) == (20, 0.1)  # counters reset: all of them count
    limits = {"max_review_share": 0.5, "max_error_rate": 0.05, "max_p99_ms": 1000, "max_escape_rate": 0.005,
              "min_requests": 20}
    assert [c["figure"] for c in judge(f, limits)] == ["review_share", "error_rate"]
    assert judge({**f, "requests": 19}, limits) == []
    assert judge({"requests": 50, "escape_rate": 0.5, "audited_false_defect": 19}, limits) == []
    escaping = judge({"requests": 50, "escape_rate": 0.05, "audited_false_defect": 20}, limits)
    assert [c["figure"] for c in escaping] == ["escape_rate"]
