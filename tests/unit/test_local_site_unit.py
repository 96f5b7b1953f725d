"""Local sites without Ray: ports, state files, tokens, names, stale state and early exits."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from configs.errors import SiteError
from configs.models import LocalSiteConfig
from raycluster import _ray_start, gateway, local
from raycluster._machine import (
    free_ports,
    pick_worker_range,
    port_options,
    processes,
    read_proc,
)
from raycluster.local import LocalSite, list_sites, load_site, start_site, stop_site


@pytest.fixture
def sleeper():
    """Start a process to stand in for a site's `ray start`; kill it by its pid afterwards."""
    started: list[subprocess.Popen[bytes]] = []

    def start(env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-c", "import signal; signal.pause()"],
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def make_site(home: Path, pid: int, ticks: int, temp_dir: Path, name: str = "fab-a") -> LocalSite:
    ports = dict(zip([*_ray_start.PORT_FLAGS, "serve-http"], range(40000, 40010), strict=True))
    site = LocalSite(name, str(home), str(temp_dir), pid, ticks, ports, (20000, 20399), "", "t0k")
    local.site_dir(home, name).mkdir(parents=True)
    local.write_atomic(site.token_path, site.token, mode=0o600)
    local.save_state(site)
    return site


def dead_process() -> tuple[int, int]:
    """The pid and start ticks of a process that has exited (and been reaped)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"],
        stdin=subprocess.PIPE,
        start_new_session=True,
    )
    info = read_proc(proc.pid)
    proc.communicate(b"")
    assert info is not None
    return proc.pid, info.start_ticks


def test_free_ports_are_distinct_and_avoid_excluded():
    first = free_ports(10)
    assert len(set(first)) == 10
    again = free_ports(10, exclude=set(first))
    assert len(set(again)) == 10 and not set(again) & set(first)


def test_worker_range_avoids_claimed_and_busy_blocks():
    claimed = [(20000, 20399), (20500, 20600)]
    busy = {20900, 21555}  # in use by something that is not Ray
    # Blocks of 400 from 20000: 20000 and 20400 overlap claimed ranges, 20800 and 21200 are busy.
    first, last = pick_worker_range(
        claimed, size=400, lo=20000, hi=22000, is_free=lambda p: p not in busy
    )
    assert (first, last) == (21600, 21999)


def test_worker_range_picks_randomly_among_open_blocks():
    seen = {
        pick_worker_range([], size=100, lo=20000, hi=21000, is_free=lambda p: True)
        for _ in range(40)
    }
    assert len(seen) > 1 and all(last - first == 99 for first, last in seen)


def test_worker_range_raises_when_all_blocks_are_taken():
    with pytest.raises(SiteError, match="No free block of 400 worker ports"):
        pick_worker_range([(0, 65535)], size=400, lo=20000, hi=32000)


def test_port_options_reads_both_spellings():
    args = ["raylet", "--node_manager_port=5", "--min-worker-port", "7", "--max_worker_port=9"]
    args += ["--port", "11", "--temp-dir=/tmp/x", "--object-store-memory=3"]
    expected = {"node-manager-port": 5, "min-worker-port": 7, "max-worker-port": 9, "port": 11}
    assert port_options(args) == expected


def test_state_round_trip_keeps_the_token_out_of_site_json(tmp_path):
    site = make_site(tmp_path, 1, 2, tmp_path / "t")
    state = json.loads((local.site_dir(tmp_path, "fab-a") / "site.json").read_text())
    assert "token" not in state and "t0k" not in json.dumps(state)
    again = local.read_state("fab-a", tmp_path)
    assert again == site and again.token == "t0k"
    assert site.headers() == {"Authorization": "Bearer t0k"}
    assert site.dashboard_url == "http://127.0.0.1:40001"
    assert site.serve_url == "http://127.0.0.1:40009"
    assert site.metrics_url == "http://127.0.0.1:40005/metrics"
    assert not list(local.site_dir(tmp_path, "fab-a").glob(".*.tmp"))


def test_token_file_is_private_even_with_a_loose_umask(tmp_path):
    old = os.umask(0)
    try:
        local.write_atomic(tmp_path / "auth_token", "secret", mode=0o600)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "auth_token").stat().st_mode) == 0o600


@pytest.mark.parametrize("name", ["Fab-A", "fab_a", "-fab", "a" * 41, ""])
def test_bad_names_raise_site_error(tmp_path, name):
    with pytest.raises(SiteError, match="site name"):
        local.check_name(name)
    with pytest.raises(SiteError):
        load_site(name, tmp_path)


def test_unknown_site_is_not_running(tmp_path):
    with pytest.raises(SiteError, match="not running") as err:
        load_site("fab-a", tmp_path)
    assert "adcp site up fab-a" in str(err.value)
    assert stop_site("fab-a", tmp_path) is False
    assert list_sites(tmp_path) == []


def test_stale_state_with_dead_pid_is_cleaned(tmp_path):
    pid, ticks = dead_process()
    temp_dir = tmp_path / "adcp-fab-a-000000"
    temp_dir.mkdir()
    make_site(tmp_path, pid, ticks, temp_dir)
    assert list_sites(tmp_path) == []
    assert not temp_dir.exists()
    assert not (local.site_dir(tmp_path, "fab-a") / "site.json").exists()
    assert not (local.site_dir(tmp_path, "fab-a") / "auth_token").exists()


def test_stopping_a_dead_site_kills_its_leftovers(tmp_path, sleeper):
    temp_dir = tmp_path / "adcp-fab-a-111111"
    temp_dir.mkdir()
    pid, ticks = dead_process()
    orphan = sleeper({_ray_start.MARKER_ENV: str(temp_dir)})  # a worker that outlived its raylet
    site = make_site(tmp_path, pid, ticks, temp_dir)
    assert orphan.pid in local.site_processes(site)
    assert stop_site("fab-a", tmp_path, timeout_s=10) is True
    assert orphan.poll() is not None or read_proc(orphan.pid).state == "Z"
    assert local.site_processes(site) == [] and not temp_dir.exists()


def test_is_running_tells_a_reused_pid_apart(tmp_path, sleeper):
    proc = sleeper()
    info = read_proc(proc.pid)
    assert info is not None and info.sid == proc.pid
    site = make_site(tmp_path, proc.pid, info.start_ticks, tmp_path / "t")
    assert site.is_running() and load_site("fab-a", tmp_path) == site
    assert not LocalSite(**{**site.__dict__, "start_ticks": info.start_ticks - 1}).is_running()


def test_starting_a_running_site_says_how_to_stop_it(tmp_path, sleeper):
    proc = sleeper()
    make_site(tmp_path, proc.pid, read_proc(proc.pid).start_ticks, tmp_path / "t")
    with pytest.raises(SiteError, match="already running") as err:
        start_site(LocalSiteConfig(name="fab-a"), tmp_path)
    assert "adcp site down fab-a" in str(err.value)
    assert proc.poll() is None  # left alone


def test_early_exit_reports_the_log_tail_and_cleans_up(tmp_path, monkeypatch):
    fake = tmp_path / "ray"
    fake.write_text("#!/bin/sh\necho 'Failed to start the GCS: port 6379 in use' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setattr(_ray_start, "ray_executable", lambda: fake)
    with pytest.raises(SiteError, match="exited with code 3") as err:
        start_site(LocalSiteConfig(name="fab-z"), tmp_path, timeout_s=30)
    assert "port 6379 in use" in str(err.value)
    assert not (local.site_dir(tmp_path, "fab-z") / "site.json").exists()
    assert not any(
        p.cmdline[:1] == [str(fake)] or "adcp-fab-z-" in " ".join(p.cmdline) for p in processes()
    )
    assert not list(Path(local.TEMP_ROOT).glob("adcp-fab-z-*"))


def test_ray_command_names_every_port_and_the_config():
    cfg = LocalSiteConfig(
        name="fab-a", num_cpus=3, num_gpus=1, resources={"fab_a": 1.0}, object_store_mb=200
    )
    ports = dict(zip([*_ray_start.PORT_FLAGS, "serve-http"], free_ports(10), strict=True))
    cmd = _ray_start.ray_command(cfg, "/tmp/adcp-fab-a-abcdef", ports, (21000, 21399))
    assert cmd[0] == str(Path(sys.executable).with_name("ray"))
    assert cmd[1:4] == ["start", "--head", "--block"]
    opts = port_options(cmd)
    assert {opts[f] for f in _ray_start.PORT_FLAGS} == {ports[f] for f in _ray_start.PORT_FLAGS}
    assert opts["min-worker-port"] == 21000 and opts["max-worker-port"] == 21399
    for arg in [
        "--num-cpus=3",
        "--num-gpus=1",
        '--resources={"fab_a": 1.0}',
        f"--object-store-memory={200 * 2**20}",
        "--temp-dir=/tmp/adcp-fab-a-abcdef",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        "--include-dashboard=true",
    ]:
        assert arg in cmd
    plain = _ray_start.ray_command(LocalSiteConfig(name="fab-a"), "/tmp/x", ports, (1, 2))
    assert not [arg for arg in plain if arg.startswith("--resources")]


def test_object_store_is_capped_by_free_shared_memory():
    mib = 2**20
    assert _ray_start.object_store_bytes(200, None) == 200 * mib
    assert _ray_start.object_store_bytes(768, 500 * mib) == 500 * mib
    assert _ray_start.object_store_bytes(768, 10 * mib) == 768 * mib  # tiny /dev/shm: Ray uses disk
    assert _ray_start.object_store_bytes(100, 80 * mib) == 80 * mib


def test_ray_env_sets_this_sites_auth_and_drops_foreign_addresses(tmp_path):
    base = {"PATH": "/bin", "RAY_ADDRESS": "10.0.0.1:6379", "RAY_AUTH_TOKEN": "other"}
    env = _ray_start.ray_env(tmp_path / "auth_token", "/tmp/adcp-x", base)
    assert env["PATH"] == f"{Path(sys.executable).parent}:/bin"  # `python` in jobs is ours
    assert "RAY_ADDRESS" not in env and "RAY_AUTH_TOKEN" not in env
    assert env["RAY_AUTH_MODE"] == "token"
    assert env["RAY_AUTH_TOKEN_PATH"] == str(tmp_path / "auth_token")
    assert env["RAY_USAGE_STATS_ENABLED"] == "0"
    assert env[_ray_start.MARKER_ENV] == "/tmp/adcp-x"


def test_resources_keep_custom_names_the_dashboard_camel_cases():
    totals = {"CPU": 4.0, "memory": 8.0, "object_store_memory": 2.0, "fab_a": 1.0}
    totals |= {"node:127.0.0.1": 1.0, "node:__internal_head__": 1.0}
    usage = {"CPU": [1.5, 4.0], "objectStoreMemory": [0.5, 2.0], "fabA": [1.0, 1.0]}
    out = gateway.resources(totals, usage)
    assert out["total"] == {
        "CPU": 4.0, "GPU": 0.0, "memory": 8.0, "object_store_memory": 2.0, "custom": {"fab_a": 1.0}
    }  # fmt: skip
    assert out["available"] == {
        "CPU": 2.5, "GPU": 0.0, "memory": 8.0, "object_store_memory": 1.5, "custom": {"fab_a": 0.0}
    }  # fmt: skip


def test_status_of_an_unreachable_site_says_so(tmp_path):
    (port,) = free_ports(1)
    ports = dict.fromkeys([*_ray_start.PORT_FLAGS, "serve-http"], port)
    site = LocalSite("fab-a", str(tmp_path), "/tmp/x", 1, 0, ports, (1, 2), "", "t")
    answer = local.status(site, timeout_s=2)
    assert answer["reachable"] is False and answer["name"] == "fab-a" and answer["error"]


def test_start_site_tries_again_only_when_ray_exited_while_starting(monkeypatch, tmp_path):
    from configs.errors import SiteError
    from configs.models import LocalSiteConfig

    calls = []

    def once(cfg, home, *, timeout_s):
        calls.append(cfg.name)
        if len(calls) == 1:
            raise SiteError("Ray for site fab-a exited with code 1 while starting.", ray_exited=True)
        return "started"

    monkeypatch.setattr(local, "_start_once", once)
    assert local.start_site(LocalSiteConfig(name="fab-a"), tmp_path) == "started" and len(calls) == 2

    def not_ready(cfg, home, *, timeout_s):
        calls.append(cfg.name)
        raise SiteError("Site fab-a was not ready in time.")

    calls.clear()
    monkeypatch.setattr(local, "_start_once", not_ready)
    with pytest.raises(SiteError, match="not ready"):
        local.start_site(LocalSiteConfig(name="fab-a"), tmp_path)
    assert len(calls) == 1  # only Ray's own start-up failing is tried again
