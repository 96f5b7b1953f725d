"""The coordinator process: `adcp up` starts it in the background, `adcp down` stops it by pid.

    python -m coordinator.server --home H [--platform FILE] --port P

It serves `coordinator.api.app` with uvicorn on 127.0.0.1 (or the configured host). Its pid, start
time and URL go to `<home>/coordinator/server.json`, so `adcp down` stops exactly that process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import httpx

from configs.errors import AdcpError, SiteError
from configs.platform import SiteConfig
from coordinator.center.core import Center, create_token, read_token, token_path
from raycluster import LocalSite, free_ports, read_proc, start_site, stop_site, terminate
from raycluster.local import read_state

_POLL_S = 0.2


def info_path(home: Path) -> Path:
    return home / "coordinator" / "server.json"


def log_path(home: Path) -> Path:
    return home / "coordinator" / "server.log"


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


def start(home: Path, platform_file: Path | None = None, *, timeout_s: float = 60) -> dict[str, Any]:
    """Start the coordinator in the background (a new session, so it outlives the CLI), wait until
    its API answers with the token, and return its info. A running one is returned as it is."""
    info = running(home)
    if info is not None:
        return info
    center = Center.open(home, platform_file)
    api = center.config.center.api
    center.close()
    if not token_path(home).exists():
        create_token(home)
    token = read_token(home)
    port = api.port or free_ports(1)[0]
    log = log_path(home)
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "coordinator.server", "--home", str(home), "--host", api.host, "--port", str(port)]
    if platform_file:
        cmd += ["--platform", str(Path(platform_file).resolve())]
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=str(Path(__file__).resolve().parent.parent))
    url = f"http://{api.host}:{port}"
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise SiteError(f"The coordinator exited with code {proc.returncode}: {' | '.join(tail)}",
                            hint=f"See {log}.")
        try:
            r = httpx.get(f"{url}/api/v1/sites", params={"live": "false"},
                          headers={"Authorization": f"Bearer {token}"}, timeout=2)
            if r.status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise SiteError(f"The coordinator did not answer at {url} within {timeout_s:.0f} s.", hint=f"See {log}.")
        time.sleep(_POLL_S)  # poll interval of a deadline-bounded wait
    ticks = read_proc(proc.pid).start_ticks
    info = {"pid": proc.pid, "start_ticks": ticks, "url": url, "log": str(log)}
    info_path(home).write_text(json.dumps(info))
    return info


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


def up(home: Path, platform_file: Path | None = None,
       on_event: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Start the coordinator and every local site (concurrently); return once all are ready.
    Sites already running are left as they are."""
    center = Center.open(home, platform_file)
    center.remember_platform_file(platform_file)
    local = center.local_sites()
    center.close()
    info = start(home, platform_file)
    on_event(f"coordinator at {info['url']} (pid {info['pid']})")

    def one(site: SiteConfig) -> LocalSite:
        existing = read_state(site.name, home)
        if existing is not None and existing.is_running():
            return existing
        return start_site(site.local_config(), home)

    with ThreadPoolExecutor(max_workers=max(1, len(local))) as pool:
        futures = {s.name: pool.submit(one, s) for s in local}
    errors = []
    for name, f in futures.items():
        try:
            s = f.result()
            on_event(f"site {name}: dashboard {s.dashboard_url}, serve {s.serve_url}")
        except AdcpError as e:
            errors.append(f"{name}: {e}")
    if errors:
        raise SiteError("Some local sites did not start: " + "; ".join(errors),
                        hint="`adcp down` stops what did start.")
    return {**info, "sites": list(futures)}


def down(home: Path, on_event: Callable[[str], None] = lambda _: None) -> None:
    """Stop every local site and the coordinator, by process id."""
    center = Center.open(home)
    names = [s.name for s in center.local_sites()]
    center.close()
    names += [p.parent.name for p in (home / "sites").glob("*/site.json") if p.parent.name not in names]
    with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
        stopped = dict(zip(names, pool.map(lambda n: stop_site(n, home), names)))
    for name, was in stopped.items():
        on_event(f"site {name} {'stopped' if was else 'was not running'}")
    on_event("coordinator " + ("stopped" if stop(home) else "was not running"))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m coordinator.server")
    p.add_argument("--home", type=Path, required=True)
    p.add_argument("--platform", type=Path, default=None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args(argv)
    import uvicorn

    from configs.loader import load_defaults
    from coordinator.api.app import create_app
    from coordinator.jobs.runner import Trainer

    center = Center.open(args.home, args.platform)
    center.state.fail_orphaned_transfers()
    defaults = load_defaults()

    def deploy(ref: str, site: str) -> dict[str, Any]:
        from coordinator.jobs import rollout

        return rollout.deploy(center, ref, [site], defaults.serve)[0]

    trainer = Trainer(center, defaults, deploy)
    picked_up = trainer.resume_active()
    if picked_up:
        print(f"following jobs left running: {', '.join(picked_up)}", flush=True)
    app = create_app(center, read_token(args.home), trainer)
    print(f"coordinator pid {os.getpid()} serving on http://{args.host}:{args.port}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
