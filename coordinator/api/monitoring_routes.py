"""The coordinator's monitoring routes, over `coordinator.monitoring.Monitor`, and its own
Prometheus `/metrics`.

`coordinator.api.create_app` adds them with `add_monitoring_routes(app, center, monitor)`: GET
/api/v1/overview, /api/v1/sites/{site}/metrics, /api/v1/alerts and /api/v1/sites/{site}/logs, each
behind the app-wide door (`coordinator.api.auth`); bad query values answer 422 JSON, an
unknown site 404 JSON naming the known ones.

`/metrics` is NOT behind the door, on purpose: it holds only site names, counts and timings (no
artifacts, no URLs, no secrets), and a Prometheus scraping the center should not have to hold an
API token. The coordinator binds to 127.0.0.1 by default; expose it wider only behind a proxy that
limits who can read it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI, Query, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from configs.errors import InputError
from coordinator.center.core import Center
from coordinator.jobs import aliases
from coordinator.monitoring.monitor import Monitor, parse_since
from coordinator.monitoring.quality import metric_families as quality_families

__all__ = ["add_monitoring_routes", "coordinator_registry"]

_PREFIX = "/api/v1"


class QueryValueError(InputError):
    """A query parameter has a value the route cannot use."""

    http_status = 422


def _json(body: Any) -> Response:
    # json.dumps straight to bytes: FastAPI's encoder walks every number of a 100-site overview.
    return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")


def add_monitoring_routes(app: FastAPI, center: Center, monitor: Monitor) -> None:
    """Add the monitoring routes (behind the app-wide door), `/metrics`, and a middleware that
    counts API requests and their latency."""
    registry = coordinator_registry(center, monitor)
    requests = Counter("adcp_api_requests", "Coordinator API requests by route, method and status",
                       ["route", "method", "status"], registry=registry)
    latency = Histogram("adcp_api_request_seconds", "Coordinator API request latency by route",
                        ["route"], registry=registry,
                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))

    @app.middleware("http")
    async def _measure(request: Request, call_next):
        started = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = getattr(request.scope.get("route"), "path", None) or "unmatched"
            requests.labels(route, request.method, str(status)).inc()
            latency.labels(route).observe(time.perf_counter() - started)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    cached: dict[str, Any] = {"key": None, "body": b""}

    @app.get(f"{_PREFIX}/overview", tags=["monitoring"])
    def overview() -> Response:
        """Every site's health, latest figures and sparklines; totals; firing alerts. The body is
        built once per sweep and at most once a second (a wall of screens polls the same one)."""
        key = (monitor.sweeps, int(time.monotonic()))
        if cached["key"] != key:
            body = aliases.decorate(center, monitor.overview())  # + each site's model lines (champion, challenger)
            cached["body"], cached["key"] = json.dumps(body, separators=(",", ":")), key
        return Response(cached["body"], media_type="application/json")

    @app.get(f"{_PREFIX}/sites/{{site}}/metrics", tags=["monitoring"])
    def site_metrics(site: str,
                     names: str | None = Query(None, description="Comma-separated figures (default: all)"),
                     since: str | None = Query(None, description="Unix seconds, ISO 8601, or relative: -1h, -30m"),
                     step: str | None = Query(None, description="Seconds between points")) -> Response:
        """A site's history of figures: {site, step, since, series: {name: [[t, v], ...]}}."""
        center.site(site)
        try:
            wanted = [n.strip() for n in names.split(",") if n.strip()] if names else None
            t0 = parse_since(since)
            step_s = _step(step)
            return _json(monitor.series(site, wanted, t0, step_s))
        except InputError as e:
            raise QueryValueError(e.what, allowed=e.allowed, hint=e.hint) from e

    @app.get(f"{_PREFIX}/alerts", tags=["monitoring"])
    def alerts(all: bool = Query(False, description="Resolved alerts too, newest first")) -> Response:
        return _json(monitor.alerts(active_only=not all))

    @app.get(f"{_PREFIX}/sites/{{site}}/logs", tags=["monitoring"])
    def site_logs(site: str, job: str | None = Query(None, description="A Ray job id (default: Serve replica logs)"),
                  lines: int = Query(200, ge=1, le=100000, description="Last lines to return")) -> Response:
        """The tail of a Ray job's log or of the Serve replicas' logs, through the site's gateway."""
        return _json(monitor.logs(site, job=job, lines=lines))


def _step(text: str | None) -> float | None:
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value > 0 and value < float("inf")):
        raise InputError(f'Got "{text}" for step.', allowed="a positive number of seconds")
    return value


class _Platform:
    """Collector of the center's figures, read at scrape time (nothing to keep in step)."""

    def __init__(self, center: Center, monitor: Monitor) -> None:
        self.center, self.monitor = center, monitor

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("adcp_site_up", "1 if the last read of the site succeeded", labels=["site"])
        age = GaugeMetricFamily("adcp_site_scrape_age_seconds", "Seconds since the site's last successful read",
                                labels=["site"])
        for site, (ok, seconds) in sorted(self.monitor.scrape_ages().items()):
            up.add_metric([site], 1.0 if ok else 0.0)
            if seconds is not None:
                age.add_metric([site], seconds)
        yield up
        yield age
        sweep = GaugeMetricFamily("adcp_sweep_seconds", "Duration of the last monitoring sweep")
        sweep.add_metric([], float((self.monitor.last_sweep or {}).get("seconds") or 0.0))
        yield sweep
        yield from self._db_figures()
        yield from quality_families(self.monitor.quality.report())  # adcp_quality_*

    def _db_figures(self) -> Iterator[GaugeMetricFamily]:
        transfers = GaugeMetricFamily("adcp_transfers", "Transfers recorded, by status", labels=["status"])
        sent = GaugeMetricFamily("adcp_transfer_bytes", "Bytes sent by recorded transfers, by status",
                                 labels=["status"])
        jobs = GaugeMetricFamily("adcp_jobs", "Train/tune jobs the coordinator runs, by status", labels=["status"])
        counts = self.center.state.status_counts()
        for status, (n, b) in counts["transfers"].items():
            transfers.add_metric([status], n)
            sent.add_metric([status], b)
        for status, (n, _) in counts["jobs"].items():
            jobs.add_metric([status], n)
        yield transfers
        yield sent
        yield jobs


def coordinator_registry(center: Center, monitor: Monitor) -> CollectorRegistry:
    """The coordinator's own registry (not prometheus_client's global one, which another app in the
    same process would share)."""
    registry = CollectorRegistry()
    registry.register(_Platform(center, monitor))
    return registry
