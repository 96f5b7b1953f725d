"""Two real local Ray sites side by side: token auth, jobs reaching the right cluster, Serve's
proxy, status, and a stop that leaves no process or temp dir behind.

The tests share one pair of sites (a start costs ~15 s on two cores); the last test stops them.
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from configs.errors import SiteError
from configs.models import LocalSiteConfig
from raycluster import (
    LocalSite,
    list_sites,
    load_site,
    site_processes,
    start_site,
    status,
    stop_site,
)
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

START_TIMEOUT_S = 180  # two cores shared with other work: a start takes 15 s idle, far more busy




@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("adcp-home")


@pytest.fixture(scope="module")
def sites(home: Path) -> Iterator[dict[str, LocalSite]]:
    """fab-a with 2 CPUs and fab-b with 3, started at the same time; stopped in `finally`."""
    configs = [
        LocalSiteConfig(name="fab-a", num_cpus=2, object_store_mb=200, resources={"fab_a": 1}),
        LocalSiteConfig(name="fab-b", num_cpus=3, object_store_mb=200),
    ]
    try:
        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(start_site, c, home, timeout_s=START_TIMEOUT_S) for c in configs]
            yield {site.name: site for site in (f.result() for f in futures)}
    finally:
        for cfg in configs:
            stop_site(cfg.name, home, timeout_s=60)


def test_sites_are_distinct(sites):
    a, b = sites["fab-a"], sites["fab-b"]
    assert a.temp_dir != b.temp_dir and a.token != b.token
    assert not set(a.ports.values()) & set(b.ports.values())
    assert a.worker_ports[1] < b.worker_ports[0] or b.worker_ports[1] < a.worker_ports[0]
    assert len(a.temp_dir) <= 40  # leaves room for Ray's socket paths (107 characters at most)


def test_dashboard_requires_each_sites_own_token(sites):
    a, b = sites["fab-a"], sites["fab-b"]
    for site, other in ((a, b), (b, a)):
        url = f"{site.dashboard_url}/api/version"
        answer = httpx.get(url, headers=site.headers(), timeout=10)
        assert answer.status_code == 200 and answer.json()["ray_version"] == "2.60.0"
        assert httpx.get(url, timeout=10).status_code == 401
        assert httpx.get(url, headers=other.headers(), timeout=10).status_code == 403
        assert httpx.get(f"{site.dashboard_url}/api/jobs/", timeout=10).status_code == 401
        proxied = {"X-Ray-Authorization": f"Bearer {site.token}"}
        assert httpx.get(url, headers=proxied, timeout=10).status_code == 200


def test_jobs_run_on_their_own_site(sites):
    from ray.job_submission import JobStatus, JobSubmissionClient

    entrypoint = "python -c \"import ray; ray.init(); print('RES', ray.cluster_resources())\""
    jobs = {}
    for name, site in sites.items():
        client = JobSubmissionClient(address=site.dashboard_url, headers=site.headers())
        jobs[name] = (client, client.submit_job(entrypoint=entrypoint))
    done = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
    for name, (client, job_id) in jobs.items():
        final = wait_for(
            lambda c=client, j=job_id: (s := c.get_job_status(j)) in done and s,
            120,
            f"job {job_id} on {name}",
        )
        logs = client.get_job_logs(job_id)
        assert final == JobStatus.SUCCEEDED, logs
        expected_cpus = {"fab-a": "'CPU': 2.0", "fab-b": "'CPU': 3.0"}[name]
        assert expected_cpus in logs, logs
        assert ("'fab_a': 1.0" in logs) == (name == "fab-a"), logs


def test_serve_proxy_does_not_check_the_token(sites, tmp_path):
    """Serve's HTTP proxy answers without a token: the site's data plane is open on 127.0.0.1."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    site = sites["fab-a"]
    port = int(site.serve_url.rsplit(":", 1)[1])
    (tmp_path / "hello.py").write_text(textwrap.dedent(f"""
        from ray import serve

        @serve.deployment(ray_actor_options={{"num_cpus": 0}})
        def hello(request):
            return "hello"

        serve.start(http_options={{"host": "127.0.0.1", "port": {port}}})
        serve.run(hello.bind(), route_prefix="/hello")
    """))  # fmt: skip
    client = JobSubmissionClient(address=site.dashboard_url, headers=site.headers())
    job_id = client.submit_job(
        entrypoint="python hello.py", runtime_env={"working_dir": str(tmp_path)}
    )
    done = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
    final = wait_for(lambda: (s := client.get_job_status(job_id)) in done and s, 150, "Serve app")
    assert final == JobStatus.SUCCEEDED, client.get_job_logs(job_id)
    answer = httpx.get(f"{site.serve_url}/hello", timeout=10)
    assert (answer.status_code, answer.text) == (200, "hello")
    wrong = httpx.get(f"{site.serve_url}/hello", headers={"Authorization": "Bearer x"}, timeout=10)
    assert wrong.status_code == 200


def test_status_listing_and_restart_refusal(sites, home):
    for name, cpus in (("fab-a", 2.0), ("fab-b", 3.0)):
        answer = status(sites[name])
        assert answer["reachable"] and answer["ray_version"] == "2.60.0"
        assert answer["resources"]["total"]["CPU"] == cpus
        assert answer["resources"]["total"]["object_store_memory"] == 200 * 2**20
        assert load_site(name, home) == sites[name]
    assert status(sites["fab-a"])["resources"]["total"]["custom"] == {"fab_a": 1.0}
    assert [s.name for s in list_sites(home)] == ["fab-a", "fab-b"]
    assert sites["fab-a"].gcs_address.endswith(f":{sites['fab-a'].ports['port']}")
    with pytest.raises(SiteError, match="already running"):
        start_site(LocalSiteConfig(name="fab-a", num_cpus=2, object_store_mb=200), home)


def test_stop_leaves_no_process_and_no_temp_dir(sites, home):
    """Runs last: stops both sites, with a job still running on fab-a."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    a = sites["fab-a"]
    client = JobSubmissionClient(address=a.dashboard_url, headers=a.headers())
    job_id = client.submit_job(entrypoint="python -c \"import signal; signal.pause()\"")
    wait_for(lambda: client.get_job_status(job_id) == JobStatus.RUNNING, 120, "a running job")
    for name, site in sites.items():
        assert site_processes(site)
        started = time.monotonic()
        assert stop_site(name, home, timeout_s=60) is True
        print(f"stopped {name} in {time.monotonic() - started:.1f} s")
        assert site_processes(site) == []
        assert not Path(site.temp_dir).exists()
        assert not site.is_running()
        assert stop_site(name, home) is False
        with pytest.raises(SiteError, match="not running"):
            load_site(name, home)
    assert list_sites(home) == []
