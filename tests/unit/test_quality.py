"""Production quality (coordinator/monitoring/quality.py) without Ray: figures from hand-made stats
rows, null rates where nothing is behind them, a fake review station read with the center's token,
a stale site keeping its last figures, the quality alert rules (escape above the limit only with
enough audits behind it; backlog age; recording errors), and the figures through the coordinator's
`/api/v1/quality`, `/metrics`, `adcp quality --json` and `adcp top`."""

from __future__ import annotations

import io
import json
import socket
import threading

import httpx
import pytest
import uvicorn
from pydantic import ValidationError
from rich.console import Console

from configs.monitoring import AlertRule, MonitoringConfig
from configs.platform import PlatformConfig, SiteConfig
from coordinator.api.app import create_app
from coordinator.center.core import Center
from coordinator.cli.main import main
from coordinator.cli.monitoring import top_table
from coordinator.cli.quality import rate
from coordinator.monitoring.alerts import AlertEngine
from coordinator.monitoring.metrics_parse import figures as site_figures
from coordinator.monitoring.metrics_parse import parse_text, snapshot
from coordinator.monitoring.monitor import Monitor
from coordinator.monitoring.quality import QualityCollector, StatsRow, figures, group_figures
from raycluster.gateway import gateway_for
from tests.quality_fakes import CENTER_TOKEN, FakeStation, center_signed, row
from tests.waiting import wait_for

ROWS = [row("p1", "adc@1", classified=872, automatic=812, review=60, audited_false_defect=500, escapes=2,
            audited_defect=100, overkill=3, backlog=10, oldest_age_s=300.0),
        row("p1", "adc@2", classified=100, automatic=90, review=10, audited_false_defect=312, escapes=1,
            audited_defect=0, overkill=0, backlog=4, oldest_age_s=4000.0),
        row("p2", "adc@2", classified=28, automatic=28)]


def test_figures_sum_the_rows_and_each_rate_is_a_share_of_its_count():
    f = figures(ROWS)
    assert (f["classified"], f["automatic"], f["review"]) == (1000, 930, 70)
    assert f["automation_rate"] == pytest.approx(930 / 1000)
    assert (f["escapes"], f["audited_false_defect"]) == (3, 812) and f["escape_rate"] == pytest.approx(3 / 812)
    assert (f["overkill"], f["audited_defect"]) == (3, 100) and f["overkill_rate"] == pytest.approx(0.03)
    assert f["backlog"] == 14 and f["oldest_age_s"] == 4000.0  # the oldest of any group
    assert rate(f["escape_rate"], f["escapes"], f["audited_false_defect"]) == "0.37 % (3/812)"


def test_rates_are_null_when_nothing_is_behind_them():
    f = figures([row(classified=0, backlog=0, oldest_age_s=99.0)])
    assert f["automation_rate"] is None and f["escape_rate"] is None and f["overkill_rate"] is None
    assert f["oldest_age_s"] == 0.0  # no backlog: nothing is waiting, whatever the row said
    assert figures([])["classified"] == 0 and figures([])["automation_rate"] is None
    [p2] = [g for g in group_figures([StatsRow.model_validate(r) for r in ROWS]) if g["product"] == "p2"]
    assert p2["automation_rate"] == 1.0 and p2["escape_rate"] is None and p2["overkill_rate"] is None


def test_groups_per_product_and_model_version_sum_repeated_pairs():
    rows = [StatsRow.model_validate(r) for r in ROWS + [row("p1", "adc@1", classified=128, automatic=0)]]
    groups = group_figures(rows, {"p1": "55寸面板"})
    assert [(g["product"], g["model_version"]) for g in groups] == [("p1", "adc@1"), ("p1", "adc@2"), ("p2", "adc@2")]
    assert groups[0]["classified"] == 1000 and groups[0]["automation_rate"] == pytest.approx(0.812)
    assert groups[0]["product_display_name"] == "55寸面板" and groups[2]["product_display_name"] == "p2"


def _site(name: str, url: str, display_name: str | None = None) -> SiteConfig:
    return SiteConfig.model_validate({"name": name, "display_name": display_name, "store": {"url": f"/tmp/{name}"},
                                      "gateway": {"dashboard": url, "serve": url}})


def _collector(sites: list[SiteConfig], rules: list[AlertRule] | None = None, token=lambda: CENTER_TOKEN):
    cfg = MonitoringConfig(interval_s=1, timeout_s=0.5, rules=rules or [])
    return QualityCollector(lambda: sites, gateway_for, token, cfg, AlertEngine(cfg.rules))


def test_a_site_that_stops_answering_is_stale_and_keeps_its_last_figures():
    with FakeStation("fab-a", ROWS) as station:
        q = _collector([_site("fab-a", station.url, "北京一厂")])
        try:
            assert q.collect() == {"fab-a": "ok"}
            assert station.seen_tokens == [CENTER_TOKEN]
            [first] = q.report()["sites"]
            assert first["display_name"] == "北京一厂" and not first["stale"] and first["updated_at"]
            assert first["escape_rate"] == pytest.approx(3 / 812) and len(first["by"]) == 3
            station.mode = "error"
            assert "HTTP 503" in q.collect()["fab-a"]
            [failed] = q.report()["sites"]
            assert failed["stale"] and "503" in failed["error"]
            assert {k: failed[k] for k in ("escapes", "backlog", "by", "updated_at")} == \
                {k: first[k] for k in ("escapes", "backlog", "by", "updated_at")}
            station.mode = "hang"
            assert "within 0.5 s" in q.collect()["fab-a"] or "Timeout" in q.collect()["fab-a"]
            assert q.summary("fab-a")["stale"] and q.summary("fab-a")["escapes"] == 3
            station.mode, station.rows = "ok", [row(classified=5, automatic=5)]
            q.collect()
            assert not q.summary("fab-a")["stale"] and q.summary("fab-a")["classified"] == 5
        finally:
            q.stop()


def test_without_the_center_token_the_site_refuses_and_is_stale():
    with FakeStation("fab-a", ROWS) as station:
        q = _collector([_site("fab-a", station.url)], token=lambda: None)
        try:
            assert "HTTP 401" in q.collect()["fab-a"]
            assert station.seen_tokens == [None] and q.summary("fab-a")["stale"]
            [s] = q.report()["sites"]
            assert s["classified"] == 0 and s["automation_rate"] is None and s["by"] == []
        finally:
            q.stop()


def test_a_site_answering_for_another_site_or_bad_rows_is_stale():
    with FakeStation("fab-b", ROWS) as station:
        q = _collector([_site("fab-a", station.url)])
        try:
            assert "answered for site fab-b" in q.collect()["fab-a"]
            station.site, station.rows = "fab-a", [{"product": "p1", "classified": -3}]
            assert "not §7 rows" in q.collect()["fab-a"]
        finally:
            q.stop()


ESCAPE = AlertRule(name="escape_rate_high", kind="quality_above", metric="escape_rate", threshold=0.005,
                   min_count=200, severity="critical")
BACKLOG = AlertRule(name="review_backlog_old", kind="quality_above", metric="backlog_oldest_s", threshold=3600)


def _groups(*rows: dict) -> list[dict]:
    return group_figures([StatsRow.model_validate(r) for r in rows])


def test_escape_alert_fires_above_the_limit_only_with_enough_audits_behind_it():
    e = AlertEngine([ESCAPE])
    e.evaluate_quality("fab-a", 0.0, _groups(row(audited_false_defect=100, escapes=5)))  # 5 %, but 100 < 200
    assert e.active() == []
    e.evaluate_quality("fab-a", 1.0, _groups(row(audited_false_defect=400, escapes=2)))  # 0.5 %: not above
    assert e.active() == []
    e.evaluate_quality("fab-a", 2.0, _groups(row("p1", "adc@1", audited_false_defect=400, escapes=1),
                                             row("p2", "adc@3", audited_false_defect=250, escapes=3)))
    [alert] = e.active()
    assert alert["rule"] == "escape_rate_high" and alert["value"] == pytest.approx(3 / 250)
    assert "3/250" in alert["message"] and "p2" in alert["message"] and "adc@3" in alert["message"]
    e.evaluate("fab-a", 3.0, True, {"cpu_util": 1.0})  # the sweep's evaluation leaves quality rules alone
    assert len(e.active()) == 1
    e.evaluate_quality("fab-a", 4.0, _groups(row("p2", "adc@3", audited_false_defect=1000, escapes=3)))
    assert e.active() == [] and e.all()[0]["resolved_at"] is not None


def test_backlog_alert_fires_when_the_oldest_waits_too_long():
    e = AlertEngine([BACKLOG])
    e.evaluate_quality("fab-a", 0.0, _groups(row(backlog=3, oldest_age_s=3500.0)))
    assert e.active() == []
    e.evaluate_quality("fab-a", 1.0, _groups(row(backlog=3, oldest_age_s=3700.0)))
    assert [a["rule"] for a in e.active()] == ["review_backlog_old"] and "3 waiting" in e.active()[0]["message"]


def test_the_collector_judges_the_quality_rules_after_each_read():
    rows = [row(audited_false_defect=300, escapes=6)]
    with FakeStation("fab-a", rows) as station:
        q = _collector([_site("fab-a", station.url)], rules=[ESCAPE])
        try:
            q.collect()
            assert [a["site"] for a in q.alerts.active()] == ["fab-a"]
            station.mode = "error"
            q.collect()  # a stale site's alert stays as it was: nothing new is known
            assert len(q.alerts.active()) == 1
            station.mode, station.rows = "ok", [row(audited_false_defect=300, escapes=0)]
            q.collect()
            assert q.alerts.active() == []
        finally:
            q.stop()


def test_default_limits_and_rule_messages():
    rules = {r.name: r for r in MonitoringConfig().rules}
    assert (rules["escape_rate_high"].threshold, rules["escape_rate_high"].min_count) == (0.005, 200)
    assert rules["review_backlog_old"].threshold == 3600
    errors = rules["review_record_errors"]
    assert (errors.kind, errors.metric, errors.threshold) == ("metric_above", "review_record_errors", 0)
    with pytest.raises(ValidationError, match='Got "escape_rate" for metric. Allowed: cpu_util'):
        AlertRule(name="x", kind="metric_above", metric="escape_rate", threshold=0.01)
    with pytest.raises(ValidationError, match='Got "cpu_util" for metric. Allowed: escape_rate'):
        AlertRule(name="x", kind="quality_above", metric="cpu_util", threshold=1)
    with pytest.raises(ValidationError, match="min_count is for quality_above rules"):
        AlertRule(name="x", kind="metric_above", metric="cpu_util", threshold=1, min_count=5)


def _record_errors_text(n: float) -> str:
    return ("# TYPE ray_adcp_review_record_errors_total counter\n"
            f'ray_adcp_review_record_errors_total{{SessionName="s",replica="r1"}} {n}\n'
            f'ray_adcp_review_record_errors_total{{SessionName="s",replica="r2"}} 1.0\n')


def test_recording_errors_are_counted_since_the_previous_read_and_alert():
    a = snapshot(parse_text(_record_errors_text(4.0)), 0.0)
    b = snapshot(parse_text(_record_errors_text(6.0)), 5.0)
    assert "review_record_errors" not in site_figures(None, a)  # nothing claimed on the first read
    assert site_figures(a, b)["review_record_errors"] == 2.0 and site_figures(b, b)["review_record_errors"] == 0.0
    rule = next(r for r in MonitoringConfig().rules if r.name == "review_record_errors")
    e = AlertEngine([rule])
    e.evaluate("fab-a", 5.0, True, site_figures(a, b))
    assert [x["rule"] for x in e.active()] == ["review_record_errors"]
    e.evaluate("fab-a", 10.0, True, site_figures(b, b))
    assert e.active() == []


# --- through the coordinator: API route, /metrics, adcp quality --json, adcp top ------------

@pytest.fixture()
def coordinator(tmp_path, monkeypatch):
    with FakeStation("fab-a", ROWS) as a, FakeStation("fab-b", []) as b:
        cfg = PlatformConfig.model_validate({
            "center": {"state_db": str(tmp_path / "coordinator.db"), "store": {"url": str(tmp_path / "store")}},
            "sites": [_site("fab-a", a.url, "北京一厂").model_dump(mode="json"),
                      _site("fab-b", b.url).model_dump(mode="json")],
            "display_names": {"products": {"p1": "55寸面板"}},
            "monitoring": {"interval_s": 1, "timeout_s": 0.5}})
        center = Center(cfg, tmp_path)
        for station in (a, b):  # as the real station: the center's signature, subject "center"
            station.accepts = center_signed(center.station_keys.public_pem)
        monitor = Monitor(center)
        app = create_app(center, "t0ken", monitor=monitor)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        try:
            wait_for(lambda: server.started, 30, "the coordinator")
            monkeypatch.setenv("ADCP_API", url)
            monkeypatch.setenv("ADCP_TOKEN", "t0ken")
            assert monitor.quality.collect() == {"fab-a": "ok", "fab-b": "ok"}
            yield url, monitor, b
        finally:
            server.should_exit = True
            thread.join(timeout=30)
            sock.close()
            monitor.stop()
            center.close()


def _get(url: str, path: str, **params) -> httpx.Response:
    return httpx.get(url + path, params=params, headers={"Authorization": "Bearer t0ken"}, timeout=10)


def test_api_route_answers_every_site_with_the_counts_behind_each_rate(coordinator):
    url, _, _ = coordinator
    body = _get(url, "/api/v1/quality").json()
    a, b = body["sites"]
    keys = {"site", "display_name", "automation_rate", "classified", "automatic", "escape_rate", "escapes",
            "audited_false_defect", "overkill_rate", "overkill", "audited_defect", "backlog", "oldest_age_s",
            "stale", "updated_at", "by"}
    assert keys <= set(a) and a["site"] == "fab-a" and a["display_name"] == "北京一厂"
    assert (a["escapes"], a["audited_false_defect"], a["backlog"]) == (3, 812, 14)
    assert {"product", "model_version", "escape_rate", "escapes", "product_display_name"} <= set(a["by"][0])
    assert a["by"][0]["product_display_name"] == "55寸面板"
    assert b["display_name"] == "fab-b" and b["escape_rate"] is None and b["by"] == []
    only = _get(url, "/api/v1/quality", site="fab-b").json()
    assert [s["site"] for s in only["sites"]] == ["fab-b"]
    missing = _get(url, "/api/v1/quality", site="fab-z")
    assert missing.status_code == 404 and "fab-a" in missing.json()["allowed"]
    assert httpx.get(url + "/api/v1/quality", timeout=10).status_code == 401


def test_metrics_export_the_quality_gauges(coordinator):
    url, _, station_b = coordinator
    text = httpx.get(url + "/metrics", timeout=10).text
    assert 'adcp_quality_escape_rate{model_version="adc@1",product="p1",site="fab-a"} 0.004' in text
    assert 'adcp_quality_automation_rate{model_version="adc@2",product="p2",site="fab-a"} 1.0' in text
    assert 'adcp_quality_backlog_oldest_seconds{model_version="adc@2",product="p1",site="fab-a"} 4000.0' in text
    assert 'adcp_quality_audited{kind="false_defect",site="fab-a"} 812.0' in text
    assert 'adcp_quality_audited{kind="defect",site="fab-a"} 100.0' in text
    assert 'adcp_quality_escapes{site="fab-a"} 3.0' in text and 'adcp_quality_stale{site="fab-b"} 0.0' in text
    # a rate with nothing behind it is not exported (not a 0)
    assert 'adcp_quality_overkill_rate{model_version="adc@2",product="p1"' not in text
    assert 'site="fab-b"' not in "".join(ln for ln in text.splitlines() if ln.startswith("adcp_quality_escape_rate"))


def test_cli_json_is_the_apis_answer_and_the_table_shows_counts(coordinator, capsys):
    url, _, _ = coordinator
    assert main(["quality", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == _get(url, "/api/v1/quality").json()
    assert main(["quality", "--site", "fab-a", "--json"]) == 0
    assert [s["site"] for s in json.loads(capsys.readouterr().out)["sites"]] == ["fab-a"]
    assert main(["quality"]) == 0
    out = capsys.readouterr().out
    assert "0.37 % (3/812)" in out and "北京一厂" in out and "55寸面板" in out


def test_top_shows_quality_columns_from_the_overview(coordinator):
    url, _, _ = coordinator
    overview = _get(url, "/api/v1/overview").json()
    fab_a = next(s for s in overview["sites"] if s["name"] == "fab-a")
    assert fab_a["display_name"] == "北京一厂" and fab_a["quality"]["escapes"] == 3
    narrow, wide = io.StringIO(), io.StringIO()
    Console(file=narrow, width=80).print(top_table(overview))
    Console(file=wide, width=200).print(top_table(overview, wide=True))
    assert "escape" in narrow.getvalue() and "backlog" in narrow.getvalue() and "0.4%" in narrow.getvalue()
    assert "0.37 % (3/812)" in wide.getvalue() and "14 (67 min)" in wide.getvalue()
    assert max(len(line) for line in narrow.getvalue().splitlines()) <= 80
