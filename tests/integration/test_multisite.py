"""Two real local sites under one coordinator, as a user runs them: `adcp up`, `adcp status`,
`adcp push` (push to both; pull through a Ray job at a pull-mode site; relay through the center),
each site's Ray Data reading what it got, and `adcp down` stopping every process."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from coordinator import process as server
from coordinator.center import bundle
from coordinator.center.core import Center
from data.artifacts import ArtifactRef, ArtifactStore
from data.publish import publish_artifact
from raycluster.local import read_state
from tests.platform_fixtures import run_cli, running_platform
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

SITES = {"fab-a": {}, "fab-b": {"num_gpus": 2}}

READ_WITH_RAY_DATA = (
    "import ray, sys; from data.dataset import open_dataset; ds = open_dataset(sys.argv[1]); "
    "print('ADCP_ROWS', ray.data.read_parquet(ds.shard_urls).count(), ds.manifest['rows'])"
)


HOME: list[Path] = []  # the module's platform home (the autouse fixture resets ADCP_HOME per test)


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    return run_cli(capsys, HOME[0], *args)


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    home = tmp_path_factory.mktemp("multisite") / "home"
    HOME[:] = [home]
    with running_platform(home, SITES):
        yield home


def _run_at(center: Center, site: str, args: list[str]) -> str:
    client = center.gateway(site).job_client()
    code = bundle.publish(center.central)
    job = client.submit_job(entrypoint=shlex.join(args), runtime_env={"working_dir": code.uri}, entrypoint_num_cpus=0)
    wait_for(lambda: client.get_job_status(job).is_terminal(), 180, f"job {job} at {site}")
    logs = client.get_job_logs(job)
    assert client.get_job_status(job).value == "SUCCEEDED", logs[-2000:]
    return logs


def test_up_status_push_read_pull_relay_down(platform, capsys, tmp_path):
    home = platform

    def both_reachable():
        code, out, err = _cli(capsys, "status", "--json")
        assert code == 0, err
        status = json.loads(out)
        return status if all(s["reachable"] for s in status["sites"]) else None

    # a loaded machine can make one status read time out: poll it with a deadline
    status = wait_for(both_reachable, 60, "both sites reachable in `adcp status`")
    assert status["coordinator"]["url"].startswith("http://127.0.0.1:")
    sites = {s["name"]: s for s in status["sites"]}
    assert sites.keys() == {"fab-a", "fab-b"} and all(s["reachable"] for s in sites.values()), sites
    assert sites["fab-b"]["resources"]["total"]["GPU"] == 2 and sites["fab-a"]["resources"]["total"]["GPU"] == 0
    assert sites["fab-a"]["resources"]["total"]["CPU"] == 2 and sites["fab-a"]["ray_version"].startswith("2.")

    code, out, err = _cli(capsys, "data", "synth", "--name", "aoi", "--images", "120", "--json")
    assert code == 0, err
    code, out, err = _cli(capsys, "push", "dataset/aoi@1", "--to", "fab-a,fab-b", "--json")
    assert code == 0, err
    results = {r["site"]: r for r in json.loads(out)}
    center = Center.open(home)
    manifest = center.central.manifest(ArtifactRef("dataset", "aoi", "1"))
    for site in ("fab-a", "fab-b"):
        assert results[site]["direction"] == "push"
        assert results[site]["bytes_sent"] == manifest.total_bytes
        assert results[site]["objects_verified"] == len(manifest.objects)

    # each site's Ray Data reads the dataset from its own store
    for site in ("fab-a", "fab-b"):
        url = center.store(site).manifest_url(manifest.ref)
        logs = _run_at(center, site, ["python", "-c", READ_WITH_RAY_DATA, url])
        line = next(ln for ln in logs.splitlines() if ln.startswith("ADCP_ROWS"))
        _, counted, recorded = line.split()
        assert int(counted) == int(recorded) == 120

    # a pull-mode site: the center never touches its store; a Ray job there pulls from the center
    fab_b = read_state("fab-b", home)
    pull_store = tmp_path / "fab-p-store"
    code, _, err = _cli(capsys, "site", "add", "fab-p", "--dashboard", fab_b.dashboard_url, "--store",
                        str(pull_store), "--transfer", "pull", "--token-file", str(fab_b.token_path))
    assert code == 0, err
    code, out, err = _cli(capsys, "push", "dataset/aoi@1", "--to", "fab-p", "--json")
    assert code == 0, err
    pulled = json.loads(out)[0]
    assert pulled["direction"] == "pull" and pulled["objects_verified"] == len(manifest.objects)
    assert ArtifactStore(pull_store.as_uri()).verify(manifest.ref).ok
    code, out, err = _cli(capsys, "artifacts", "--site", "fab-p", "--json")
    assert code == 0, err
    assert [(a["kind"], a["name"], a["version"]) for a in json.loads(out)] == [("dataset", "aoi", "1")]

    # relay: an artifact only the pull-mode site holds reaches fab-a through the central store
    src = tmp_path / "made-at-fab-p"
    src.mkdir()
    (src / "model.pt2").write_bytes(b"weights" * 10_000)
    (src / "metadata.json").write_text('{"name": "adc"}')
    publish_artifact(ArtifactStore(pull_store.as_uri()), "model", "adc-p", "1", src)
    code, out, err = _cli(capsys, "push", "model/adc-p@1", "--from", "fab-p", "--to", "fab-a", "--json")
    assert code == 0, err
    relayed = json.loads(out)[0]
    assert relayed["direction"] == "relay" and len(relayed["hops"]) == 2
    for where in ("center", "fab-a"):
        assert center.store(where).verify(ArtifactRef("model", "adc-p", "1")).ok

    code, out, _ = _cli(capsys, "transfers", "--json")
    rows = json.loads(out)
    assert {(r["destination"], r["direction"], r["status"]) for r in rows} >= {
        ("fab-a", "push", "succeeded"), ("fab-b", "push", "succeeded"), ("fab-p", "pull", "succeeded"),
        ("fab-a", "relay", "succeeded")}

    # down stops every process it started, by pid
    pids = [read_state(n, home).pid for n in ("fab-a", "fab-b")]
    coordinator = server.running(home)
    assert _cli(capsys, "down")[0] == 0
    assert server.running(home) is None
    for pid in [*pids, coordinator["pid"]]:
        assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    code, _, err = _cli(capsys, "status", "--json")
    assert code == 1 and "No coordinator is running" in err  # the CLI is a client: nothing to ask
