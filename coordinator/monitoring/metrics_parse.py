"""A site's figures from Ray's Prometheus metrics, read either as the text a Ray head exports or as
the samples a site Prometheus returns for an instant PromQL query: both become the same list of
samples, so the two paths compute the same figures.

Ray's names (measured on Ray 2.60): node gauges `ray_node_cpu_utilization` (%),
`ray_node_mem_used/_total`, `ray_node_disk_usage/_free` (bytes), `ray_node_network_receive_speed /
send_speed` (bytes/s), `ray_node_gpus_utilization` (%), `ray_node_gram_used/_available` (MiB, per
GPU), `ray_object_store_used_memory` (bytes); the ADC app's own series are in
`serve_apps.metrics.EXPORTED`, its review recorder's errors in `adcp_review_record_errors_total`
(`ray_`-prefixed as Ray exports application metrics).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["PROMQL_SELECTOR", "Sample", "Snapshot", "figures", "histogram_quantile", "parse_text",
           "samples_from_promql", "snapshot"]

Sample = tuple[str, dict[str, str], float]

_WANTED = ("ray_node_", "ray_object_store_used_memory", "ray_adc_", "ray_adcp_review_", "adcp_review_")
#: What the PromQL path asks a site Prometheus for: the same series the text path reads.
PROMQL_SELECTOR = '{__name__=~"ray_node_.*|ray_object_store_used_memory|ray_adc_.*|(ray_)?adcp_review_.*"}'
_RECORD_ERRORS = ("ray_adcp_review_record_errors_total", "adcp_review_record_errors_total")
_LINE = re.compile(r"^(?:# (?:HELP|TYPE) )?([a-zA-Z_:][a-zA-Z0-9_:]*)")
_MIB = 1024 * 1024


def parse_text(text: str) -> list[Sample]:
    """The samples of the series we read, from Prometheus text exposition (Ray exports ~600 KB per
    head, nearly all of it per-worker series we do not need, so other lines are dropped before the
    parser sees them)."""
    kept = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if m and m.group(1).startswith(_WANTED):
            kept.append(line)
    out: list[Sample] = []
    for family in text_string_to_metric_families("\n".join(kept) + "\n"):
        for s in family.samples:
            out.append((s.name, dict(s.labels), float(s.value)))
    return out


def samples_from_promql(body: dict[str, Any]) -> list[Sample]:
    """Samples from a Prometheus `/api/v1/query` answer (resultType vector); ValueError when the
    answer is not one."""
    data = body.get("data") or {}
    if body.get("status") != "success" or data.get("resultType") != "vector":
        raise ValueError(f"not a successful vector answer: {str(body)[:200]}")
    out: list[Sample] = []
    for row in data.get("result") or []:
        labels = dict(row["metric"])
        name = labels.pop("__name__", "")
        out.append((name, labels, float(row["value"][1])))
    return out


@dataclass
class Snapshot:
    """What one read of a site gave: instantaneous figures, and the cumulative counters from
    which rates and shares over the time since the previous read are computed."""

    t: float
    gauges: dict[str, float] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)
    buckets: dict[float, float] = field(default_factory=dict)  # latency histogram: le (ms) -> count
    defect_mix: dict[str, int] = field(default_factory=dict)
    model_version: str | None = None


def _sum(samples: Iterable[Sample], name: str) -> float | None:
    values = [v for n, _, v in samples if n == name and math.isfinite(v)]
    return sum(values) if values else None


def _node_gauges(samples: list[Sample]) -> dict[str, float]:
    g: dict[str, float] = {}
    cpu = [(lb.get("ip", ""), v) for n, lb, v in samples if n == "ray_node_cpu_utilization"]
    counts = {lb.get("ip", ""): v for n, lb, v in samples if n == "ray_node_cpu_count"}
    if cpu:
        weights = [counts.get(ip, 1.0) or 1.0 for ip, _ in cpu]
        g["cpu_util"] = sum(w * v for w, (_, v) in zip(weights, cpu)) / sum(weights)
    pairs = {"mem_used": "ray_node_mem_used", "mem_total": "ray_node_mem_total", "disk_used": "ray_node_disk_usage",
             "net_rx_bps": "ray_node_network_receive_speed", "net_tx_bps": "ray_node_network_send_speed",
             "object_store_used": "ray_object_store_used_memory"}
    for figure, name in pairs.items():
        value = _sum(samples, name)
        if value is not None:
            g[figure] = value
    free = _sum(samples, "ray_node_disk_free")
    if "disk_used" in g and free is not None:
        g["disk_total"] = g["disk_used"] + free
    gpu = [v for n, _, v in samples if n == "ray_node_gpus_utilization"]
    if gpu:
        g["gpu_util"] = sum(gpu) / len(gpu)
        used, avail = _sum(samples, "ray_node_gram_used"), _sum(samples, "ray_node_gram_available")
        if used is not None:
            g["gpu_mem_used"] = used * _MIB
            if avail is not None:
                g["gpu_mem_total"] = (used + avail) * _MIB
    for pct, (used_key, total_key) in {"mem_util": ("mem_used", "mem_total"),
                                       "disk_util": ("disk_used", "disk_total")}.items():
        if g.get(total_key):
            g[pct] = 100.0 * g[used_key] / g[total_key]
    return g


def snapshot(samples: list[Sample], t: float) -> Snapshot:
    """Node gauges and the ADC app's cumulative counters of one read at unix time `t`."""
    snap = Snapshot(t=t, gauges=_node_gauges(samples))
    c = snap.counters
    for name, labels, value in samples:
        if name == "ray_adc_requests_total":
            c["requests"] = c.get("requests", 0.0) + value
            if labels.get("status", "").startswith("5"):
                c["errors"] = c.get("errors", 0.0) + value
        elif name == "ray_adc_images_total":
            c["images"] = c.get("images", 0.0) + value
        elif name == "ray_adc_decisions_total":
            c["answers"] = c.get("answers", 0.0) + value
            if labels.get("decision") == "review":
                c["reviews"] = c.get("reviews", 0.0) + value
            cls = labels.get("class", "?")
            snap.defect_mix[cls] = snap.defect_mix.get(cls, 0) + int(value)
        elif name == "ray_adc_latency_ms_bucket":
            le = float(labels.get("le", "inf"))
            snap.buckets[le] = snap.buckets.get(le, 0.0) + value
        elif name == "ray_adc_model_info" and value >= 1:
            snap.model_version = labels.get("model")
        elif name in _RECORD_ERRORS:
            c["record_errors"] = c.get("record_errors", 0.0) + value
    return snap


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """The q-quantile of a cumulative histogram {upper bound: count}, interpolated linearly within
    its bucket as PromQL's histogram_quantile does; None with no observations."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    total = buckets[bounds[-1]]
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for b in bounds:
        count = buckets[b]
        if count >= rank:
            if math.isinf(b):
                return prev_bound  # beyond the last finite bound: its value is the best we know
            if count == prev_count:
                return b
            return prev_bound + (b - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = b, count
    return prev_bound


def _window(prev: Snapshot | None, cur: Snapshot, key: str) -> float:
    """Counter growth since `prev`; the whole count after a restart (counter went down) or with no
    previous read."""
    now = cur.counters.get(key, 0.0)
    before = prev.counters.get(key, 0.0) if prev else 0.0
    return now - before if now >= before else now


def figures(prev: Snapshot | None, cur: Snapshot) -> dict[str, float]:
    """Every figure of a read. Shares and latency quantiles cover the requests since the previous
    read, or every request so far when none arrived in between; `inference_rps` is the request rate
    over that window (0 with no previous read)."""
    out = dict(cur.gauges)
    if prev is not None and "record_errors" in cur.counters:  # errors since the last read, none claimed at the first
        out["review_record_errors"] = _window(prev, cur, "record_errors")
    if not cur.counters and not cur.buckets:
        return out  # no ADC app here
    out["images_total"] = cur.counters.get("images", 0.0)
    dt = cur.t - prev.t if prev else 0.0
    requests = _window(prev, cur, "requests")
    out["inference_rps"] = requests / dt if dt > 0 else 0.0
    fresh = requests > 0 and prev is not None

    def share(part: str, whole: str) -> float | None:
        if fresh and _window(prev, cur, whole) > 0:
            return _window(prev, cur, part) / _window(prev, cur, whole)
        total = cur.counters.get(whole, 0.0)
        return cur.counters.get(part, 0.0) / total if total else None

    for name, (part, whole) in {"error_rate": ("errors", "requests"), "review_share": ("reviews", "answers")}.items():
        value = share(part, whole)
        if value is not None:
            out[name] = value
    if "review_share" in out:
        out["automation_rate"] = 1.0 - out["review_share"]
    buckets = cur.buckets
    if fresh and prev and prev.buckets:
        delta = {b: c - prev.buckets.get(b, 0.0) for b, c in cur.buckets.items()}
        if all(v >= 0 for v in delta.values()) and max(delta.values(), default=0) > 0:
            buckets = delta
    for name, q in (("latency_p50_ms", 0.5), ("latency_p99_ms", 0.99)):
        value = histogram_quantile(q, buckets)
        if value is not None:
            out[name] = value
    return out
