"""The figures a release judges a site by: its live figures over a watch window, and the shadow
figures of a challenger beside the champion.

Watch figures come from the monitor's reads of the site's ADC app (Ray's metrics): the cumulative
request, error, answer and review counters and the latency histogram of the read at the window's
start (the baseline, stored with the release so a restarted coordinator goes on with the same
window) against the latest read, so the review share, error rate and p99 latency cover exactly the
requests of the window. The escape rate is the review station's, for the released model version at
the site (its audit sample, `coordinator.monitoring.quality`). `judge` compares them with a line's
`WatchLimits`; a figure counts only with `min_requests` behind it (audited false-defect calls for
the escape rate).

Shadow figures are the site review station's `GET /review/api/shadow?model_version=V` (with the
center's station token, through the site gateway); `combine_shadow` adds several sites' up.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import httpx

from configs.errors import SiteError
from configs.station_tokens import STATION_TOKEN_HEADER
from coordinator.monitoring.metrics_parse import Snapshot, histogram_quantile

if TYPE_CHECKING:
    from coordinator.center.core import Center
    from coordinator.monitoring.monitor import Monitor

__all__ = ["SHADOW_PATH", "WatchFigures", "combine_shadow", "counters", "judge", "shadow_figures",
           "window_figures"]

SHADOW_PATH = "/review/api/shadow"
_COUNTERS = ("requests", "errors", "answers", "reviews")
#: figure -> the WatchLimits field it must stay at or below.
LIMITS = {"review_share": "max_review_share", "error_rate": "max_error_rate", "latency_p99_ms": "max_p99_ms",
          "escape_rate": "max_escape_rate"}
_SHADOW_COUNTS = ("escapes", "audited_false_defect", "overkill", "audited_defect")


def counters(snap: Snapshot) -> dict[str, Any]:
    """A read's cumulative counters and latency histogram as JSON (bounds as strings, `inf` too)."""
    return {"t": snap.t, **{k: snap.counters.get(k, 0.0) for k in _COUNTERS},
            "buckets": {repr(float(le)): n for le, n in snap.buckets.items()},
            "model_version": snap.model_version}


def _grown(cur: float, base: float) -> float:
    """Counter growth; the whole count when it went down (the app's replicas restarted)."""
    return cur - base if cur >= base else cur


def window_figures(base: Mapping[str, Any], cur: Mapping[str, Any]) -> dict[str, Any]:
    """Requests, errors, answers and reviews between two `counters`, and the review share, error rate
    and p99 latency over them (None where nothing was counted)."""
    grown = {k: _grown(float(cur.get(k, 0.0)), float(base.get(k, 0.0))) for k in _COUNTERS}
    b0, b1 = base.get("buckets") or {}, cur.get("buckets") or {}
    delta = {float(le): n - float(b0.get(le, 0.0)) for le, n in b1.items()}
    if any(v < 0 for v in delta.values()):
        delta = {float(le): float(n) for le, n in b1.items()}
    p99 = histogram_quantile(0.99, delta) if delta else None
    out = {"requests": int(grown["requests"]), "errors": int(grown["errors"]), "answers": int(grown["answers"]),
           "reviews": int(grown["reviews"]),
           "review_share": grown["reviews"] / grown["answers"] if grown["answers"] > 0 else None,
           "error_rate": grown["errors"] / grown["requests"] if grown["requests"] > 0 else None,
           "latency_p99_ms": round(p99, 3) if p99 is not None and math.isfinite(p99) else None}
    return out


def judge(figures: Mapping[str, Any], limits: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The figures above their limit, `[{"figure", "value", "limit"}]`; none while fewer than
    `min_requests` requests are behind them (fewer audited false-defect calls, for the escape rate)."""
    enough = int(limits.get("min_requests", 0))
    crossed = []
    for figure, key in LIMITS.items():
        value, limit = figures.get(figure), limits.get(key)
        behind = figures.get("audited_false_defect", 0) if figure == "escape_rate" else figures.get("requests", 0)
        if value is None or limit is None or (behind or 0) < max(enough, 1 if figure == "escape_rate" else 0):
            continue
        if value > limit:
            crossed.append({"figure": figure, "value": value, "limit": limit})
    return crossed


class WatchFigures:
    """Watch figures of a site from a `Monitor` (its reads and its quality collector)."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor

    def baseline(self, site: str, after: float) -> dict[str, Any] | None:
        """The counters of the site's latest read if it was taken at or after `after` (unix seconds),
        else None (wait for the next sweep)."""
        snap = self.monitor.snapshot(site)
        return counters(snap) if snap is not None and snap.t >= after else None

    def figures(self, site: str, baseline: Mapping[str, Any], model_version: str) -> dict[str, Any]:
        """The window's figures since `baseline`, the escape rate of `model_version` at the site, and
        `at` (the read's time; None when the monitor has no read of the site)."""
        snap = self.monitor.snapshot(site)
        out = window_figures(baseline, counters(snap)) if snap is not None else window_figures(baseline, baseline)
        out["at"] = snap.t if snap is not None else None
        out["serving"] = snap.model_version if snap is not None else None
        rows = (self.monitor.quality.report(site).get("sites") or [{}])[0].get("by") or []
        mine = [g for g in rows if g.get("model_version") == model_version]
        escapes = sum(int(g.get("escapes") or 0) for g in mine)
        audited = sum(int(g.get("audited_false_defect") or 0) for g in mine)
        out.update(escapes=escapes, audited_false_defect=audited, escape_rate=escapes / audited if audited else None)
        return out


def shadow_figures(center: Center, site: str, model_version: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """The site station's shadow figures of challenger `model_version`; SiteError when it does not answer."""
    token = center.station_keys.center_token()
    gw = center.gateway(site)
    try:
        with gw.client("serve", timeout_s=timeout_s) as client:
            r = client.get(SHADOW_PATH, params={"model_version": model_version},
                           headers={STATION_TOKEN_HEADER: token})
    except httpx.HTTPError as e:
        raise SiteError(f"Shadow figures of {site} unreadable: {type(e).__name__}: {e}".rstrip(": ")) from e
    if r.status_code != 200:
        raise SiteError(f"The review station of {site} answered HTTP {r.status_code} to {SHADOW_PATH}: {r.text[:200]}")
    try:
        body = r.json()
    except ValueError as e:
        raise SiteError(f"The review station of {site} answered shadow figures that are not JSON") from e
    if not isinstance(body, dict):
        raise SiteError(f"The review station of {site} answered shadow figures that are not an object")
    return body


def _rates(counts: dict[str, int]) -> dict[str, Any]:
    audited, defects = counts["audited_false_defect"], counts["audited_defect"]
    return {**counts, "escape_rate": counts["escapes"] / audited if audited else None,
            "overkill_rate": counts["overkill"] / defects if defects else None}


def combine_shadow(per_site: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Several sites' shadow figures added up: shadowed, with_verdicts, agreement (weighted by
    shadowed images), and both models' escape and overkill counts with their rates."""
    shadowed = with_verdicts = 0
    agreeing = 0.0
    figs = {side: dict.fromkeys(_SHADOW_COUNTS, 0) for side in ("challenger_figures", "champion_figures")}
    for body in per_site:
        n = int(body.get("shadowed") or 0)
        shadowed += n
        with_verdicts += int(body.get("with_verdicts") or 0)
        agreeing += float(body.get("agreement") or 0.0) * n
        for side, acc in figs.items():
            for k in _SHADOW_COUNTS:
                acc[k] += int((body.get(side) or {}).get(k) or 0)
    return {"shadowed": shadowed, "with_verdicts": with_verdicts,
            "agreement": agreeing / shadowed if shadowed else None,
            **{side: _rates(acc) for side, acc in figs.items()}}
