"""Alert rules evaluated after each sweep: a condition must hold for the rule's `for_s` before its
alert fires, and the alert resolves at the first evaluation where it no longer holds.

`evaluate` judges the rules on a site's read figures (site_unreachable, metric_above) after each
monitoring sweep; `evaluate_quality` judges the quality_above rules on the per product and model
version figures of a site's review stats after each quality read (`coordinator.monitoring.quality`).

`event` raises an alert that fires at once, outside the rules (a release rolled back by itself):
it stays active for `event_ttl_s`, then resolves.

Alerts live in memory (the coordinator's lifetime): active ones, plus the last `keep_resolved`
resolved ones for `GET /api/v1/alerts?all=true`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from configs.monitoring import QUALITY_FIGURES, AlertRule

__all__ = ["AlertEngine", "iso"]


def iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


@dataclass
class _Alert:
    rule: AlertRule
    site: str
    pending_since: float
    fired_at: float | None = None
    resolved_at: float | None = None
    value: float | None = None
    detail: str = ""  # quality_above: which product and model version, and the counts
    text: str = ""  # an event's own message

    @property
    def id(self) -> str:
        return f"{self.rule.name}:{self.site}:{int(self.pending_since)}"

    def message(self) -> str:
        r = self.rule
        if self.text:
            return self.text
        if r.kind == "site_unreachable":
            return f"{self.site} unreachable for {r.for_s:g} s or more"
        if r.kind == "quality_above":
            return f"{self.site}: {r.metric} {self.value:.4g} above {r.threshold:g} ({self.detail})"
        return f"{self.site}: {r.metric} {self.value:.4g} above {r.threshold:g} for {r.for_s:g} s or more"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "rule": self.rule.name, "kind": self.rule.kind, "site": self.site,
                "severity": self.rule.severity, "message": self.message(), "description": self.rule.description,
                "value": self.value, "since": iso(self.pending_since), "fired_at": iso(self.fired_at),
                "resolved_at": iso(self.resolved_at), "active": self.resolved_at is None}


class AlertEngine:
    """The state of every (rule, site) pair."""

    def __init__(self, rules: list[AlertRule], keep_resolved: int = 200, event_ttl_s: float = 3600.0) -> None:
        self.rules = list(rules)
        self.event_ttl_s = event_ttl_s
        self._lock = threading.Lock()
        self._open: dict[tuple[str, str], _Alert] = {}  # pending or firing
        self._resolved: deque[_Alert] = deque(maxlen=keep_resolved)
        self._events: list[_Alert] = []  # raised by `event`, firing until event_ttl_s has passed

    def event(self, name: str, site: str, message: str, *, severity: str = "critical", value: float | None = None,
              description: str = "", now: float | None = None) -> dict[str, Any]:
        """Raise an alert that fires now (kind `event`, rule `name`) with `message`; it resolves after
        `event_ttl_s`. Returns it as `active()` lists it."""
        now = time.time() if now is None else now
        rule = AlertRule.model_construct(name=name, kind="event", metric=None, threshold=None, min_count=0,
                                         for_s=0.0, severity=severity, description=description)
        alert = _Alert(rule, site, pending_since=now, fired_at=now, value=value, text=message)
        with self._lock:
            self._events.append(alert)
        return alert.to_dict()

    def _expire_events(self, now: float) -> None:
        for alert in [a for a in self._events if now - a.pending_since >= self.event_ttl_s]:
            self._events.remove(alert)
            alert.resolved_at = alert.pending_since + self.event_ttl_s
            self._resolved.append(alert)

    def evaluate(self, site: str, now: float, reachable: bool, figures: Mapping[str, float]) -> None:
        """Update every rule but the quality_above ones for one site after a read at `now`."""
        with self._lock:
            for rule in self.rules:
                if rule.kind != "quality_above":
                    self._update(rule, site, now, *self._holds(rule, reachable, figures))

    def evaluate_quality(self, site: str, now: float, groups: list[Mapping[str, Any]]) -> None:
        """Update the quality_above rules for one site after a read of its review stats at `now`:
        `groups` are its figures per product and model version (`quality.group_figures`). A rule
        holds where any group's figure is above the threshold with at least `min_count` behind it;
        the alert's value is the worst such group's."""
        with self._lock:
            for rule in self.rules:
                if rule.kind == "quality_above":
                    self._update(rule, site, now, *_worst_group(rule, groups))

    def _update(self, rule: AlertRule, site: str, now: float, holds: bool, value: float | None,
                detail: str = "") -> None:
        key = (rule.name, site)
        alert = self._open.get(key)
        if not holds:
            if alert is not None:
                del self._open[key]
                if alert.fired_at is not None:
                    alert.resolved_at = now
                    self._resolved.append(alert)
            return
        if alert is None:
            alert = self._open[key] = _Alert(rule, site, pending_since=now)
        alert.value, alert.detail = value, detail
        if alert.fired_at is None and now - alert.pending_since >= rule.for_s:
            alert.fired_at = now

    @staticmethod
    def _holds(rule: AlertRule, reachable: bool, figures: Mapping[str, float]) -> tuple[bool, float | None]:
        if rule.kind == "site_unreachable":
            return not reachable, None
        if not reachable:
            return False, None  # a dead site's old figures say nothing new; the unreachable rule speaks
        value = figures.get(rule.metric or "")
        return (value is not None and value > (rule.threshold or 0.0)), value

    def forget(self, site: str) -> None:
        """Drop a removed site's alerts."""
        with self._lock:
            for key in [k for k in self._open if k[1] == site]:
                del self._open[key]

    def active(self, site: str | None = None) -> list[dict[str, Any]]:
        """Firing alerts, most severe first, then oldest first."""
        order = {"critical": 0, "warning": 1, "info": 2}
        with self._lock:
            self._expire_events(time.time())
            firing = [a for a in [*self._open.values(), *self._events]
                      if a.fired_at is not None and (site is None or a.site == site)]
            firing.sort(key=lambda a: (order[a.rule.severity], a.pending_since, a.site))
            return [a.to_dict() for a in firing]

    def all(self) -> list[dict[str, Any]]:
        """Firing alerts, then resolved ones newest first."""
        with self._lock:
            resolved = [a.to_dict() for a in reversed(self._resolved)]
        return self.active() + resolved


def _worst_group(rule: AlertRule, groups: list[Mapping[str, Any]]) -> tuple[bool, float | None, str]:
    """(holds, value, detail) of a quality_above rule over a site's groups."""
    metric = rule.metric or ""
    count_key = QUALITY_FIGURES.get(metric, "")
    figure = "oldest_age_s" if metric == "backlog_oldest_s" else metric
    worst: Mapping[str, Any] | None = None
    for g in groups:
        value, count = g.get(figure), g.get(count_key) or 0
        if value is None or count < rule.min_count or value <= (rule.threshold or 0.0):
            continue
        if worst is None or value > worst[figure]:
            worst = g
    if worst is None:
        return False, None, ""
    part = {"escape_rate": "escapes", "overkill_rate": "overkill", "automation_rate": "automatic"}.get(metric)
    counts = f"{worst.get(part, 0)}/{worst.get(count_key, 0)}" if part else f"{worst.get(count_key, 0)} waiting"
    product = worst.get("product") or "no product"
    return True, float(worst[figure]), f"{counts}, {product}, model {worst.get('model_version') or '?'}"
