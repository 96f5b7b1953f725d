"""`adcp status` for KubeRay sites behind Karmada: beside what Ray says through the gateway, each
row carries Karmada's view of the member cluster (Ready, sync mode, free/total capacity), read
from the (test double) Karmada apiserver; a missing Cluster or an unreadable apiserver is said so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.fake_kube import FakeKube, fake_kube_fixture  # noqa: F401  (registers the fake_kube fixture)
from tests.platform_fixtures import run_cli

pytestmark = pytest.mark.integration


def _platform(tmp_path: Path, kubeconfig: str) -> Path:
    site = lambda name, cluster: {"name": name, "runtime": {"kind": "kuberay"},  # noqa: E731
                                  "gateway": {"kind": "karmada", "cluster": cluster},
                                  "store": {"url": f"{{home}}/sites/{name}/store"}}
    doc = {"center": {"state_db": "{home}/coordinator.db", "store": {"url": "{home}/store"}},
           "karmada": {"kubeconfig": kubeconfig, "context": "fake"},
           "sites": [site("fab-a", "member-a"), site("fab-b", "member-b")]}
    path = tmp_path / "platform.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture()
def up(tmp_path, capsys):
    """`adcp up` a platform file (a coordinator with no local sites); `adcp down` after the test."""
    home = tmp_path / "home"

    def start(platform: Path) -> None:
        code, _, err = run_cli(capsys, home, "--platform", str(platform), "up")
        assert code == 0, err

    yield start
    run_cli(capsys, home, "down")


def test_status_carries_karmadas_view_of_each_member(fake_kube: FakeKube, tmp_path, capsys, up):
    fake_kube.set_cluster("member-a", sync_mode="Pull", labels={"adcp.io/site": "fab-a"},
                          allocatable={"cpu": "64", "memory": "256Gi", "nvidia.com/gpu": "8"},
                          allocated={"cpu": "12500m", "memory": "64Gi", "nvidia.com/gpu": "3"})
    platform = _platform(tmp_path, str(fake_kube.kubeconfig))
    up(platform)
    code, out, err = run_cli(capsys, tmp_path / "home", "status", "--json")
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads(out)["sites"]}
    a, b = rows["fab-a"]["cluster"], rows["fab-b"]["cluster"]
    assert a["ready"] and a["sync_mode"] == "Pull"
    assert a["resources"]["available"]["GPU"] == 5 and a["resources"]["available"]["CPU"] == 51.5
    assert not b["ready"] and "no such Cluster" in b["ready_message"]
    # the Ray side goes through the aggregated proxy, which this apiserver does not serve
    assert not rows["fab-a"]["reachable"] and "404" in rows["fab-a"]["error"]
    code, out, err = run_cli(capsys, tmp_path / "home", "status")
    assert code == 0 and "member-a" in out and "5/8" in out, out


def test_unreadable_karmada_is_reported_per_site(fake_kube: FakeKube, tmp_path, capsys, up):
    platform = _platform(tmp_path, str(fake_kube.kubeconfig))
    up(platform)
    fake_kube.stop()
    code, out, err = run_cli(capsys, tmp_path / "home", "status", "--json")
    assert code == 0, err
    for row in json.loads(out)["sites"]:
        assert not row["cluster"]["ready"] and "cannot read Karmada" in row["cluster"]["ready_message"]
