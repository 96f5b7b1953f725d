"""The `ray start` command line and environment of a local site (pure functions, no Ray)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

from configs.models import LocalSiteConfig

# Every port `ray start` would otherwise pick itself (some of them fixed, like 6379 and 8265, so
# that a second cluster on the machine would collide with the first).
PORT_FLAGS = (
    "port",
    "dashboard-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "ray-client-server-port",
    "metrics-export-port",
    "node-manager-port",
    "object-manager-port",
    "runtime-env-agent-port",
)
# Set in the Ray processes' environment and inherited by workers and job drivers, which rename
# themselves (`ray::...`) or start their own sessions: the one mark every process of a site has.
MARKER_ENV = "ADCP_SITE_TEMP_DIR"
# On SIGTERM `ray start` drains the node before stopping; Ray's default waits up to 30 s. An idle
# local node drains at once, and a busy one should not hold `adcp site down` for long.
DRAIN_S = 5
RAY_MIN_OBJECT_STORE = 75 * 2**20  # Ray refuses a smaller object store


def object_store_bytes(mb: int, shm_free: int | None) -> int:
    """The object store size: `mb` MiB, capped by what /dev/shm has free (else Ray uses disk)."""
    want = mb * 2**20
    if shm_free is not None and shm_free >= RAY_MIN_OBJECT_STORE:
        want = min(want, shm_free)
    return max(want, RAY_MIN_OBJECT_STORE)


def ray_executable() -> Path:
    """The `ray` script of the running interpreter's environment (not whatever is on PATH)."""
    return Path(sys.executable).with_name("ray")


def ray_command(
    cfg: LocalSiteConfig, temp_dir: str, ports: Mapping[str, int], workers: tuple[int, int]
) -> list[str]:
    """The `ray start --head --block` command line for a site.

    `--node-ip-address=127.0.0.1` keeps the dashboard and agents on loopback; Ray still replaces
    127.0.0.1 with the machine's address for the GCS and raylet, which listen on all addresses.
    """
    try:
        shm_free: int | None = shutil.disk_usage("/dev/shm").free
    except OSError:
        shm_free = None
    cmd = [str(ray_executable()), "start", "--head", "--block", f"--temp-dir={temp_dir}"]
    cmd += ["--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1"]
    cmd += ["--include-dashboard=true", "--disable-usage-stats"]
    cmd += [f"--{flag}={ports[flag]}" for flag in PORT_FLAGS]
    cmd += [f"--min-worker-port={workers[0]}", f"--max-worker-port={workers[1]}"]
    cmd += [f"--num-cpus={cfg.num_cpus}", f"--num-gpus={cfg.num_gpus}"]
    cmd += [f"--object-store-memory={object_store_bytes(cfg.object_store_mb, shm_free)}"]
    if cfg.resources:
        cmd += [f"--resources={json.dumps(cfg.resources)}"]
    return cmd


def ray_env(
    token_path: Path, temp_dir: str, base: Mapping[str, str] = os.environ
) -> dict[str, str]:
    """The environment of a site's Ray processes: `base` plus this site's auth and marker.

    RAY_ADDRESS would point the site's own jobs at another cluster, and RAY_AUTH_TOKEN would win
    over RAY_AUTH_TOKEN_PATH, so neither is inherited. The environment's bin dir goes first on
    PATH, so that `python` in a job's entrypoint is the interpreter Ray runs in (with Ray and this
    project installed), even when the caller's venv is not activated.
    """
    env = {k: v for k, v in base.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    bin_dir = str(ray_executable().parent)
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != bin_dir]
    env["PATH"] = os.pathsep.join([bin_dir, *path])
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token_path),
        RAY_USAGE_STATS_ENABLED="0",
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=str(DRAIN_S),
    )
    env[MARKER_ENV] = temp_dir
    return env
