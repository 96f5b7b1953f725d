"""Verdicts back to the center through a running coordinator (`adcp up`, then its own process and
its scheduled sync): a fake review station registered as a site's Serve endpoint. The real Ray
site with the real review app is the end-to-end test's."""

from __future__ import annotations

import hashlib
import io
import json

import httpx
from PIL import Image

from coordinator.process import read_token, running
from data.annotations import read_annotations
from data.artifacts import ArtifactStore
from tests.fake_station import FakeStation, serve_station
from tests.platform_fixtures import run_cli, running_platform
from tests.waiting import wait_for


def png(n: int) -> bytes:
    out = io.BytesIO()
    Image.new("L", (6, 6), color=n).save(out, format="PNG")
    return out.getvalue()


def test_the_coordinator_pulls_verdicts_on_its_schedule_and_on_demand(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ADCP_REVIEW_SYNC_S", "1")  # the scheduled sync, fast for the test
    home = tmp_path / "home"
    with running_platform(home, {}) as home:
        url = running(home)["url"]
        auth = {"Authorization": f"Bearer {read_token(home)}"}
        pem = httpx.get(f"{url}/api/v1/review/public-key", headers=auth).raise_for_status().json()["public_key_pem"]
        with serve_station(FakeStation(pem, "fab-x", tmp_path / "store-x")) as station:
            station.verdict(png(1), "scratch", reviewer="ann")
            station.verdict(png(2), "particle", reviewer="ann")
            code, _, err = run_cli(capsys, home, "site", "add", "fab-x", "--dashboard", "http://127.0.0.1:9",
                                   "--serve", station.url, "--store", str(tmp_path / "store-x"))
            assert code == 0, err
            central = ArtifactStore(str(home / "store"))
            wait_for(lambda: central.versions("annotations", "reviewed-aoi"), timeout_s=60,
                     what="the scheduled sync to publish the verdicts")
            assert station.disabled  # each sync pushes the disabled list

            station.verdict(png(3), "mura", reviewer="bob", role="engineer")
            station.verdict(png(1), "particle", reviewer="bob", role="engineer")  # disagrees with ann
            code, out, err = run_cli(capsys, home, "review", "sync", "--json")
            assert code == 0, err
            body = json.loads(out)
            total = body["verdicts_new"]
            code, out, _ = run_cli(capsys, home, "review", "sync", "--json")
            assert json.loads(out)["verdicts_new"] == 0
            assert total <= 2  # the scheduled sync may have taken some; nothing counted twice
            wait_for(lambda: read_annotations(central, "reviewed-aoi").num_rows == 3, timeout_s=30,
                     what="three reviewed images")
            labels = {r["image_id"]: r["label"] for r in read_annotations(central, "reviewed-aoi").to_pylist()}
            assert labels[hashlib.sha256(png(1)).hexdigest()] == "particle"  # tie: the engineer's verdict

            code, out, _ = run_cli(capsys, home, "review", "conflicts", "--json")
            (c,) = json.loads(out)
            assert (c["label"], c["rule"]) == ("particle", "senior_role")
            code, out, _ = run_cli(capsys, home, "review", "queue", "--site", "fab-x", "--json")
            assert code == 0 and len(json.loads(out)) == 4

            code, out, _ = run_cli(capsys, home, "user", "add", "eve", "--role", "reviewer", "--sites", "fab-x")
            assert code == 0
            code, _, _ = run_cli(capsys, home, "user", "disable", "eve")
            assert code == 0
            wait_for(lambda: station.disabled[-1] == ["eve"], timeout_s=30, what="eve disabled at the station")
