"""Monitoring at scale and through the API, against simulated sites (small HTTP servers serving
Ray-format metrics): 100 sites with 10 slow or dead sweep within the interval and memory stays
bounded; a site going down turns "down" within two intervals and raises an alert while the other
keeps updating; the monitoring routes' auth, 404 and 422 bodies."""

from __future__ import annotations

import gc
import time
import tracemalloc
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from configs.monitoring import AlertRule, MonitoringConfig
from configs.platform import PlatformConfig
from coordinator.api.app import create_app
from coordinator.center.core import Center
from coordinator.monitoring.monitor import Monitor
from tests.sim_sites import RemoteSimSites, SimSites, register
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def _center(root: Path) -> Center:
    cfg = PlatformConfig.model_validate({"center": {"state_db": str(root / "coordinator.db"),
                                                    "store": {"url": str(root / "store")}}})
    return Center(cfg, root)


def test_hundred_sites_sweep_says_who_is_up_with_bounded_memory(tmp_path):
    """Every sweep of 100 sites (5 dead, 5 slower than the per-site timeout) names exactly the
    sites that did not answer in time. How long a sweep takes is bench/bench_monitoring.py's."""
    modes = {f"sim-{i:03d}": "dead" if i < 5 else "slow" if i < 10 else "ok" for i in range(100)}
    cfg = MonitoringConfig()  # the defaults: every 5 s, 2 s per site
    center = _center(tmp_path)
    # the sites in a child process, as remote sites never share the coordinator's interpreter
    with RemoteSimSites(modes, slow_s=4) as sim:
        register(center, sim, str(tmp_path / "stores"))
        monitor = Monitor(center, cfg)
        try:
            first = monitor.sweep()
            assert {n for n, v in first["sites"].items() if v != "ok"} == {n for n, m in modes.items() if m != "ok"}
            health = {s["name"]: s["health"] for s in monitor.overview()["sites"]}
            assert all(health[n] == ("ok" if m == "ok" else "down") for n, m in modes.items())
            for _ in range(3):
                monitor.sweep()
            gc.collect()
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            sweeps = [monitor.sweep() for _ in range(12)]
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - before
            tracemalloc.stop()
            down = {n for n, m in modes.items() if m != "ok"}
            assert all({n for n, v in s["sites"].items() if v != "ok"} == down for s in sweeps)
            # 12 sweeps x 90 sites of fresh figures: what stays is each site's bounded sparkline
            assert grown < 4 * 1024 * 1024, grown
            overview = monitor.overview()
            assert overview["totals"]["down"] == 10 and overview["totals"]["up"] == 90
            spark = overview["sites"][50]["spark"]["cpu_util"]
            assert 1 < len(spark) <= cfg.spark_points
        finally:
            monitor.stop()
            center.close()


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    root = tmp_path_factory.mktemp("monitor-api")
    center = _center(root)
    cfg = MonitoringConfig(interval_s=1, timeout_s=0.5, downsample_s=60, rules=[
        AlertRule(name="site_unreachable", kind="site_unreachable", for_s=1, severity="critical"),
        AlertRule(name="cpu_high", kind="metric_above", metric="cpu_util", threshold=90, for_s=0)])
    with SimSites({"fab-a": "ok", "fab-b": "ok"}) as sim:
        register(center, sim, str(root / "stores"))
        sim.set("fab-a", cpu=12.5)
        sim.set("fab-b", cpu=40.0)
        monitor = Monitor(center, cfg)
        app = create_app(center, "t0ken", monitor=monitor)
        with TestClient(app) as client:  # the lifespan starts and stops the monitor
            client.headers["Authorization"] = "Bearer t0ken"
            yield client, sim, monitor
    center.close()


def _sites(client) -> dict:
    r = client.get("/api/v1/overview")
    assert r.status_code == 200, r.text
    return {s["name"]: s for s in r.json()["sites"]}


def test_overview_and_series_carry_the_sites_figures(api):
    client, _, _ = api
    sites = wait_for(lambda: (s := _sites(client)) and all(v["reachable"] for v in s.values()) and s, 30,
                     "both sites read")
    assert sites["fab-a"]["latest"]["cpu_util"] == 12.5 and sites["fab-b"]["latest"]["cpu_util"] == 40.0
    assert sites["fab-a"]["serve"]["status"] == "RUNNING" and sites["fab-a"]["model_version"] == "adc-aoi@3"
    assert sites["fab-a"]["automation_rate"] == pytest.approx(0.9)
    wait_for(lambda: len(client.get("/api/v1/sites/fab-a/metrics", params={"names": "cpu_util"})
                         .json()["series"]["cpu_util"]) >= 2, 30, "two points of history")
    body = client.get("/api/v1/sites/fab-a/metrics", params={"names": "cpu_util,mem_used", "since": "-5m"}).json()
    assert body["site"] == "fab-a" and set(body["series"]) == {"cpu_util", "mem_used"}
    assert all(v == 12.5 for _, v in body["series"]["cpu_util"])


def test_routes_refuse_without_token_and_explain_bad_values(api):
    client, _, _ = api
    bare = client.get("/api/v1/overview", headers={"Authorization": ""})
    assert bare.status_code == 401 and bare.json()["error"] == "Unauthorized"
    missing = client.get("/api/v1/sites/nowhere/metrics")
    assert missing.status_code == 404 and "fab-a" in missing.json()["allowed"]
    for params in ({"since": "yesterday"}, {"step": "-3"}, {"names": "cpu"}):
        r = client.get("/api/v1/sites/fab-a/metrics", params=params)
        assert r.status_code == 422 and r.json()["allowed"], (params, r.text)
    metrics = client.get("/metrics", headers={"Authorization": ""})
    assert metrics.status_code == 200 and 'adcp_site_up{site="fab-a"}' in metrics.text
    assert "adcp_api_requests_total" in metrics.text


def test_a_site_going_down_turns_red_and_alerts_while_the_other_updates(api):
    client, sim, monitor = api
    wait_for(lambda: all(v["reachable"] for v in _sites(client).values()), 30, "both sites read")
    sim.set("fab-b", cpu=95.0)
    hot = wait_for(lambda: [a for a in client.get("/api/v1/alerts").json() if a["rule"] == "cpu_high"], 10, "cpu alert")
    assert hot[0]["site"] == "fab-b" and _sites(client)["fab-b"]["health"] == "warn"
    sim.set("fab-b", cpu=40.0)
    wait_for(lambda: not client.get("/api/v1/alerts").json(), 10, "the cpu alert resolving")
    assert any(a["rule"] == "cpu_high" and not a["active"] for a in client.get("/api/v1/alerts?all=true").json())

    before = _sites(client)["fab-a"]["last_ok"]
    sim.stop("fab-b")
    stopped = time.monotonic()
    wait_for(lambda: _sites(client)["fab-b"]["health"] == "down", 2 * monitor.config.interval_s + 1, "fab-b down")
    assert time.monotonic() - stopped <= 2 * monitor.config.interval_s + 1
    alerts = wait_for(lambda: [a for a in client.get("/api/v1/alerts").json() if a["rule"] == "site_unreachable"],
                      10, "a site_unreachable alert")
    assert alerts[0]["site"] == "fab-b" and alerts[0]["severity"] == "critical"
    after = wait_for(lambda: (s := _sites(client)["fab-a"]) and s["last_ok"] != before and s, 10, "fab-a updating")
    assert after["health"] == "ok" and after["reachable"]
