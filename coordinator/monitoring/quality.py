"""Production quality, measured from the human verdicts at each site: the coordinator reads every
site's review stats (`GET /review/api/stats` of the review station, through the site gateway, with
the center's station token) on the monitor's interval, and keeps per site, product and model
version the automation rate, the escape and overkill rates of the audit sample, and the review
backlog and its age, each with the counts behind it.

    quality = QualityCollector.for_center(center, config, alerts)   # Monitor builds one
    quality.start()              # a daemon thread: one read of every site every interval
    quality.report("fab-a")      # the body of GET /api/v1/quality?site=fab-a

Rates are None when the count behind them is 0. A site that does not answer within the timeout
is marked stale and keeps its last figures. After each read the quality_above alert rules are
judged on the site's groups (`AlertEngine.evaluate_quality`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
from prometheus_client.core import GaugeMetricFamily
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from configs.errors import AdcpError, SiteError
from configs.monitoring import MonitoringConfig
from configs.platform import SiteConfig
from configs.station_tokens import STATION_TOKEN_HEADER
from coordinator.monitoring.alerts import AlertEngine, iso
from coordinator.monitoring.collect import SiteReader
from raycluster.gateway import SiteGateway, gateway_for

if TYPE_CHECKING:
    from coordinator.center.core import Center

__all__ = ["COUNTS", "RATES", "STATS_PATH", "QualityCollector", "StatsRow", "figures", "group_figures",
           "metric_families"]

STATS_PATH = "/review/api/stats"
#: The counts of a stats row (review station §7), summed over rows.
COUNTS = ("classified", "automatic", "review", "audited_defect", "overkill", "audited_false_defect", "escapes",
          "backlog")
#: rate -> (part, whole): the rate is part / whole, None where whole is 0.
RATES = {"automation_rate": ("automatic", "classified"), "escape_rate": ("escapes", "audited_false_defect"),
         "overkill_rate": ("overkill", "audited_defect")}


class StatsRow(BaseModel):
    """One row of a site's review stats: one product and model version."""

    # extra="ignore", not "forbid": a site runs its own release of the station, and a newer one
    # may add figures; the coordinator reads the ones it knows.
    model_config = ConfigDict(extra="ignore")

    product: str = ""
    model_version: str = ""
    classified: int = Field(0, ge=0)
    automatic: int = Field(0, ge=0)
    review: int = Field(0, ge=0)
    audited_defect: int = Field(0, ge=0)
    overkill: int = Field(0, ge=0)
    audited_false_defect: int = Field(0, ge=0)
    escapes: int = Field(0, ge=0)
    backlog: int = Field(0, ge=0)
    oldest_age_s: float = Field(0.0, ge=0)


def figures(rows: Iterable[StatsRow | Mapping[str, Any]]) -> dict[str, Any]:
    """The counts summed over `rows`, `oldest_age_s` the oldest, and the rates (None where the
    count behind is 0)."""
    out: dict[str, Any] = dict.fromkeys(COUNTS, 0)
    oldest = 0.0
    for row in rows:
        r = row if isinstance(row, StatsRow) else StatsRow.model_validate(row)
        for k in COUNTS:
            out[k] += getattr(r, k)
        oldest = max(oldest, r.oldest_age_s if r.backlog else 0.0)
    out["oldest_age_s"] = round(oldest, 3)
    for rate, (part, whole) in RATES.items():
        out[rate] = out[part] / out[whole] if out[whole] else None
    return out


def group_figures(rows: Iterable[StatsRow], products: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Figures per (product, model version), sorted by both; rows of the same pair are summed.
    `products` gives each product's display name (the product id where it has none)."""
    groups: dict[tuple[str, str], list[StatsRow]] = {}
    for r in rows:
        groups.setdefault((r.product, r.model_version), []).append(r)
    names = products or {}
    return [{"product": p, "product_display_name": names.get(p) or p, "model_version": m, **figures(rs)}
            for (p, m), rs in sorted(groups.items())]


@dataclass
class _SiteQuality:
    """The latest the collector knows of one site's quality."""

    name: str
    display_name: str | None = None
    rows: list[StatsRow] = field(default_factory=list)  # the last answer's rows
    updated_at: float | None = None  # when they were read
    error: str | None = "not read yet"  # why the figures are stale; None when the last read worked


class QualityCollector:
    """Reads, keeps and reports every site's production quality (see the module docstring).

    `sites()` gives the sites to read, `gateway(site)` each one's gateway, `token()` the center's
    station token (or None to send none); `alerts` judges the quality_above rules."""

    def __init__(self, sites: Callable[[], list[SiteConfig]], gateway: Callable[[SiteConfig], SiteGateway],
                 token: Callable[[], str | None], config: MonitoringConfig | None = None,
                 alerts: AlertEngine | None = None, products: Mapping[str, str] | None = None) -> None:
        self._sites_of, self._gateway_of, self._token = sites, gateway, token
        self.config = config or MonitoringConfig()
        self.interval_s = self.config.quality_interval_s or self.config.interval_s
        self.alerts = alerts
        self.products = dict(products or {})
        self._views: dict[str, _SiteQuality] = {}
        self._order: list[str] = []  # site names in the platform's order
        self._readers: dict[str, tuple[str, SiteReader]] = {}
        self._lock = threading.Lock()
        self._pass_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=min(self.config.workers, 32), thread_name_prefix="quality")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.passes = 0
        self.last_error: str | None = None  # what the last pass hit outside any one site

    @classmethod
    def for_center(cls, center: Center, config: MonitoringConfig | None = None,
                   alerts: AlertEngine | None = None) -> QualityCollector:
        """A collector over `center`'s sites, gateways and station keys."""

        def gateway(site: SiteConfig) -> SiteGateway:
            if site.local:
                return center.gateway(site.name)  # its ports and token come from the running head
            return gateway_for(site, karmada=center.config.karmada)

        def token() -> str:
            return center.station_keys.center_token()  # sub "center", cached until near its expiry

        return cls(center.sites, gateway, token, config or center.config.monitoring, alerts,
                   center.config.display_names.products)

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Read every site now and then every interval, in a daemon thread, until `stop`."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="quality", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.config.timeout_s + 5)
            self._thread = None
        self._pool.shutdown(wait=False, cancel_futures=True)
        for _, reader in list(self._readers.values()):
            reader.close()
        self._readers.clear()

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.collect()
                self.last_error = None
            except Exception as e:  # noqa: BLE001 (keep reading whatever one pass hit; the next may work)
                self.last_error = f"{type(e).__name__}: {e}"
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    # --- collection --------------------------------------------------------------------------

    def collect(self) -> dict[str, str]:
        """One concurrent read of every site's stats: {site: "ok" | why not}."""
        with self._pass_lock:
            sites = self._sites_of()
            self._forget_removed(sites)
            try:
                token = self._token()
                failed: str | None = None
            except Exception as e:  # noqa: BLE001 (every site is then stale, with the reason)
                token, failed = None, f"no station token: {type(e).__name__}: {e}"
            timeout = self.config.timeout_s
            futures = {} if failed else {s.name: self._pool.submit(self._read, s, token, timeout) for s in sites}
            wait_futures(list(futures.values()), timeout=timeout + 0.5)
            now = time.time()
            outcome: dict[str, str] = {}
            for s in sites:
                fut = futures.get(s.name)
                if fut is None:
                    outcome[s.name] = failed or "not read"
                elif not fut.done():
                    fut.cancel()
                    outcome[s.name] = f"no answer within {timeout:g} s"
                elif fut.exception() is not None:
                    e = fut.exception()
                    outcome[s.name] = str(e) if isinstance(e, AdcpError) else f"{type(e).__name__}: {e}"
                else:
                    outcome[s.name] = "ok"
                    self._accept(s.name, now, fut.result())
                if outcome[s.name] != "ok":
                    with self._lock:
                        self._views[s.name].error = outcome[s.name]
            self.passes += 1
            return outcome

    def _forget_removed(self, sites: list[SiteConfig]) -> None:
        names = {s.name for s in sites}
        with self._lock:
            self._order = [s.name for s in sites]
            for gone in set(self._views) - names:
                del self._views[gone]
            for gone in set(self._readers) - names:
                self._readers.pop(gone)[1].close()
            for s in sites:
                view = self._views.setdefault(s.name, _SiteQuality(s.name))
                view.display_name = s.display_name

    def _reader(self, site: SiteConfig) -> SiteReader:
        key = site.model_dump_json()
        with self._lock:
            held = self._readers.get(site.name)
            if held is not None and held[0] == key:
                return held[1]
            if held is not None:
                held[1].close()
            reader = SiteReader(self._gateway_of(site))
            self._readers[site.name] = (key, reader)
            return reader

    def _read(self, site: SiteConfig, token: str | None, timeout_s: float) -> list[StatsRow]:
        """The site's stats rows; SiteError when it does not answer them."""
        reader = self._reader(site)
        headers = {STATION_TOKEN_HEADER: token} if token else {}
        try:
            r = reader.client("serve").get(STATS_PATH, headers=headers, timeout=timeout_s)
        except httpx.HTTPError as e:
            self._drop_reader(site.name, reader)  # a restarted local site has new ports: look again
            raise SiteError(f"Review stats of {site.name} unreadable: {type(e).__name__}: {e}".rstrip(": ")) from e
        if r.status_code != 200:
            raise SiteError(f"The review station of {site.name} answered HTTP {r.status_code} to {STATS_PATH}: "
                            f"{r.text[:200]}")
        try:
            body = r.json()
            rows = [StatsRow.model_validate(row) for row in body["rows"]]
        except (ValueError, KeyError, TypeError, ValidationError) as e:
            raise SiteError(f"The review station of {site.name} answered stats that are not §7 rows: "
                            f"{str(e)[:200]}") from e
        if body.get("site") not in (None, site.name):
            raise SiteError(f"The review station reached as {site.name} answered for site {body['site']}.",
                            hint="Check the site's serve address in the platform file.")
        return rows

    def _drop_reader(self, name: str, reader: SiteReader) -> None:
        with self._lock:
            if self._readers.get(name, (None, None))[1] is reader:
                del self._readers[name]
        reader.close()

    def _accept(self, name: str, now: float, rows: list[StatsRow]) -> None:
        with self._lock:
            view = self._views[name]
            view.rows, view.updated_at, view.error = rows, now, None
        if self.alerts is not None:
            self.alerts.evaluate_quality(name, now, group_figures(rows))

    # --- reading back ------------------------------------------------------------------------

    def _body(self, v: _SiteQuality, groups: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"site": v.name, "display_name": v.display_name or v.name, **figures(v.rows),
                                "stale": v.error is not None, "error": v.error, "updated_at": iso(v.updated_at)}
        if groups:
            body["by"] = group_figures(v.rows, self.products)
        return body

    def report(self, site: str | None = None) -> dict[str, Any]:
        """`{"sites": [per site figures, stale, updated_at, "by": [per product and model version]]}`,
        every site known at the last read (or only `site`)."""
        with self._lock:
            views = [self._views[n] for n in self._order if n in self._views and (site is None or n == site)]
            return {"sites": [self._body(v, True) for v in views]}

    def summary(self, site: str) -> dict[str, Any] | None:
        """One site's figures without the groups (what a big-screen tile shows); None when unknown."""
        with self._lock:
            view = self._views.get(site)
            return self._body(view, False) if view is not None else None

    def decorate(self, bodies: list[dict[str, Any]], sites: list[SiteConfig] | None = None) -> None:
        """Add each overview site body its `display_name` (from `sites`, else as of the last read)
        and `quality` summary, in place."""
        with self._lock:
            titles = {n: v.display_name for n, v in self._views.items()}
        titles.update({s.name: s.display_name for s in sites or []})
        for body in bodies:
            body["display_name"] = titles.get(body["name"]) or body["name"]
            body["quality"] = self.summary(body["name"])


def metric_families(report: Mapping[str, Any]) -> Iterator[GaugeMetricFamily]:
    """The `adcp_quality_*` gauges of a `report()`: rates and backlog per site, product and model
    version (a rate only where its count is not 0), the counts behind them per site."""
    group_labels = ["site", "product", "model_version"]
    per_group = {
        "automation_rate": GaugeMetricFamily("adcp_quality_automation_rate", "Automatic share of the ADC answers "
                                             "(automatic / classified)", labels=group_labels),
        "escape_rate": GaugeMetricFamily("adcp_quality_escape_rate", "Audited automatic false-defect calls a "
                                         "human called a real defect (escapes / audited false_defect)",
                                         labels=group_labels),
        "overkill_rate": GaugeMetricFamily("adcp_quality_overkill_rate", "Audited automatic defect calls a human "
                                           "called false (overkill / audited defect)", labels=group_labels),
        "backlog": GaugeMetricFamily("adcp_quality_backlog", "Review items without a verdict yet",
                                     labels=group_labels),
        "oldest_age_s": GaugeMetricFamily("adcp_quality_backlog_oldest_seconds", "Age of the oldest review item "
                                          "without a verdict (0 when none)", labels=group_labels),
    }
    counts = {k: GaugeMetricFamily(f"adcp_quality_{k}", help_, labels=["site"]) for k, help_ in (
        ("classified", "ADC answers counted at the site"), ("automatic", "Automatic ADC answers at the site"),
        ("escapes", "Audited false-defect calls a human called a real defect"),
        ("overkill", "Audited defect calls a human called false"))}
    audited = GaugeMetricFamily("adcp_quality_audited", "Audited automatic calls with a human verdict, by the "
                                "automatic call (defect, false_defect)", labels=["site", "kind"])
    stale = GaugeMetricFamily("adcp_quality_stale", "1 if the last read of the site's review stats failed "
                              "(its figures are the last read)", labels=["site"])
    for s in report.get("sites", []):
        for g in s.get("by", []):
            labels = [s["site"], g["product"], g["model_version"]]
            for key, fam in per_group.items():
                if g.get(key) is not None:
                    fam.add_metric(labels, float(g[key]))
        for key, fam in counts.items():
            fam.add_metric([s["site"]], float(s[key]))
        audited.add_metric([s["site"], "defect"], float(s["audited_defect"]))
        audited.add_metric([s["site"], "false_defect"], float(s["audited_false_defect"]))
        stale.add_metric([s["site"]], 1.0 if s["stale"] else 0.0)
    yield from per_group.values()
    yield from counts.values()
    yield audited
    yield stale
