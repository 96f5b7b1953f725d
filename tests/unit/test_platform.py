"""The platform file, the state DB and the direct gateway, without Ray or servers."""

from __future__ import annotations

import os

import pytest

from configs.errors import ConfigError, SiteError
from configs.platform import SiteConfig, load_platform
from coordinator.state.db import State
from raycluster.gateway import DirectGateway, gateway_for


def test_default_platform_has_two_local_sites_under_home(tmp_path):
    cfg = load_platform(home=tmp_path)
    assert [s.name for s in cfg.sites] == ["fab-a", "fab-b"]
    a, b = cfg.sites
    assert a.runtime.num_gpus == 0 and b.runtime.num_gpus > 0  # capacity differs
    assert a.store.url == (tmp_path / "sites" / "fab-a" / "store").as_uri() != b.store.url
    assert cfg.center.store.url == (tmp_path / "store").as_uri()
    assert cfg.center.state_db == f"{tmp_path}/coordinator.db"
    assert cfg.center.api.host == "127.0.0.1"
    assert b.local_config().num_gpus == b.runtime.num_gpus


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("sites: [{name: Fab_A, store: {url: /x}, runtime: {}}]", "DNS label"),
        ("sites: [{name: a, store: {url: /x}, runtime: {}}, {name: a, store: {url: /y}, runtime: {}}]", "repeated: a"),
        ("sites: [{name: a, store: {url: /x}}]", "needs gateway.dashboard"),
        ("sites: [{name: a, store: {url: relative/x}, runtime: {}}]", "absolute path"),
        ("center: {colour: blue}", "colour"),
        ("sites: [{name: a, store: {url: /x}, runtime: {}, transfer: sideways}]", "push"),
    ],
)
def test_bad_platform_files_name_the_problem(tmp_path, yaml_text, message):
    f = tmp_path / "p.yaml"
    f.write_text(yaml_text)
    with pytest.raises(ConfigError, match=message):
        load_platform(f, home=tmp_path)


def test_state_keeps_sites_and_transfers_across_reopen(tmp_path):
    db = tmp_path / "c.db"
    s = State(db)
    s.put_site("fab-x", {"name": "fab-x"}, "added")
    tid = s.start_transfer("dataset/a@1", "center", "fab-x", "push")
    s.finish_transfer(tid, result={"bytes_sent": 10, "bytes_skipped": 5, "objects_verified": 2, "seconds": 0.5})
    failed = s.start_transfer("dataset/a@2", "center", "fab-x", "push")
    s.finish_transfer(failed, error="disk full")
    s.close()
    s = State(db)
    assert [r["name"] for r in s.sites()] == ["fab-x"]
    rows = {r["id"]: r for r in s.transfers()}
    assert rows[tid]["status"] == "succeeded" and rows[tid]["bytes_sent"] == 10
    assert rows[failed]["status"] == "failed" and rows[failed]["error"] == "disk full"


def test_transfers_of_a_dead_process_are_marked_failed(tmp_path):
    s = State(tmp_path / "c.db")
    mine = s.start_transfer("dataset/a@1", "center", "fab-x", "push")
    s._exec("INSERT INTO transfers (id, ref, source, destination, direction, status, owner_pid, started_at) "
            "VALUES ('dead', 'dataset/a@1', 'center', 'fab-y', 'push', 'running', ?, 'x')", (2**22 + 7,))
    assert s.fail_orphaned_transfers() == 1
    rows = {r["id"]: r for r in s.transfers()}
    assert rows["dead"]["status"] == "failed" and "push again" in rows["dead"]["error"]
    assert rows[mine]["status"] == "running"  # this process is alive
    assert os.getpid() > 0


def test_direct_gateway_urls_and_headers():
    site = SiteConfig.model_validate({"name": "fab-c", "store": {"url": "/s"},
                                      "gateway": {"dashboard": "http://fab-c:8265/", "serve": "http://fab-c:8000"}})
    gw = gateway_for(site, token="t0k")
    assert isinstance(gw, DirectGateway)
    assert gw.url("dashboard", "/api/jobs/") == "http://fab-c:8265/api/jobs/"
    assert gw.headers("dashboard") == {"Authorization": "Bearer t0k"}
    with pytest.raises(SiteError, match="no metrics address"):
        gw.base_url("metrics")
