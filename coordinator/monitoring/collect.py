"""Reading one site through its gateway: Ray's metrics (or a site Prometheus with PromQL), Ray job
states, Serve application and replica health, and logs (Ray job logs, Serve replica logs).

Every read takes a deadline (time.monotonic), so a slow site costs a sweep at most its timeout.
Errors are SiteError (chained); NotFoundError for a job id the site does not know.
"""

from __future__ import annotations

import functools
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from configs.errors import AdcpError, InputError, NotFoundError, SiteError
from coordinator.monitoring.metrics_parse import PROMQL_SELECTOR, Snapshot, parse_text, samples_from_promql, snapshot
from raycluster.gateway import SiteGateway

__all__ = ["Reading", "SiteReader", "job_logs", "replica_logs", "serve_summary", "warm_tls"]

_ACTIVE_JOB = ("PENDING", "RUNNING")


@dataclass
class Reading:
    """What one read of a site gave."""

    snap: Snapshot
    source: str  # "ray" (the head's metrics endpoint) or "prometheus" (PromQL)
    jobs: dict[str, int] = field(default_factory=dict)  # by state
    serve: dict[str, Any] = field(default_factory=dict)


@functools.cache
def _default_tls() -> ssl.SSLContext:
    return ssl.create_default_context()


def warm_tls() -> None:
    """Build the shared TLS context now (it takes ~40 ms of CPU)."""
    _default_tls()


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise httpx.TimeoutException("the site's time in this sweep ran out")
    return left


def _has(gateway: SiteGateway, service: str) -> bool:
    try:
        gateway.base_url(service)  # type: ignore[arg-type]
    except AdcpError:
        return False
    return True


class SiteReader:
    """One site's gateway and its reused HTTP clients (a client per service: its connections and
    TLS context are set up once, not per sweep)."""

    def __init__(self, gateway: SiteGateway) -> None:
        self.gateway = gateway
        self.prometheus = _has(gateway, "prometheus")
        self._clients: dict[str, httpx.Client] = {}

    def close(self) -> None:
        for c in self._clients.values():
            c.close()
        self._clients.clear()

    def client(self, service: str) -> httpx.Client:
        """The gateway's client for `service` (its base URL, headers, TLS options), built with one
        shared default TLS context unless the gateway sets its own: httpx builds a fresh context
        per client otherwise, ~35 ms of CPU each, which for 100 sites is seconds per sweep."""
        if service not in self._clients:
            gw = self.gateway
            self._clients[service] = httpx.Client(
                base_url=gw.base_url(service), headers=gw.headers(service),  # type: ignore[arg-type]
                timeout=10, **{"verify": _default_tls(), **gw.client_options()})
        return self._clients[service]

    def _get(self, service: str, path: str, deadline: float, **params: Any) -> httpx.Response:
        return self.client(service).get(path, params=params or None, timeout=_left(deadline)).raise_for_status()

    def read(self, deadline: float) -> Reading:
        """Metrics, jobs and Serve state; SiteError when the site does not answer in time."""
        try:
            snap, source = self._metrics(deadline)
            jobs = self._get("dashboard", "/api/jobs/", deadline).json()
            serve = self._get_serve(deadline)
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:
            raise SiteError(f"{type(e).__name__}: {e}".rstrip(": ")) from e
        by_state: dict[str, int] = {}
        for job in jobs if isinstance(jobs, list) else []:
            state = str(job.get("status", "UNKNOWN"))
            by_state[state] = by_state.get(state, 0) + 1
        return Reading(snap=snap, source=source, jobs=by_state, serve=serve)

    def _metrics(self, deadline: float) -> tuple[Snapshot, str]:
        if self.prometheus:
            body = self._get("prometheus", "/api/v1/query", deadline, query=PROMQL_SELECTOR).json()
            return snapshot(samples_from_promql(body), time.time()), "prometheus"
        base = self.gateway.base_url("metrics")
        path = "" if base.endswith("/metrics") else "/metrics"  # a local head's URL names the path already
        text = self._get("metrics", path, deadline).text
        return snapshot(parse_text(text), time.time()), "ray"

    def _get_serve(self, deadline: float) -> dict[str, Any]:
        r = self.client("dashboard").get("/api/serve/applications/", timeout=_left(deadline))
        if r.status_code != 200:
            return serve_summary({})
        return serve_summary(r.json())


def serve_summary(body: dict[str, Any]) -> dict[str, Any]:
    """Overall status, each app's status and replica counts of `/api/serve/applications/`."""
    apps: dict[str, str] = {}
    healthy = total = 0
    for name, app in (body.get("applications") or {}).items():
        apps[name] = str(app.get("status", "UNKNOWN"))
        for dep in (app.get("deployments") or {}).values():
            replicas = dep.get("replicas") or []
            total += max(int(dep.get("target_num_replicas") or 0), len(replicas))
            healthy += sum(1 for r in replicas if r.get("state") == "RUNNING")
    if not apps:
        status = "NOT_STARTED"
    else:
        status = next((s for s in apps.values() if s != "RUNNING"), "RUNNING")
    return {"status": status, "apps": apps, "replicas_healthy": healthy, "replicas_total": total}


def job_logs(reader: SiteReader, job: str, lines: int, timeout_s: float = 10) -> tuple[list[str], str]:
    """The last `lines` lines of a Ray job's log and its status; NotFoundError for an unknown id."""
    c = reader.client("dashboard")
    try:
        info = c.get(f"/api/jobs/{job}", timeout=timeout_s)
        if info.status_code == 404:
            raise NotFoundError(f"Site {reader.gateway.site} has no job {job}.",
                                hint=f"List them with `adcp logs --site {reader.gateway.site}` or the Ray dashboard.")
        info.raise_for_status()
        text = c.get(f"/api/jobs/{job}/logs", timeout=timeout_s).raise_for_status().json().get("logs", "")
    except httpx.HTTPError as e:
        raise SiteError(f"Cannot read job {job}'s logs at {reader.gateway.site}: {e}") from e
    return text.splitlines()[-lines:] if lines else [], str(info.json().get("status", "UNKNOWN"))


def replica_logs(reader: SiteReader, lines: int, timeout_s: float = 10) -> list[str]:
    """The last `lines` lines of every Serve replica's log, each line prefixed with its replica."""
    c = reader.client("dashboard")
    try:
        r = c.get("/api/serve/applications/", timeout=timeout_s)
        apps = (r.json().get("applications") or {}) if r.status_code == 200 else {}
        out: list[str] = []
        for app in apps.values():
            for dep in (app.get("deployments") or {}).values():
                for rep in dep.get("replicas") or []:
                    out += _replica_tail(c, rep, lines, timeout_s)
    except httpx.HTTPError as e:
        raise SiteError(f"Cannot read Serve replica logs at {reader.gateway.site}: {e}") from e
    return out


def _replica_tail(c: httpx.Client, rep: dict[str, Any], lines: int, timeout_s: float) -> list[str]:
    path = str(rep.get("log_file_path") or "").lstrip("/")
    if not path or not rep.get("node_id"):
        return []
    r = c.get("/api/v0/logs/file", params={"node_id": rep["node_id"], "filename": path, "lines": lines},
              timeout=timeout_s)
    if r.status_code != 200:
        return [f"[{rep.get('replica_id', '?')}] (log unavailable: HTTP {r.status_code})"]
    tag = rep.get("replica_id") or path
    return [f"[{tag}] {ln}" for ln in r.text.splitlines()[-lines:]]


def check_lines(lines: int) -> int:
    if not 1 <= lines <= 100000:
        raise InputError(f"Got {lines} for lines.", allowed="1 to 100000")
    return lines
