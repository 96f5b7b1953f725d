"""Karmada Cluster objects as site views (`karmada.discovery`), and the Pull-mode registration steps
(`karmada.register`): quantities, free capacity, readiness, the planner's view, shell quoting."""

from __future__ import annotations

import shlex

import pytest

from configs.errors import InputError
from configs.runs import SiteCapacity
from coordinator.jobs.planner import Need, choose
from karmada.discovery import site_view
from karmada.register import pull_mode_steps
from raycluster.gateway import resources as ray_resources
from raycluster.k8s_quantity import parse_quantity

LABEL = "adcp.io/site"
GiB = 2**30


def cluster(name: str, *, labels=None, ready="True", message="ok", summary=None, sync_mode="Pull") -> dict:
    status: dict = {}
    if ready is not None:
        status["conditions"] = [{"type": "Ready", "status": ready, "reason": "R", "message": message}]
    if summary is not None:
        status["resourceSummary"] = summary
    return {"apiVersion": "cluster.karmada.io/v1alpha1", "kind": "Cluster",
            "metadata": {"name": name, "labels": labels or {}},
            "spec": {"syncMode": sync_mode, "apiEndpoint": "https://10.1.2.3:6443"}, "status": status}


@pytest.mark.parametrize("given, expected", [("3500m", 3.5), ("64Gi", 64 * GiB), ("2", 2.0), (4, 4.0),
                                             ("500Mi", 500 * 2**20), ("1k", 1000.0), ("250M", 250e6)])
def test_quantities(given, expected):
    assert parse_quantity(given) == expected


@pytest.mark.parametrize("bad", ["lots", "", "3.5.1", None])
def test_bad_quantity_is_an_input_error(bad):
    with pytest.raises(InputError, match="Kubernetes quantity"):
        parse_quantity(bad)


def test_free_capacity_is_allocatable_minus_allocated_minus_allocating():
    summary = {"allocatable": {"cpu": "16", "memory": "64Gi", "nvidia.com/gpu": "4", "pods": "110"},
               "allocated": {"cpu": "4500m", "memory": "16Gi", "nvidia.com/gpu": "1"},
               "allocating": {"cpu": "1", "nvidia.com/gpu": "2"}}
    view = site_view(cluster("member-a", labels={LABEL: "fab-a"}, summary=summary), site_label=LABEL)
    assert view["name"] == "fab-a" and view["cluster"] == "member-a"
    assert view["resources"]["total"] == {"CPU": 16.0, "GPU": 4.0, "memory": 64.0 * GiB,
                                          "object_store_memory": 0.0, "custom": {}}
    assert view["resources"]["available"] == {"CPU": 10.5, "GPU": 1.0, "memory": 48.0 * GiB,
                                              "object_store_memory": 0.0, "custom": {}}


def test_resources_have_the_shape_of_a_local_ray_cluster():
    local = ray_resources({"CPU": 4.0, "GPU": 1.0, "memory": 8.0, "object_store_memory": 1.0}, {})
    view = site_view(cluster("m", summary={"allocatable": {"cpu": "4"}}), site_label=LABEL)
    for part in ("total", "available"):
        assert view["resources"][part].keys() == local[part].keys()
        assert all(isinstance(view["resources"][part][k], float) for k in local[part] if k != "custom")


def test_overcommitted_cluster_has_nothing_free_not_negative():
    summary = {"allocatable": {"cpu": "2"}, "allocated": {"cpu": "2"}, "allocating": {"cpu": "500m"}}
    assert site_view(cluster("m", summary=summary), site_label=LABEL)["resources"]["available"]["CPU"] == 0.0


def test_not_ready_and_unknown_readiness():
    down = site_view(cluster("m", ready="False", message="cluster is not reachable"), site_label=LABEL)
    assert (down["ready"], down["ready_message"]) == (False, "cluster is not reachable")
    fresh = site_view(cluster("m2", ready=None), site_label=LABEL)
    assert fresh["ready"] is False and "no Ready condition" in fresh["ready_message"]
    assert fresh["name"] == "m2"  # no site label: the cluster name
    assert fresh["resources"]["total"]["CPU"] == 0.0


def test_sync_mode_defaults_to_push_and_endpoint_is_kept():
    obj = cluster("m")
    del obj["spec"]["syncMode"]
    view = site_view(obj, site_label=LABEL)
    assert view["sync_mode"] == "Push" and view["api_endpoint"] == "https://10.1.2.3:6443"


def test_planner_reads_site_views_like_local_sites():
    """How the coordinator builds its SiteCapacity from a site view: a GPU job goes to the site with GPUs free."""
    views = [
        site_view(cluster("member-a", labels={LABEL: "fab-a"},
                          summary={"allocatable": {"cpu": "8", "memory": "32Gi"}}), site_label=LABEL),
        site_view(cluster("member-b", labels={LABEL: "fab-b"},
                          summary={"allocatable": {"cpu": "32", "memory": "128Gi", "nvidia.com/gpu": "2"}}),
                  site_label=LABEL),
        site_view(cluster("member-c", labels={LABEL: "fab-c"}, ready="False", message="unreachable",
                          summary={"allocatable": {"cpu": "64", "nvidia.com/gpu": "8"}}), site_label=LABEL),
    ]
    known = ("CPU", "GPU", "memory")

    def amounts(res: dict) -> dict:
        return {k: float(res.get(k, 0)) for k in known}

    site_views = [SiteCapacity(name=v["name"], reachable=v["ready"], free=amounts(v["resources"]["available"]),
                               total=amounts(v["resources"]["total"]),
                               error=None if v["ready"] else v["ready_message"]) for v in views]
    site, why = choose("fab-a", Need(cpus=4, gpus=1), site_views, None)
    assert site == "fab-b", why


# --- registration steps ------------------------------------------------------------------------

def _commands(lines: list[str]) -> list[list[str]]:
    return [shlex.split(line) for line in lines if not line.startswith("#")]


def test_pull_mode_steps_name_the_cluster_context_and_label():
    lines = pull_mode_steps("fab-a", cluster="member-a", karmada_context="karmada-apiserver",
                            site_labels={LABEL: "fab-a"}, karmada_kubeconfig="/etc/k/karmada.config")
    cmds = _commands(lines)
    token = next(c for c in cmds if c[:3] == ["karmadactl", "token", "create"])
    assert "--print-register-command" in token
    assert token[token.index("--kubeconfig") + 1] == "/etc/k/karmada.config"
    assert token[token.index("--karmada-context") + 1] == "karmada-apiserver"
    register = next(c for c in cmds if c[:2] == ["karmadactl", "register"])
    for flag in ("--token", "--discovery-token-ca-cert-hash"):
        assert flag in register
    assert register[register.index("--cluster-name") + 1] == "member-a"
    label = next(c for c in cmds if c[:2] == ["kubectl", "label"])
    assert label[2:5] == ["cluster", "member-a", "adcp.io/site=fab-a"]
    assert label[label.index("--context") + 1] == "karmada-apiserver"
    assert any(c[:4] == ["kubectl", "-n", "karmada-system", "get"] and "karmada-agent" in c for c in cmds)
    assert any("proxyURL" in line for line in lines) and any("503" in line for line in lines)


def test_pull_mode_steps_quote_hostile_values():
    nasty = "x; rm -rf / #"
    lines = pull_mode_steps("fab-a", cluster=nasty, karmada_context=None, site_labels={LABEL: "a b"},
                            karmada_kubeconfig="/tmp/my config")
    cmds = _commands(lines)
    register = next(c for c in cmds if c[:2] == ["karmadactl", "register"])
    assert register[register.index("--cluster-name") + 1] == nasty
    label = next(c for c in cmds if c[:2] == ["kubectl", "label"])
    assert label[3:5] == [nasty, "adcp.io/site=a b"] and "--context" not in label
    assert all(c[c.index("--kubeconfig") + 1] == "/tmp/my config" for c in cmds if "label" in c or "token" in c)
