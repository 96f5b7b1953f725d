"""Monitoring at scale: one collection sweep over 100 simulated sites with 10 dead, the process's
RSS, and `GET /api/v1/overview` latency with 100 sites.

    .venv/bin/python bench/bench_monitoring.py [--sites 100] [--dead 10] [--sweeps 10] [--requests 200]

Sites are `tests.sim_sites` servers in this process (Ray-format metrics text); the API is the
coordinator's app served by uvicorn on 127.0.0.1 (a free port) and called over HTTP. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--sites", type=int, default=100)
    p.add_argument("--dead", type=int, default=10)
    p.add_argument("--sweeps", type=int, default=10)
    p.add_argument("--in-process", action="store_true",
                   help="run the simulated sites in this process (they then share its GIL with the coordinator)")
    p.add_argument("--requests", type=int, default=200)
    args = p.parse_args(argv)

    import httpx
    import uvicorn

    from configs.platform import PlatformConfig
    from coordinator.api.app import create_app
    from coordinator.center.core import Center
    from coordinator.monitoring.monitor import Monitor
    from tests.serve_fixtures import free_port
    from tests.sim_sites import RemoteSimSites, SimSites, register

    root = Path(tempfile.mkdtemp(prefix="bench-mon-"))
    cfg = PlatformConfig.model_validate({"center": {"state_db": str(root / "c.db"), "store": {"url": str(root / "s")}}})
    center = Center(cfg, root)
    modes = {f"sim-{i:03d}": "dead" if i < args.dead else "ok" for i in range(args.sites)}
    rss_start = rss_mb()
    with (SimSites(modes) if args.in_process else RemoteSimSites(modes)) as sim:
        register(center, sim, str(root / "stores"))
        monitor = Monitor(center)
        first = monitor.sweep()["seconds"]
        sweeps = [monitor.sweep()["seconds"] for _ in range(args.sweeps)]
        rss_after_sweeps = rss_mb()
        port = free_port()
        app = create_app(center, "bench", monitor=monitor)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        lat = []
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": "Bearer bench"}) as c:
            deadline = time.monotonic() + 30
            while not server.started and time.monotonic() < deadline:
                time.sleep(0.05)  # poll of a deadline-bounded wait for uvicorn to listen
            body = c.get("/api/v1/overview").content
            for _ in range(args.requests):
                t0 = time.perf_counter()
                c.get("/api/v1/overview").raise_for_status()
                lat.append((time.perf_counter() - t0) * 1000)
        server.should_exit = True
        thread.join(timeout=20)
        rss_end = rss_mb()
    lat.sort()
    out = {"sites": args.sites, "dead": args.dead,
           "first_sweep_s": round(first, 3), "sweep_s_median": round(statistics.median(sweeps), 3),
           "sweep_s_max": round(max(sweeps), 3),
           "rss_mb": {"start": round(rss_start, 1), "after_sweeps": round(rss_after_sweeps, 1),
                      "end": round(rss_end, 1)},
           "overview_bytes": len(body), "overview_ms": {"p50": round(lat[len(lat) // 2], 2),
                                                        "p99": round(lat[int(len(lat) * 0.99) - 1], 2)}}
    print(json.dumps(out, indent=2))
    center.close()
    return out


if __name__ == "__main__":
    main()
