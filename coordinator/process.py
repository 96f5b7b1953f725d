"""The coordinator and local sites as processes: `adcp up` starts the coordinator in the
background and waits until it answers with every local site ready; `adcp down` stops the local
sites and the coordinator by process id.

This module never opens the state DB: the coordinator process does that itself (it starts the
platform's local sites, `coordinator.server`), so the CLI stays a client of the API.

    <home>/coordinator/server.json   pid, start time and URL of the running coordinator
    <home>/coordinator/api_token     the bootstrap admin token (0600)
    <home>/platform.path             the platform file `adcp up` was given
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from configs.errors import NotFoundError, SiteError
from configs.platform import default_home, load_platform
from raycluster import free_ports, read_proc, stop_site, terminate

__all__ = ["PLATFORM_POINTER", "create_token", "down", "info_path", "log_path", "platform_file", "read_token",
           "running", "start", "stop", "token_path", "up"]

PLATFORM_POINTER = "platform.path"
_POLL_S = 0.2


def token_path(home: Path) -> Path:
    return Path(home) / "coordinator" / "api_token"


def create_token(home: Path) -> str:
    """A new bootstrap admin token in `<home>/coordinator/api_token`, readable by its owner only."""
    path = token_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.chmod(path, 0o600)
    return token


def read_token(home: Path) -> str:
    try:
        return token_path(home).read_text().strip()
    except FileNotFoundError:
        raise NotFoundError("The coordinator has no API token yet.", hint="Run `adcp up` first.") from None


def info_path(home: Path) -> Path:
    return Path(home) / "coordinator" / "server.json"


def log_path(home: Path) -> Path:
    return Path(home) / "coordinator" / "server.log"


def platform_file(home: Path, given: Path | None = None) -> Path | None:
    """The platform file: `given`, else $ADCP_PLATFORM, else the one `adcp up` recorded in `home`."""
    if given:
        return Path(given)
    if os.environ.get("ADCP_PLATFORM"):
        return Path(os.environ["ADCP_PLATFORM"])
    pointer = Path(home) / PLATFORM_POINTER
    return Path(pointer.read_text().strip()) if pointer.exists() else None


def _remember_platform(home: Path, path: Path | None) -> None:
    pointer = Path(home) / PLATFORM_POINTER
    Path(home).mkdir(parents=True, exist_ok=True)
    if path:
        pointer.write_text(str(Path(path).resolve()))
    elif pointer.exists():
        pointer.unlink()


def running(home: Path) -> dict[str, Any] | None:
    """The recorded coordinator if its process is still the one we started, else None."""
    try:
        info = json.loads(info_path(home).read_text())
    except (FileNotFoundError, ValueError):
        return None
    proc = read_proc(info["pid"])
    if proc is None or proc.state == "Z" or proc.start_ticks != info["start_ticks"]:
        return None
    return info


def start(home: Path, platform: Path | None = None, *, timeout_s: float = 240,
          on_event: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Start the coordinator in the background (a new session, so it outlives the CLI); it starts
    the platform's local sites itself. Wait until its API answers and reports every local site
    ready; return its info. A running coordinator is returned as it is."""
    home = Path(home)
    info = running(home)
    if info is not None:
        return info
    api = load_platform(platform, home).center.api
    if not token_path(home).exists():
        create_token(home)
    token = read_token(home)
    port = api.port or free_ports(1)[0]
    log = log_path(home)
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "coordinator.server", "--home", str(home), "--host", api.host, "--port", str(port)]
    if platform:
        cmd += ["--platform", str(Path(platform).resolve())]
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=str(Path(__file__).resolve().parent.parent))
    url = f"http://{api.host}:{port}"
    ticks = read_proc(proc.pid).start_ticks
    info_path(home).write_text(json.dumps({"pid": proc.pid, "start_ticks": ticks, "url": url, "log": str(log)}))
    deadline = time.monotonic() + timeout_s
    said: set[str] = set()
    while True:
        if proc.poll() is not None:
            info_path(home).unlink(missing_ok=True)
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise SiteError(f"The coordinator exited with code {proc.returncode}: {' | '.join(tail)}",
                            hint=f"See {log}.")
        try:
            r = httpx.get(f"{url}/api/v1/local-sites", headers={"Authorization": f"Bearer {token}"}, timeout=2)
            if r.status_code == 200:
                body = r.json()
                for name, s in body["sites"].items():
                    if s["state"] in ("running", "failed") and name not in said:
                        said.add(name)
                        on_event(f"site {name}: " + (f"dashboard {s['dashboard']}, serve {s['serve']}"
                                                     if s["state"] == "running" else f"failed: {s['error']}"))
                if body["ready"]:
                    failed = {n: s["error"] for n, s in body["sites"].items() if s["state"] == "failed"}
                    if failed:
                        raise SiteError("Some local sites did not start: "
                                        + "; ".join(f"{n}: {e}" for n, e in failed.items()),
                                        hint="`adcp down` stops what did start.")
                    break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            info_path(home).unlink(missing_ok=True)
            raise SiteError(f"The coordinator did not become ready at {url} within {timeout_s:.0f} s.",
                            hint=f"See {log}.")
        time.sleep(_POLL_S)  # poll interval of a deadline-bounded wait
    return json.loads(info_path(home).read_text())


def stop(home: Path, timeout_s: float = 20) -> bool:
    """Stop the recorded coordinator by pid. True if it was running."""
    info = running(home)
    info_path(home).unlink(missing_ok=True)
    if info is None:
        return False

    def find():
        proc = read_proc(info["pid"])
        return [proc] if proc and proc.state != "Z" and proc.start_ticks == info["start_ticks"] else []

    _, left = terminate(find, info["pid"], timeout_s)
    return not left


def up(home: Path | None, platform: Path | None = None,
       on_event: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Start the coordinator (which starts every local site); return its info plus
    `token_file` and `sites` (the local ones) once all are ready."""
    home = Path(home or default_home()).resolve()
    _remember_platform(home, platform)
    cfg = load_platform(platform, home)
    info = start(home, platform, on_event=on_event)
    return {**info, "api_url": info["url"], "token_file": str(token_path(home)),
            "sites": [s.name for s in cfg.sites if s.local]}


def down(home: Path | None, on_event: Callable[[str], None] = lambda _: None) -> None:
    """Stop every local site of `home` and the coordinator, by process id."""
    home = Path(home or default_home()).resolve()
    names = sorted(p.parent.name for p in (home / "sites").glob("*/site.json"))
    if names:
        with ThreadPoolExecutor(max_workers=len(names)) as pool:
            stopped = dict(zip(names, pool.map(lambda n: stop_site(n, home), names)))
        for name, was in stopped.items():
            on_event(f"site {name} {'stopped' if was else 'was not running'}")
    on_event("coordinator " + ("stopped" if stop(home) else "was not running"))
