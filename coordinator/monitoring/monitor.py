"""Cross-site monitoring: the coordinator reads every site through its gateway on an interval, keeps
a bounded history, evaluates alert rules, and answers the overview, series, alerts and logs that the
HTTP API, `adcp top`, `adcp logs` and the dashboard show.

    monitor = Monitor(center)          # settings: the platform's `monitoring:` section
    monitor.start()                    # a background thread: one sweep every interval_s
    monitor.overview()                 # every site's latest figures, health, sparklines, totals

A sweep reads all sites at once (a thread pool) and waits for each at most `timeout_s`, so a slow or
dead site never delays the others; a site whose read failed is "down" from that sweep on.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from configs.errors import AdcpError, InputError
from configs.kube import KubeRayRuntime
from configs.monitoring import FIGURES, MonitoringConfig
from configs.platform import SiteConfig
from coordinator.center.core import Center
from coordinator.monitoring.alerts import AlertEngine, iso
from coordinator.monitoring.collect import Reading, SiteReader, check_lines, job_logs, replica_logs, warm_tls
from coordinator.monitoring.metrics_parse import Snapshot
from coordinator.monitoring.metrics_parse import figures as compute_figures
from coordinator.monitoring.quality import QualityCollector
from coordinator.state.history import History, bucket_means
from raycluster.gateway import gateway_for

__all__ = ["SPARK_FIGURES", "Monitor"]

SPARK_FIGURES = ("cpu_util", "mem_used", "disk_used", "net_rx_bps", "net_tx_bps", "gpu_util")


@dataclass
class _View:
    """The latest the monitor knows of one site."""

    name: str
    last_try: float | None = None
    last_ok: float | None = None
    error: str | None = "not read yet"
    reading: Reading | None = None
    latest: dict[str, float] = field(default_factory=dict)
    spark: deque = field(default_factory=deque)  # (t, {figure: value})
    dashboard_url: str | None = None


def _round(v: float) -> float:
    return float(f"{v:.5g}") if math.isfinite(v) else 0.0


class Monitor:
    """Collects, keeps and judges every site's figures (see the module docstring)."""

    def __init__(self, center: Center, config: MonitoringConfig | None = None) -> None:
        self.center = center
        self.config = config or center.config.monitoring
        c = self.config
        self.history = History(center.state.path, retention_s=c.retention_s, raw_s=c.raw_s,
                               downsample_s=c.downsample_s)
        self.alerts_engine = AlertEngine(c.rules)
        self.quality = QualityCollector.for_center(center, c, self.alerts_engine)  # its own loop, same interval
        self._views: dict[str, _View] = {}
        self._readers: dict[str, tuple[str, SiteReader]] = {}  # site -> (spec key, reader)
        self._lock = threading.Lock()
        self._sweep_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=c.workers, thread_name_prefix="monitor")
        warm_tls()  # once here, not by the first sweep's threads at once
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_sweep: dict[str, Any] | None = None
        self.sweeps = 0
        self._sites: list[SiteConfig] | None = None  # as of the last sweep

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Sweep now and then every interval_s, in a daemon thread, until `stop`."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="monitor", daemon=True)
        self._thread.start()
        self.quality.start()

    def stop(self) -> None:
        self.quality.stop()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.config.timeout_s + 5)
            self._thread = None
        self._pool.shutdown(wait=False, cancel_futures=True)
        for _, reader in list(self._readers.values()):
            reader.close()
        self._readers.clear()
        self.history.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.sweep()
            except Exception as e:  # keep monitoring whatever one sweep hit; the next may work
                self.last_sweep = {"seconds": time.monotonic() - started, "error": f"{type(e).__name__}: {e}"}
            self._stop.wait(max(0.0, self.config.interval_s - (time.monotonic() - started)))

    # --- collection --------------------------------------------------------------------------

    def _reader(self, site: SiteConfig) -> SiteReader:
        key = site.model_dump_json()
        held = self._readers.get(site.name)
        if held is not None and held[0] == key:
            return held[1]
        if held is not None:
            held[1].close()
        if site.local:
            gateway = self.center.gateway(site.name)  # its ports and token come from the running head
        else:
            gateway = gateway_for(site, karmada=self.center.config.karmada)
        reader = SiteReader(gateway)
        self._readers[site.name] = (key, reader)
        return reader

    def _read(self, site: SiteConfig) -> tuple[Reading, str]:
        deadline = time.monotonic() + self.config.timeout_s  # from its own start, not its time queued
        reader = self._reader(site)
        try:
            return reader.read(deadline), reader.gateway.base_url("dashboard")
        except AdcpError:
            self._readers.pop(site.name, None)  # a restarted local site has new ports: look again
            reader.close()
            raise

    def sweep(self) -> dict[str, Any]:
        """One concurrent pass over every site: {"seconds", "sites": {name: "ok" | error}}."""
        with self._sweep_lock:
            return self._sweep()

    def _sweep(self) -> dict[str, Any]:
        started = time.monotonic()
        sites = self._sites = self.center.sites()
        self._forget_removed({s.name for s in sites})
        futures = {s.name: self._pool.submit(self._read, s) for s in sites}
        wait_futures(list(futures.values()), timeout=self._sweep_cap())
        now = time.time()
        outcome: dict[str, str] = {}
        rows: dict[str, dict[str, float]] = {}
        for name, fut in futures.items():
            if not fut.done():
                fut.cancel()
                outcome[name] = f"not read within {self._sweep_cap():g} s"
            elif fut.exception() is not None:
                e = fut.exception()
                outcome[name] = str(e) if isinstance(e, AdcpError) else f"{type(e).__name__}: {e}"
            else:
                outcome[name] = "ok"
                rows[name] = self._accept(name, now, *fut.result())
            if outcome[name] != "ok":
                self._fail(name, now, outcome[name])
            view = self._views[name]
            self.alerts_engine.evaluate(name, now, outcome[name] == "ok", view.latest if outcome[name] == "ok" else {})
        self.history.write(now, rows)
        self.sweeps += 1
        self.last_sweep = {"seconds": round(time.monotonic() - started, 4), "at": now,
                           "sites": outcome}
        return {"seconds": self.last_sweep["seconds"], "sites": outcome}

    def _sweep_cap(self) -> float:
        """Most seconds a sweep waits: each site has timeout_s from when its read starts; sites still
        queued behind busy workers get what is left of 90 % of the interval."""
        return max(self.config.timeout_s + 0.25, 0.9 * self.config.interval_s)

    def _forget_removed(self, names: set[str]) -> None:
        with self._lock:
            for gone in set(self._views) - names:
                del self._views[gone]
                self.alerts_engine.forget(gone)
            for gone in set(self._readers) - names:
                self._readers.pop(gone)[1].close()
            for name in names - set(self._views):
                self._views[name] = _View(name)

    def _accept(self, name: str, now: float, reading: Reading, dashboard_url: str) -> dict[str, float]:
        with self._lock:
            view = self._views[name]
            prev = view.reading.snap if view.reading else None
            figures = compute_figures(prev, reading.snap)
            figures["jobs_running"] = float(sum(n for s, n in reading.jobs.items() if s in ("PENDING", "RUNNING")))
            figures["serve_replicas_healthy"] = float(reading.serve.get("replicas_healthy", 0))
            figures["serve_replicas_total"] = float(reading.serve.get("replicas_total", 0))
            figures = {k: _round(v) for k, v in figures.items()}
            view.reading, view.latest, view.dashboard_url = reading, figures, dashboard_url
            view.last_try = view.last_ok = now
            view.error = None
            view.spark.append((now, {k: figures[k] for k in SPARK_FIGURES if k in figures}))
            while view.spark and view.spark[0][0] < now - self.config.spark_s:
                view.spark.popleft()
        return figures

    def _fail(self, name: str, now: float, error: str) -> None:
        with self._lock:
            view = self._views[name]
            view.last_try, view.error = now, error

    # --- reading back ------------------------------------------------------------------------

    def health(self, name: str) -> str:
        """"down" (the last read failed, or none yet), "warn" (an alert fires), else "ok"."""
        view = self._views.get(name)
        if view is None or view.error is not None:
            return "down"
        return "warn" if self.alerts_engine.active(name) else "ok"

    def overview(self) -> dict[str, Any]:
        """Every site's latest figures and health, central totals and the firing alerts."""
        now = time.time()
        alerts = self.alerts_engine.active()
        alerting = {a["site"] for a in alerts}
        configs = self._sites if self._sites is not None else self.center.sites()
        with self._lock:
            views = [self._views.get(s.name) or _View(s.name) for s in configs]
            sites = [self._site_body(v, now, alerting) for v in views]
        self.quality.decorate(sites, configs)  # display_name and the quality summary of each site
        totals = {"sites": len(sites), "up": sum(s["health"] != "down" for s in sites),
                  "down": sum(s["health"] == "down" for s in sites), "warn": sum(s["health"] == "warn" for s in sites),
                  "jobs_running": sum(s["jobs"]["running"] for s in sites),
                  "inference_rps": round(sum(s["latest"].get("inference_rps", 0.0)
                                             for s in sites if s["reachable"]), 3),
                  "images_total": int(sum(s["latest"].get("images_total", 0.0) for s in sites)),
                  "gpus_total": _gpus_total(configs), "alerts_active": len(alerts)}
        return {"generated_at": iso(now), "interval_s": self.config.interval_s, "totals": totals,
                "alerts": alerts, "sites": sites}

    def _site_body(self, v: _View, now: float, alerting: set[str]) -> dict[str, Any]:
        r = v.reading
        health = "down" if v.error is not None else ("warn" if v.name in alerting else "ok")
        step = max(1, math.ceil(len(v.spark) / self.config.spark_points))
        points = list(v.spark)[-1::-step][::-1]
        jobs = r.jobs if r else {}
        latest = v.latest
        return {
            "name": v.name, "health": health, "reachable": v.error is None, "last_ok": iso(v.last_ok),
            "age_s": round(now - v.last_ok, 2) if v.last_ok else None, "error": v.error,
            "latest": latest,
            "spark": {f: [[int(t), d[f]] for t, d in points if f in d] for f in SPARK_FIGURES},
            "jobs": {"running": sum(n for s, n in jobs.items() if s in ("PENDING", "RUNNING")),
                     "total": sum(jobs.values()), "by_state": dict(jobs)},
            "serve": dict(r.serve) if r else {"status": "UNKNOWN", "apps": {}, "replicas_healthy": 0,
                                              "replicas_total": 0},
            "model_version": r.snap.model_version if r else None,
            "defect_mix": dict(r.snap.defect_mix) if r else {},
            "automation_rate": latest.get("automation_rate"),
            "source": r.source if r else None,
            "dashboard_url": v.dashboard_url,
        }

    def snapshot(self, name: str) -> Snapshot | None:
        """The site's last successful read (cumulative ADC counters, latency histogram, its time), or None."""
        with self._lock:
            view = self._views.get(name)
            return view.reading.snap if view is not None and view.reading is not None else None

    def series(self, site: str, names: list[str] | None = None, since: float | None = None,
               step: float | None = None) -> dict[str, Any]:
        """`site`'s history from `since` (default: an hour ago) at `step` seconds (default: the
        finest that keeps each series within max_points); NotFoundError for an unknown site,
        InputError for an unknown figure or a bad step."""
        self.center.site(site)
        if names:
            unknown = [n for n in names if n not in FIGURES]
            if unknown:
                raise InputError(f"Unknown figure {', '.join(unknown)}.", allowed=", ".join(FIGURES))
        now = time.time()
        since = now - 3600 if since is None else since
        if step is not None and not (math.isfinite(step) and step > 0):
            raise InputError(f"Got {step} for step.", allowed="a positive number of seconds")
        finest = max(self.config.interval_s, (now - since) / self.config.max_points)
        step = max(step or finest, finest)
        rows = self.history.read(site, names, since)
        merged = bucket_means(rows, step) if step > self.config.interval_s else rows
        out: dict[str, list[list[float]]] = {n: [] for n in (names or [])}
        for t, data in merged:
            for n, value in data.items():
                out.setdefault(n, []).append([round(t, 3), value])
        return {"site": site, "step": step, "since": since, "series": out}

    def alerts(self, active_only: bool = True) -> list[dict[str, Any]]:
        return self.alerts_engine.active() if active_only else self.alerts_engine.all()

    def logs(self, site: str, *, job: str | None = None, lines: int = 200) -> dict[str, Any]:
        """The tail of a Ray job's log (`job`), else of every Serve replica's log, at `site`."""
        check_lines(lines)
        cfg = self.center.site(site)
        reader = SiteReader(self.center.gateway(cfg.name) if cfg.local else
                            gateway_for(cfg, karmada=self.center.config.karmada))
        try:
            if job:
                text, status = job_logs(reader, job, lines)
                return {"site": site, "source": f"job:{job}", "status": status, "lines": text}
            return {"site": site, "source": "serve", "lines": replica_logs(reader, lines)}
        finally:
            reader.close()

    def scrape_ages(self) -> dict[str, tuple[bool, float | None]]:
        """Per site: (up, seconds since its last successful read) for the coordinator's /metrics."""
        now = time.time()
        with self._lock:
            return {n: (v.error is None, now - v.last_ok if v.last_ok else None) for n, v in self._views.items()}


def _gpus_total(sites: list[SiteConfig]) -> int:
    """GPUs the sites declare: a local runtime's num_gpus, a KubeRay runtime's most GPUs."""
    total = 0
    for s in sites:
        if isinstance(s.runtime, KubeRayRuntime):
            total += s.runtime.gpus
        elif s.runtime is not None:
            total += s.runtime.num_gpus
    return total


def parse_since(text: str | None, now: float | None = None) -> float | None:
    """`since` as unix seconds, ISO 8601, or relative (`-1h`, `-30m`, `-90s`, `-2d`); InputError
    otherwise."""
    if text is None or text == "":
        return None
    now = time.time() if now is None else now
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip()
    if t.startswith("-") and len(t) > 2 and t[-1] in units:
        try:
            return now - float(t[1:-1]) * units[t[-1]]
        except ValueError:
            pass
    else:
        try:
            value = float(t)
            if math.isfinite(value) and value >= 0:
                return value
        except ValueError:
            try:
                d = datetime.fromisoformat(t.replace("Z", "+00:00"))
                return (d if d.tzinfo else d.replace(tzinfo=timezone.utc)).timestamp()
            except ValueError:
                pass
    raise InputError(f'Got "{text}" for since.',
                     allowed="unix seconds (1767225600), ISO 8601 (2026-01-01T00:00:00Z) "
                     "or relative (-1h, -30m, -90s, -2d)")
