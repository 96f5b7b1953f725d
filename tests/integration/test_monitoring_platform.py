"""Monitoring against a real platform (`adcp up`: the coordinator and two local Ray sites): the API
through the running coordinator, `adcp top --once` and `adcp logs`, and Debian's prometheus
scraping fab-a so that the PromQL path and the direct path agree on its figures."""

from __future__ import annotations

import subprocess
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from coordinator.center.core import Center
from coordinator.monitoring.collect import SiteReader
from coordinator.process import read_token, running
from raycluster.gateway import DirectGateway
from raycluster.local import read_state
from tests.platform_fixtures import run_cli, running_platform
from tests.serve_fixtures import free_port
from tests.waiting import wait_for

pytestmark = pytest.mark.integration
PROMETHEUS = "/usr/bin/prometheus"


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    home = tmp_path_factory.mktemp("monitoring") / "home"
    with running_platform(home, {"fab-a": {"num_cpus": 1}, "fab-b": {"num_cpus": 1}}) as h:
        yield h


def _api(home: Path) -> httpx.Client:
    return httpx.Client(base_url=running(home)["url"] + "/api/v1", timeout=30,
                        headers={"Authorization": f"Bearer {read_token(home)}"})


def test_overview_and_series_through_the_coordinator(platform):
    with _api(platform) as api:
        def both_read():
            body = api.get("/overview").json()
            sites = {s["name"]: s for s in body["sites"]}
            return body if all(s["reachable"] and "cpu_util" in s["latest"] for s in sites.values()) else None

        body = wait_for(both_read, 120, "both sites read by the coordinator's monitor", poll_s=1)
        assert {s["name"] for s in body["sites"]} == {"fab-a", "fab-b"} and body["totals"]["up"] == 2
        for s in body["sites"]:
            assert 0 <= s["latest"]["cpu_util"] <= 100 and s["latest"]["mem_total"] > s["latest"]["mem_used"] > 0
            assert s["dashboard_url"] == read_state(s["name"], platform).dashboard_url
        series = wait_for(lambda: (b := api.get("/sites/fab-a/metrics", params={"names": "mem_total", "since": "-10m"})
                                   .json())["series"]["mem_total"] and b, 60, "history of fab-a")
        assert series["site"] == "fab-a" and series["series"]["mem_total"][0][1] > 0
        assert api.get("/overview", headers={"Authorization": "Bearer wrong"}).status_code == 401
        missing = api.get("/sites/fab-z/metrics")
        assert missing.status_code == 404 and "fab-a" in missing.json()["allowed"]
        bad = api.get("/sites/fab-a/metrics", params={"step": "soon"})
        assert bad.status_code == 422 and bad.json()["error"] == "QueryValueError"
        own = httpx.get(running(platform)["url"] + "/metrics", timeout=10).text
        assert 'adcp_site_up{site="fab-a"} 1.0' in own


def test_top_once_and_job_logs(platform, capsys):
    code, out, err = run_cli(capsys, platform, "top", "--once")
    assert code == 0, err
    assert "fab-a" in out and "fab-b" in out and "ok" in out
    client = Center.open(platform).gateway("fab-a").job_client()
    job = client.submit_job(entrypoint="echo monitoring-log-line-$((6*7))", entrypoint_num_cpus=0)
    wait_for(lambda: client.get_job_status(job).is_terminal(), 180, "the echo job to finish", poll_s=1)
    code, out, err = run_cli(capsys, platform, "logs", "--site", "fab-a", "--job", job, "--follow")
    assert code == 0, err
    assert "monitoring-log-line-42" in out
    code, out, err = run_cli(capsys, platform, "logs", "--site", "fab-a", "--job", "no-such-job")
    assert code == 1 and "no job no-such-job" in err


def test_promql_and_direct_paths_agree(platform, tmp_path):
    site = read_state("fab-a", platform)
    target = site.metrics_url.split("//", 1)[1].split("/", 1)[0]
    port = free_port()
    (tmp_path / "prometheus.yml").write_text(textwrap.dedent(f"""\
        global: {{scrape_interval: 1s, evaluation_interval: 1s}}
        scrape_configs:
          - job_name: ray-fab-a
            static_configs: [{{targets: ["{target}"]}}]
        """))
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    prom_url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(f"{prom_url}/api/v1/query", params={"query": "ray_node_cpu_utilization"},
                                   timeout=5).json()["data"]["result"], 90, "prometheus to hold fab-a's CPU", poll_s=1)
        direct = SiteReader(DirectGateway("fab-a", {"dashboard": site.dashboard_url, "metrics": site.metrics_url},
                                          site.token))
        promql = SiteReader(DirectGateway("fab-a", {"dashboard": site.dashboard_url, "prometheus": prom_url},
                                          site.token))
        assert promql.prometheus and not direct.prometheus
        # Ray exports a node's figures every few seconds and prometheus holds the last scrape, so
        # one reading of each may straddle an export; the two paths must agree once both hold the
        # same export (a PromQL path that computes a figure wrongly never does).
        def agreeing():
            before = direct.read(time.monotonic() + 10).snap.gauges
            via = promql.read(time.monotonic() + 10)
            after = direct.read(time.monotonic() + 10).snap.gauges
            assert via.source == "prometheus"
            low, high = sorted((before["cpu_util"], after["cpu_util"]))
            return (via.snap.gauges, before) if low - 10 <= via.snap.gauges["cpu_util"] <= high + 10 else None

        got, before = wait_for(agreeing, 60, "the PromQL and direct readings of fab-a's CPU to agree", poll_s=2)
        assert got["mem_total"] == pytest.approx(before["mem_total"], rel=0.01)
        direct.close()
        promql.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
