"""Local Ray heads for sites (the embedded default): start, stop, find and inspect them.

Each site runs `ray start --head --block` in its own process session, with its own short temp
dir, ports, worker-port range and auth token, so several sites (and other people's Ray clusters)
coexist on one machine. A site's state lives in `<home>/sites/<name>/site.json`.

Token auth, measured on Ray 2.60: the dashboard HTTP API (`/api/version`, the jobs API,
`/api/cluster_status`) answers 401 without a token and 403 with a wrong one; it accepts
`Authorization: Bearer <token>` or, behind a proxy that eats that header,
`X-Ray-Authorization: Bearer <token>`. The Serve HTTP proxy does NOT check the token: anyone who
can reach `serve_url` can call the apps, which is why it is reserved on 127.0.0.1. Ray's
Prometheus endpoint (`metrics_url`) is open as well. Drivers that connect to `gcs_address` need
`RAY_AUTH_MODE=token` and `RAY_AUTH_TOKEN_PATH` (jobs submitted through the dashboard inherit them).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from configs.errors import SiteError
from configs.models import LocalSiteConfig
from raycluster._machine import (
    Proc,
    claimed_by_ray,
    free_ports,
    pick_worker_range,
    processes,
    read_proc,
    terminate,
)
from raycluster._ray_start import MARKER_ENV, PORT_FLAGS, ray_command, ray_env, ray_executable
from raycluster.gateway import DirectGateway, site_status

__all__ = [
    "TEMP_ROOT",
    "WORKER_BLOCK",
    "LocalSite",
    "check_name",
    "list_sites",
    "load_site",
    "read_state",
    "running_site",
    "save_state",
    "site_dir",
    "site_processes",
    "start_site",
    "status",
    "stop_site",
    "write_atomic",
]

# Short on purpose: Ray puts unix sockets under `<temp>/session_<40 chars>/sockets/` and a socket
# path may not exceed 107 characters, so neither a deep home nor $TMPDIR will do.
TEMP_ROOT = "/tmp"
# Held from picking ports until `ray start` runs, so that a concurrent start finds the ports in
# that process's command line (claimed_by_ray). Per user, so another user's file cannot block us.
_LOCK_PATH = Path(TEMP_ROOT) / f"adcp-ray-ports-{os.getuid()}.lock"
# Worker ports: one per worker process. A small site running Train, Data and Serve uses well under
# 100; 400 leaves room and still gives 30 blocks between Ray's default range (10002-19999) and
# Linux's ephemeral range (32768+), where port-0 binds never land.
WORKER_BLOCK = 400
_WORKER_LO, _WORKER_HI = 20000, 32000
_POLL_S = 0.25
_children: dict[int, subprocess.Popen[bytes]] = {}  # `ray start` processes we must reap


@dataclass(frozen=True)
class LocalSite:
    """A handle on a local site, as recorded in its `site.json` (running or not)."""

    name: str
    home: str
    temp_dir: str
    pid: int  # of `ray start --block`; also its process group and session id
    start_ticks: int  # its start time, which tells it from a later process with the same pid
    ports: dict[str, int]  # `ray start` flag (without "--") -> port, plus "serve-http"
    worker_ports: tuple[int, int]
    gcs_address: str = ""
    token: str = field(default="", repr=False, compare=False)  # lives in auth_token, not site.json

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['dashboard-port']}"

    @property
    def serve_url(self) -> str:
        """Reserved for Serve: `serve.start(http_options={"host": "127.0.0.1", "port": ...})`."""
        return f"http://127.0.0.1:{self.ports['serve-http']}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['metrics-export-port']}/metrics"

    @property
    def token_path(self) -> Path:
        return site_dir(Path(self.home), self.name) / "auth_token"

    def headers(self) -> dict[str, str]:
        """HTTP headers that authenticate to the site's dashboard (and jobs API)."""
        return {"Authorization": f"Bearer {self.token}"}

    def is_running(self) -> bool:
        """True while the site's `ray start` process is alive (a zombie counts as dead)."""
        proc = read_proc(self.pid)
        return proc is not None and proc.state != "Z" and proc.start_ticks == self.start_ticks

    def to_json(self) -> dict[str, Any]:
        state = asdict(self)
        del state["token"]
        return state

    @classmethod
    def from_json(cls, state: Mapping[str, Any], token: str = "") -> LocalSite:
        fields = dict(state)
        fields["worker_ports"] = tuple(fields["worker_ports"])
        return cls(**fields, token=token)


def site_dir(home: Path, name: str) -> Path:
    return Path(home) / "sites" / name


def check_name(name: str) -> str:
    """Return `name` if it is a valid site name; raise SiteError saying what is allowed if not."""
    try:
        LocalSiteConfig(name=name)
    except ValidationError as e:
        raise SiteError(str(e.errors()[0]["msg"]).removeprefix("Value error, "), name=name) from e
    return name


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Write `text` to `path` via a temp file and os.replace: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have dropped bits we asked for
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_state(site: LocalSite) -> None:
    write_atomic(site_dir(Path(site.home), site.name) / "site.json", json.dumps(site.to_json()))


def read_state(name: str, home: Path) -> LocalSite | None:
    """The recorded site (with its token), or None when there is no state file."""
    d = site_dir(home, check_name(name))
    try:
        state = json.loads((d / "site.json").read_text())
        token = (d / "auth_token").read_text().strip() if (d / "auth_token").exists() else ""
        return LocalSite.from_json(state, token)
    except FileNotFoundError:
        return None
    except (TypeError, KeyError, ValueError) as e:
        raise SiteError(
            f"The state file of site {name} is not one this version wrote: {e}.",
            hint=f"Stop its processes by hand (see `ps`), then delete {d / 'site.json'}.",
            name=name,
        ) from e


# --- processes ---------------------------------------------------------------------------------


def _site_procs(site: LocalSite) -> list[Proc]:
    """Live processes of a site: in its session, naming its temp dir, or carrying its mark."""
    found = []
    for proc in processes():
        if proc.pid == os.getpid():
            continue
        if site.temp_dir in " ".join(proc.cmdline) or (proc.start_ticks >= site.start_ticks and (
            proc.sid == site.pid or proc.environ().get(MARKER_ENV) == site.temp_dir
        )):
            found.append(proc)
    return found


def site_processes(site: LocalSite) -> list[int]:
    """Pids of live processes that belong to `site`; empty once it is fully stopped."""
    return [p.pid for p in _site_procs(site)]


def _terminate(site: LocalSite, timeout_s: float) -> bool:
    """Stop every process of `site`. True if any was running; SiteError if some survive SIGKILL."""

    def reap() -> None:  # collect our own `ray start` child, which would linger as a zombie
        child = _children.get(site.pid)
        if child is not None and child.poll() is not None:
            del _children[site.pid]

    # SIGTERM to `ray start` alone: it drains the node, then stops its children in order. A
    # SIGTERM to the whole group kills the GCS first, and `ray start` then waits out its drain.
    leader = site.pid if site.is_running() else None
    found, left = terminate(lambda: _site_procs(site), leader, timeout_s, reap=reap)
    if left:
        raise SiteError(
            f"Site {site.name} still has processes after SIGKILL: {[p.pid for p in left]}.",
            hint="Check them with `ps` and kill them by pid.",
            name=site.name,
        )
    return found


def _clean(site: LocalSite, timeout_s: float) -> bool:
    """Stop what is left of `site`, remove its temp dir, token and state. True if it stopped any."""
    stopped = _terminate(site, timeout_s)
    shutil.rmtree(site.temp_dir, ignore_errors=True)
    d = site_dir(Path(site.home), site.name)
    (d / "auth_token").unlink(missing_ok=True)
    (d / "site.json").unlink(missing_ok=True)
    return stopped


# --- lifecycle ---------------------------------------------------------------------------------


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _pending(site: LocalSite, client: httpx.Client, num_cpus: int) -> str | None:
    """What the site still lacks before it can take jobs, or None when it is ready.

    Ready means: the dashboard answers with the token, the jobs API lists jobs, and the cluster
    reports the node's CPUs (so the raylet has registered and a job's `ray.init()` finds them).
    """
    try:
        for path in ("/api/version", "/api/jobs/"):
            answer = client.get(path)
            if answer.status_code != 200:
                return f"GET {path} (HTTP {answer.status_code})"
        report = client.get("/api/cluster_status", params={"format": "0"}).json()
        usage = report["data"]["clusterStatus"]["loadMetricsReport"]["usage"]
    except httpx.HTTPError as e:
        return f"the dashboard ({type(e).__name__})"
    except (ValueError, KeyError, TypeError):
        return "the cluster's resources in /api/cluster_status"
    if usage.get("CPU", [0, 0])[1] != num_cpus:
        return f"{num_cpus} CPUs in /api/cluster_status"
    if not Path(site.temp_dir, "ray_current_cluster").exists():
        return "the GCS address in ray_current_cluster"
    return None


log = logging.getLogger("adcp.raycluster")

#: Tries of `ray start` per site start. Ray's own node start-up gives up after a fixed time
#: ("The current node timed out during startup") when the machine is busy, e.g. two heads
#: starting at once on 2 cores; the failed try is cleaned up, so one more is cheap.
START_TRIES = 2


def start_site(cfg: LocalSiteConfig, home: Path, *, timeout_s: float = 90, tries: int = START_TRIES) -> LocalSite:
    """Start a site's Ray head and return once it accepts jobs; when `ray start` itself exits
    while starting, try again (`tries` in all).

    Raises SiteError if the site is already running, if Ray exits early every time (with the tail
    of its log) or if it is not ready within `timeout_s` (then it is stopped again).
    """
    for attempt in range(1, tries + 1):
        try:
            return _start_once(cfg, home, timeout_s=timeout_s)
        except SiteError as e:
            if attempt == tries or not e.details.get("ray_exited"):
                raise
            log.warning("Ray for site %s exited while starting (try %d of %d); trying again", cfg.name, attempt, tries)
    raise AssertionError("unreachable")  # the loop returns or raises


def _start_once(cfg: LocalSiteConfig, home: Path, *, timeout_s: float) -> LocalSite:
    home = Path(home).absolute()  # recorded in site.json: later calls may run elsewhere
    d = site_dir(home, check_name(cfg.name))
    d.mkdir(parents=True, exist_ok=True)
    log_path = d / "ray-start.log"
    with open(_LOCK_PATH, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old = read_state(cfg.name, home)
        if old is not None and old.is_running():
            raise SiteError(
                f"Site {cfg.name} is already running (dashboard {old.dashboard_url}).",
                hint=f"Stop it first: `adcp site down {cfg.name}`.",
                name=cfg.name,
            )
        if old is not None:
            _clean(old, timeout_s=30)
        claimed_ports, claimed_ranges = claimed_by_ray()
        ports = dict(zip([*PORT_FLAGS, "serve-http"], free_ports(10, claimed_ports), strict=True))
        workers = pick_worker_range(
            claimed_ranges, size=WORKER_BLOCK, lo=_WORKER_LO, hi=_WORKER_HI
        )
        token = secrets.token_hex(32)
        token_path = d / "auth_token"
        write_atomic(token_path, token, mode=0o600)
        temp_dir = _make_temp_dir(cfg.name)
        try:
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(
                    ray_command(cfg, temp_dir, ports, workers),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=ray_env(token_path, temp_dir),
                    start_new_session=True,
                )
        except OSError as e:
            shutil.rmtree(temp_dir, ignore_errors=True)
            raise SiteError(
                f"Could not run `ray start` for site {cfg.name}: {e}.",
                hint=f"Install Ray next to {ray_executable().parent}: pip install 'ray[default]'.",
                name=cfg.name,
            ) from e
        _children[proc.pid] = proc
        leader = read_proc(proc.pid)  # None if already gone: _wait_ready says why
        ticks = leader.start_ticks if leader else 0
        site = LocalSite(cfg.name, str(home), temp_dir, proc.pid, ticks, ports, workers, "", token)
        save_state(site)
    try:
        return _wait_ready(site, proc, cfg.num_cpus, timeout_s, log_path)
    except BaseException:
        _clean(site, timeout_s=30)
        raise


def _make_temp_dir(name: str) -> str:
    while True:  # 6 random hex characters keep the path short; retry on the rare collision
        path = Path(TEMP_ROOT) / f"adcp-{name[:20]}-{secrets.token_hex(3)}"
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700)
            return str(path)


def _wait_ready(
    site: LocalSite, proc: subprocess.Popen[bytes], num_cpus: int, timeout_s: float, log: Path
) -> LocalSite:
    deadline = time.monotonic() + timeout_s
    pending: str | None = "ray start"
    with httpx.Client(base_url=site.dashboard_url, headers=site.headers(), timeout=5) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SiteError(
                    f"Ray for site {site.name} exited with code {proc.returncode} while starting."
                    f" Last lines of {log}:\n{_tail(log)}",
                    name=site.name, ray_exited=True,
                )
            pending = _pending(site, client, num_cpus)
            if pending is None:
                gcs = Path(site.temp_dir, "ray_current_cluster")
                ready = replace(site, gcs_address=gcs.read_text().strip())
                save_state(ready)
                return ready
            time.sleep(_POLL_S)
    raise SiteError(
        f"Site {site.name} was not ready within {timeout_s:.0f} s (waiting for {pending})."
        f" Last lines of {log}:\n{_tail(log)}",
        hint="The machine may be busy: retry with a longer timeout.",
        name=site.name,
    )


def stop_site(name: str, home: Path, *, timeout_s: float = 30) -> bool:
    """Stop a site, remove its temp dir and state. True if any of its processes were running."""
    site = read_state(name, home)
    return False if site is None else _clean(site, timeout_s)


def load_site(name: str, home: Path) -> LocalSite:
    """The running site `name`; SiteError if it is unknown or stopped (stale state is cleaned)."""
    site = read_state(name, home)
    if site is not None and site.is_running():
        return site
    if site is not None:
        _clean(site, timeout_s=30)
    raise SiteError(
        f"Site {name} is not running under {home}.",
        hint=f"Start it: `adcp site up {name}`.",
        name=name,
    )


def list_sites(home: Path) -> list[LocalSite]:
    """The running sites under `home`, by name; stale state files are cleaned on the way."""
    sites = []
    for state in sorted(Path(home, "sites").glob("*/site.json")):
        site = read_state(state.parent.name, home)
        if site is not None and site.is_running():
            sites.append(site)
        elif site is not None:
            _clean(site, timeout_s=30)
    return sites


@contextlib.contextmanager
def running_site(
    cfg: LocalSiteConfig, home: Path, *, timeout_s: float = 90
) -> Iterator[LocalSite]:
    """Run a site for the duration of a `with` block (a test fixture's body), then stop it."""
    site = start_site(cfg, home, timeout_s=timeout_s)
    try:
        yield site
    finally:
        stop_site(site.name, home)


# --- status ------------------------------------------------------------------------------------


def status(site: LocalSite, *, timeout_s: float = 5) -> dict[str, Any]:
    """Whether a site's dashboard answers, its Ray version, resources, jobs and Serve apps (never
    raises): the gateway's status of a direct gateway to this site."""
    return site_status(DirectGateway(site.name, {"dashboard": site.dashboard_url}, site.token), timeout_s=timeout_s)
