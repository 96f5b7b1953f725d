"""Monitoring without Ray: parsing a captured Ray metrics text, figures and rates from counters,
history downsampling and retention, alert rules (for_s, resolve), config messages, the Grafana
dashboard's queries, and the ADC app's metric recorder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from configs.monitoring import FIGURES, QUALITY_FIGURES, AlertRule, MonitoringConfig
from configs.platform import PlatformConfig
from coordinator.cli.monitoring import new_lines
from coordinator.monitoring.alerts import AlertEngine
from coordinator.monitoring.metrics_parse import (
    figures,
    histogram_quantile,
    parse_text,
    samples_from_promql,
    snapshot,
)
from coordinator.monitoring.monitor import parse_since
from coordinator.state.history import History, bucket_means
from serve_apps.metrics import EXPORTED, AppMetrics, route_of
from tests.sim_sites import SimFigures, ray_metrics_text

CAPTURE = Path(__file__).parents[1] / "data" / "ray_metrics.txt"
REPO = Path(__file__).parents[2]


def _values(text: str, name: str) -> list[float]:
    """Sample values of `name` read with a plain regex (independent of the parser under test)."""
    return [float(m) for m in re.findall(rf"^{name}{{[^}}]*}} (\S+)$", text, re.M)]


def test_captured_ray_text_gives_node_figures():
    text = CAPTURE.read_text()
    snap = snapshot(parse_text(text), t=100.0)
    g = snap.gauges
    assert g["cpu_util"] == pytest.approx(_values(text, "ray_node_cpu_utilization")[0])
    assert g["mem_used"] == pytest.approx(sum(_values(text, "ray_node_mem_used")))
    assert g["mem_total"] == pytest.approx(sum(_values(text, "ray_node_mem_total")))
    used, free = sum(_values(text, "ray_node_disk_usage")), sum(_values(text, "ray_node_disk_free"))
    assert g["disk_used"] == pytest.approx(used) and g["disk_total"] == pytest.approx(used + free)
    assert g["disk_util"] == pytest.approx(100 * used / (used + free))
    assert g["net_rx_bps"] == pytest.approx(sum(_values(text, "ray_node_network_receive_speed")))
    assert g["net_tx_bps"] == pytest.approx(sum(_values(text, "ray_node_network_send_speed")))
    assert g["object_store_used"] == pytest.approx(sum(_values(text, "ray_object_store_used_memory")))
    assert "gpu_util" not in g  # the capture's machine has no GPU


def test_captured_ray_text_gives_adc_counters():
    text = CAPTURE.read_text()
    snap = snapshot(parse_text(text), t=100.0)
    assert snap.counters["requests"] == pytest.approx(sum(_values(text, "ray_adc_requests_total")))
    assert snap.counters["images"] == pytest.approx(sum(_values(text, "ray_adc_images_total")))
    assert sum(snap.defect_mix.values()) == sum(_values(text, "ray_adc_decisions_total"))
    model = re.search(r'^ray_adc_model_info{[^}]*model="([^"]+)"[^}]*} 1\.0$', text, re.M).group(1)
    assert snap.model_version == model
    f = figures(None, snap)
    assert f["images_total"] == snap.counters["images"] and f["inference_rps"] == 0.0
    assert 0 <= f["automation_rate"] <= 1 and f["latency_p50_ms"] <= f["latency_p99_ms"]


def test_rates_and_shares_come_from_counter_deltas():
    a = snapshot(parse_text(ray_metrics_text(SimFigures(requests_ok=100, requests_5xx=0, reviews=10, autos=90))), 0.0)
    b = snapshot(parse_text(ray_metrics_text(SimFigures(requests_ok=130, requests_5xx=10, reviews=30, autos=110))),
                 10.0)
    f = figures(a, b)
    assert f["inference_rps"] == pytest.approx(40 / 10)
    assert f["error_rate"] == pytest.approx(10 / 40)  # in the window, not since the start (10/140)
    assert f["review_share"] == pytest.approx(20 / 40) and f["automation_rate"] == pytest.approx(0.5)
    # a restarted replica (counters went down) counts from zero, never a negative rate
    c = snapshot(parse_text(ray_metrics_text(SimFigures(requests_ok=5, requests_5xx=0, reviews=0, autos=5))), 20.0)
    assert figures(b, c)["inference_rps"] == pytest.approx(5 / 10)


def test_promql_answer_and_text_give_the_same_samples():
    text = ray_metrics_text(SimFigures(cpu=37.5))
    samples = parse_text(text)
    body = {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"__name__": n, **lb}, "value": [1.0, str(v)]} for n, lb, v in samples]}}
    assert snapshot(samples_from_promql(body), 1.0).gauges == snapshot(samples, 1.0).gauges
    with pytest.raises(ValueError):
        samples_from_promql({"status": "error", "error": "bad query"})


def test_histogram_quantile_interpolates_like_promql():
    buckets = {10.0: 50.0, 50.0: 90.0, float("inf"): 100.0}
    assert histogram_quantile(0.5, buckets) == pytest.approx(10.0)
    assert histogram_quantile(0.7, buckets) == pytest.approx(10 + 40 * (70 - 50) / 40)
    assert histogram_quantile(0.99, buckets) == pytest.approx(50.0)  # in +Inf: the last finite bound
    assert histogram_quantile(0.5, {}) is None


def test_history_keeps_raw_then_means_and_drops_past_retention(tmp_path):
    h = History(tmp_path / "db.sqlite", retention_s=600, raw_s=120, downsample_s=60)
    interval, now = 5.0, 10_000.0
    for i in range(400):  # 2000 s of sweeps, every 5 s
        t = now + i * interval
        h.write(t, {"a": {"cpu_util": float(i)}, "b": {"cpu_util": 1.0}})
    end = now + 399 * interval
    rows = h.read("a", ["cpu_util"], since=0)
    assert rows[0][0] >= end - 600 - 60  # nothing older than retention (plus one bucket not yet dropped)
    raw = [r for r in rows if r[0] >= end - 120]
    assert len(raw) >= 120 / interval - 1
    # raw points (compaction runs once per bucket, on whole buckets) + one mean per bucket
    bound = (120 + 2 * 60) / interval + 600 / 60 + 1
    assert h.count("a") <= bound, h.count("a")
    old = [r for r in rows if r[0] < end - 180]
    assert all(t % 60 == 0 for t, _ in old)  # merged into minute buckets
    first_t, first = old[0]
    members = [i for i in range(400) if first_t <= now + i * interval < first_t + 60]
    assert first["cpu_util"] == pytest.approx(sum(members) / len(members))
    h.close()


def test_bucket_means_skips_missing_values():
    rows = [(0.0, {"x": 1.0}), (1.0, {"x": 3.0, "y": 5.0}), (61.0, {"x": 7.0})]
    assert bucket_means(rows, 60) == [(0.0, {"x": 2.0, "y": 5.0}), (60.0, {"x": 7.0})]


def test_alert_fires_after_for_s_and_resolves():
    rule = AlertRule(name="hot", kind="metric_above", metric="cpu_util", threshold=90, for_s=10)
    down = AlertRule(name="gone", kind="site_unreachable", for_s=0, severity="critical")
    e = AlertEngine([rule, down])
    e.evaluate("fab-a", 0.0, True, {"cpu_util": 95})
    assert e.active() == []  # pending: not for 10 s yet
    e.evaluate("fab-a", 9.0, True, {"cpu_util": 99})
    assert e.active() == []
    e.evaluate("fab-a", 10.0, True, {"cpu_util": 97})
    [alert] = e.active()
    assert alert["rule"] == "hot" and alert["site"] == "fab-a" and alert["active"] and alert["value"] == 97
    e.evaluate("fab-a", 11.0, True, {"cpu_util": 50})
    assert e.active() == [] and e.all()[0]["resolved_at"] is not None and not e.all()[0]["active"]
    e.evaluate("fab-a", 12.0, True, {"cpu_util": 95})
    e.evaluate("fab-a", 13.0, True, {"cpu_util": 50})  # a blip shorter than for_s never fires
    assert len(e.all()) == 1
    e.evaluate("fab-b", 14.0, False, {})
    assert [a["rule"] for a in e.active()] == ["gone"]


def test_config_messages_say_what_was_given_and_what_is_allowed():
    with pytest.raises(ValidationError, match="Got \"cpu\" for metric. Allowed: cpu_util"):
        AlertRule(name="x", kind="metric_above", metric="cpu", threshold=1)
    with pytest.raises(ValidationError,
                       match="metric_above needs metric and threshold. Found: metric=cpu_util, threshold=None"):
        AlertRule(name="x", kind="metric_above", metric="cpu_util")
    with pytest.raises(ValidationError, match="timeout_s=9.0, interval_s=5.0"):
        MonitoringConfig(timeout_s=9)
    with pytest.raises(ValidationError, match="repeated: a"):
        MonitoringConfig(rules=[AlertRule(name="a", kind="site_unreachable")] * 2)
    with pytest.raises(ValidationError, match="extra"):
        MonitoringConfig(interval=3)


def test_platform_has_default_rules():
    platform = PlatformConfig.model_validate({"center": {"store": {"url": "/tmp/store"}}})
    rules = {r.name: r for r in platform.monitoring.rules}
    assert rules["site_unreachable"].for_s == 15
    assert (rules["cpu_high"].metric, rules["cpu_high"].threshold, rules["cpu_high"].for_s) == ("cpu_util", 90, 300)
    assert (rules["disk_high"].metric, rules["disk_high"].threshold) == ("disk_util", 90)
    assert (rules["review_share_high"].threshold, rules["review_share_high"].for_s) == (0.5, 600)
    assert (rules["error_rate_high"].threshold, rules["error_rate_high"].for_s) == (0.05, 300)
    assert all(r.metric in (QUALITY_FIGURES if r.kind == "quality_above" else FIGURES)
               for r in rules.values() if r.metric)


def test_parse_since_forms():
    assert parse_since("-1h", now=10_000.0) == 6400.0
    assert parse_since("1767225600") == 1767225600.0
    assert parse_since("2026-01-01T00:00:00Z") == 1767225600.0
    for bad in ("yesterday", "-1x", "-h", "nan"):
        with pytest.raises(Exception, match="for since"):
            parse_since(bad)


def test_new_lines_of_a_moving_tail():
    assert new_lines(["a", "b", "c"], ["b", "c", "d", "e"]) == ["d", "e"]
    assert new_lines([], ["a"]) == ["a"]
    assert new_lines(["x"], ["a", "b"]) == ["a", "b"]


def test_grafana_panels_query_only_exported_metrics():
    dash = json.loads((REPO / "monitoring" / "grafana-adc.json").read_text())
    assert any(v["type"] == "datasource" and v["query"] == "prometheus" for v in dash["templating"]["list"])
    exported = set(EXPORTED.values())
    series = {f"{n}{suffix}" for n in exported for suffix in ("", "_bucket", "_sum", "_count")}
    assert dash["panels"]
    for p in dash["panels"]:
        assert p["datasource"]["uid"] == "${datasource}"
        for target in p["targets"]:
            names = set(re.findall(r"\b(ray_[a-z_]+)", target["expr"]))
            assert names and names <= series, (p["title"], names - series)


def test_app_metrics_record_lazily(monkeypatch):
    recorded: list[tuple] = []

    class Fake:
        def __init__(self, name, **kw):
            self.name = name

        def inc(self, n=1, tags=None):
            recorded.append((self.name, "inc", n, tags))

        def observe(self, v, tags=None):
            recorded.append((self.name, "observe", v, tags))

        def set(self, v, tags=None):
            recorded.append((self.name, "set", v, tags))

    from ray.util import metrics as rm

    m = AppMetrics()  # no Ray metric object exists yet
    for cls in ("Counter", "Histogram", "Gauge"):
        monkeypatch.setattr(rm, cls, Fake)
    m.request("/v1/classify/batch", 200, 0.25, 3)
    m.request("/healthz", 200, 0.001, 0)  # not inference: not counted
    m.answers([{"class": "particle", "decision": "defect"}, {"class": "particle", "decision": "defect"},
               {"class": "scratch", "decision": "review"}])
    m.model("adc@1")
    m.model("adc@2")
    assert ("adc_requests", "inc", 1, {"route": "/v1/classify/batch", "status": "200"}) in recorded
    assert ("adc_images", "inc", 3, {"route": "/v1/classify/batch", "status": "200"}) in recorded
    assert ("adc_latency_ms", "observe", 250.0, {"route": "/v1/classify/batch"}) in recorded
    assert ("adc_decisions", "inc", 2, {"class": "particle", "decision": "defect"}) in recorded
    assert [r for r in recorded if r[0] == "adc_model_info"] == [
        ("adc_model_info", "set", 1, {"model": "adc@1"}), ("adc_model_info", "set", 0, {"model": "adc@1"}),
        ("adc_model_info", "set", 1, {"model": "adc@2"})]
    # re-recorded on each health check and request, so Ray keeps exporting it without a model change
    m.refresh()
    m.request("/v1/classify", 200, 0.01, 1)
    model_info = [r for r in recorded if r[0] == "adc_model_info"]
    assert model_info[-2:] == [("adc_model_info", "set", 1, {"model": "adc@2"})] * 2
    assert not any(r[3].get("route") == "other" for r in recorded if r[3] and "route" in r[3])
    assert route_of("/v2/models/adc/infer") == "/v2/infer" and route_of("/v1/model") == "other"
