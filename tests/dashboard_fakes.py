"""A stand-in for `coordinator.monitoring.Monitor` in dashboard tests: the documented bodies of
`overview`, `series`, `alerts` and `logs` for any number of made-up sites, no scraping; its
`quality` is a real `QualityCollector` when one is given (reading fake review stations), else
made-up figures of the same shape."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

from configs.errors import NotFoundError

GIB = 1024**3
_SPARK = ("cpu_util", "mem_used", "disk_used", "net_rx_bps", "net_tx_bps", "gpu_util")


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat()


class FakeQuality:
    """Made-up quality figures per site, in `QualityCollector.report` / `decorate`'s shapes."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.read_at = time.time()  # every made-up site was "read" once, now

    def _site(self, i: int, name: str) -> dict[str, Any]:
        by = [{"product": "p1", "product_display_name": "p1", "model_version": f"adc-aoi@{i}", "classified": 800 + i,
               "automatic": 740, "review": 60 + i, "audited_defect": 120, "overkill": 2, "audited_false_defect": 400,
               "escapes": 1, "backlog": 5, "oldest_age_s": 90.0}]
        figs = {k: by[0][k] for k in ("classified", "automatic", "review", "audited_defect", "overkill",
                                      "audited_false_defect", "escapes", "backlog", "oldest_age_s")}
        figs.update(automation_rate=figs["automatic"] / figs["classified"], escape_rate=1 / 400,
                    overkill_rate=2 / 120)
        for g in by:
            g.update({k: figs[k] for k in ("automation_rate", "escape_rate", "overkill_rate")})
        return {"site": name, "display_name": name, **figs, "stale": False, "error": None,
                "updated_at": _iso(self.read_at), "by": by}

    def report(self, site: str | None = None) -> dict[str, Any]:
        return {"sites": [self._site(i, n) for i, n in enumerate(self.names) if site in (None, n)]}

    def decorate(self, bodies: list[dict[str, Any]], sites: Any = None) -> None:
        figures = {s["site"]: s for s in self.report()["sites"]}
        for body in bodies:
            body["display_name"] = body["name"]
            body["quality"] = {k: v for k, v in figures[body["name"]].items() if k != "by"}


class FakeMonitor:
    """Sites `site-000`... (or the names given); every 10th site is down, every 7th warns.
    `calls` records each call as (method, args) so tests can check what the routes asked for."""

    def __init__(self, names: list[str] | None = None, n: int = 2, interval_s: float = 1.0,
                 quality: Any = None) -> None:
        self.names = names or [f"site-{i:03d}" for i in range(n)]
        self.interval_s = interval_s
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.sweeps = 0  # the API's overview route keys its cache on it
        self.quality = quality or FakeQuality(self.names)

    def _health(self, i: int) -> str:
        return "down" if i % 10 == 9 else "warn" if i % 7 == 6 else "ok"

    def _site(self, i: int, name: str, now: float) -> dict[str, Any]:
        health = self._health(i)
        gpus = 2 if i % 2 else 0
        latest = {"cpu_util": 10.0 + i % 80, "mem_used": (4 + i % 8) * GIB, "mem_total": (16 + i) * GIB,
                  "disk_used": 100 * GIB, "disk_total": 500 * GIB, "net_rx_bps": 1e6 * (1 + i % 5),
                  "net_tx_bps": 2e5, "gpu_util": 55.0 if gpus else None, "gpu_mem_used": 3 * GIB if gpus else None,
                  "gpu_mem_total": 16 * GIB * gpus if gpus else None, "object_store_used": GIB,
                  "inference_rps": 12.5, "images_total": 1000 + i, "automation_rate": 0.9, "review_share": 0.1,
                  "error_rate": 0.0, "latency_p50_ms": 8.0, "latency_p99_ms": 30.0}
        spark = {k: [[now - 5 * (20 - j), (latest[k] or 0) * (0.8 + 0.01 * j)] for j in range(20)]
                 for k in _SPARK if latest[k] is not None}
        return {"name": name, "health": health, "reachable": health != "down",
                "last_ok": _iso(now - (120 if health == "down" else 1)), "age_s": 120.0 if health == "down" else 1.0,
                "error": "connection refused" if health == "down" else None, "latest": latest, "spark": spark,
                "jobs": {"running": i % 3, "total": i % 3 + 2},
                "serve": {"status": "RUNNING", "apps": {"adc": "RUNNING"}, "replicas_healthy": 1, "replicas_total": 1},
                "model_version": f"adc-aoi@{i}", "defect_mix": {"particle": 3 + i % 4, "scratch": 2, "stain": 1},
                "automation_rate": 0.9, "dashboard_url": f"http://127.0.0.1:1/{name}/"}

    def overview(self) -> dict[str, Any]:
        self.calls.append(("overview", ()))
        now = time.time()
        sites = [self._site(i, n, now) for i, n in enumerate(self.names)]
        self.quality.decorate(sites)
        down = sum(s["health"] == "down" for s in sites)
        warn = sum(s["health"] == "warn" for s in sites)
        return {"generated_at": _iso(now), "interval_s": self.interval_s,
                "totals": {"sites": len(sites), "up": len(sites) - down, "down": down, "warn": warn,
                           "jobs_running": sum(s["jobs"]["running"] for s in sites), "inference_rps": 12.5 * len(sites),
                           "images_total": sum(s["latest"]["images_total"] for s in sites),
                           "gpus_total": 2 * sum(1 for i in range(len(sites)) if i % 2), "alerts_active": down},
                "alerts": self.alerts(), "sites": sites}

    def _index(self, site: str) -> int:
        if site not in self.names:
            raise NotFoundError(f"No site {site}.", allowed=", ".join(self.names[:5]))
        return self.names.index(site)

    def series(self, site: str, names: list[str] | None = None, since: float | None = None,
               step: float | None = None) -> dict[str, Any]:
        self.calls.append(("series", (site, names, since, step)))
        i = self._index(site)
        now = time.time()
        since = now - 3600 if since is None else since
        step = step or 5.0
        points = max(2, min(300, int((now - since) / step)))
        wanted = names or ["cpu_util", "mem_used", "disk_used", "net_rx_bps", "net_tx_bps", "inference_rps"]
        return {"site": site, "step": step, "since": since,
                "series": {n: [[since + k * step, float(i + k % 50)] for k in range(points)] for n in wanted}}

    def alerts(self, active_only: bool = True) -> list[dict[str, Any]]:
        self.calls.append(("alerts", (active_only,)))
        return [{"id": f"unreachable-{n}", "rule": "site_unreachable", "site": n, "severity": "critical",
                 "message": f"{n} unreachable for 120 s", "since": _iso(time.time() - 120), "active": True}
                for i, n in enumerate(self.names) if self._health(i) == "down"]

    def logs(self, site: str, *, job: str | None = None, lines: int = 200) -> dict[str, Any]:
        self.calls.append(("logs", (site, job, lines)))
        self._index(site)
        return {"site": site, "source": f"job {job}" if job else "serve", "lines": [f"line {k}" for k in range(lines)]}
