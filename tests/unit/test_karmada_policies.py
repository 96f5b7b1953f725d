"""Karmada policies as data (karmada/policies.py) and the JSON-patch helpers behind the overrides:
every object validates against the upstream CRDs, and an OverridePolicy applied to its template
gives exactly the site's object."""

from __future__ import annotations

import copy
import json
import random

import pytest

from configs.errors import ConfigError, InputError
from configs.kube import FailoverConfig
from karmada import _patch, policies
from tests import crd_schema

NS = "ray-system"


def ray_cluster(name="adc", *, image="rayproject/ray:2.60.0-py311", workers=1, gpus=0, site="fab-a",
                namespace=NS, selector=None) -> dict:
    """A hand-made RayCluster (no raycluster.kuberay): head plus `workers` worker groups."""
    def pod(container):
        spec = {"containers": [container]}
        if selector:
            spec["nodeSelector"] = dict(selector)
        return {"metadata": {"labels": {"adcp.io/site": site}}, "spec": spec}

    limits = {"cpu": "2", "memory": "8Gi", **({"nvidia.com/gpu": str(gpus)} if gpus else {})}
    worker = {"name": "ray-worker", "image": image, "resources": {"limits": limits, "requests": dict(limits)},
              "env": [{"name": "ADCP_STORE", "value": f"s3://{site}/store"}]}
    return {
        "apiVersion": "ray.io/v1", "kind": "RayCluster",
        "metadata": {"name": name, "namespace": namespace, "labels": {"adcp.io/site": site, "only-a": "x"}},
        "spec": {
            "rayVersion": "2.60.0",
            "headGroupSpec": {"rayStartParams": {}, "template": pod({"name": "ray-head", "image": image})},
            "workerGroupSpecs": [
                {"groupName": f"g{i}", "replicas": 1 + i, "minReplicas": 0, "maxReplicas": 4, "rayStartParams": {},
                 "template": pod(copy.deepcopy(worker))} for i in range(workers)],
        },
    }


def test_resource_selector_names_the_object():
    obj = ray_cluster()
    assert policies.resource_selector(obj) == {"apiVersion": obj["apiVersion"], "kind": obj["kind"],
                                               "name": obj["metadata"]["name"], "namespace": NS}
    del obj["metadata"]["namespace"]
    assert "namespace" not in policies.resource_selector(obj)
    with pytest.raises(InputError):
        policies.resource_selector({"kind": "RayCluster"})


@pytest.mark.parametrize("cluster_scoped", [False, True])
def test_propagation_policy_validates(cluster_scoped):
    obj = ray_cluster()
    pp = policies.propagation_policy("Ray Sites.ä", [obj], namespace=None if cluster_scoped else NS,
                                     match_labels={"adcp.io/site": "fab-a"}, failover=FailoverConfig(),
                                     cluster_scoped=cluster_scoped, priority=5)
    crd_schema.validate(pp)
    assert pp["kind"] == ("ClusterPropagationPolicy" if cluster_scoped else "PropagationPolicy")
    assert ("namespace" in pp["metadata"]) is not cluster_scoped
    assert pp["spec"]["resourceSelectors"] == [policies.resource_selector(obj)]
    assert pp["spec"]["placement"]["clusterAffinity"]["labelSelector"]["matchLabels"] == {"adcp.io/site": "fab-a"}
    assert pp["spec"]["priority"] == 5 and pp["spec"]["propagateDeps"] is True


@pytest.mark.parametrize("mode, crd_mode", [("Gracefully", "Gracefully"), ("Never", "Never"),
                                            ("Directly", "Directly"), ("Immediately", "Directly")])
def test_failover_fields(mode, crd_mode):
    fo = FailoverConfig(toleration_s=45, purge_mode=mode, grace_period_s=77)
    pp = policies.propagation_policy("p", [ray_cluster()], namespace=NS, cluster_names=["m1"], failover=fo)
    crd_schema.validate(pp)
    app = pp["spec"]["failover"]["application"]
    assert app["decisionConditions"] == {"tolerationSeconds": 45}
    assert app["purgeMode"] == crd_mode
    assert app.get("gracePeriodSeconds") == (77 if crd_mode == "Gracefully" else None)


def test_failover_disabled_leaves_it_out():
    pp = policies.propagation_policy("p", [ray_cluster()], namespace=NS, cluster_names=["m1"],
                                     failover=FailoverConfig(enabled=False))
    assert "failover" not in pp["spec"]


def test_propagation_policy_refuses_bad_input():
    with pytest.raises(InputError, match="namespace"):
        policies.propagation_policy("p", [ray_cluster(namespace="other")], namespace=NS, cluster_names=["m1"])
    with pytest.raises(InputError, match="every member cluster"):
        policies.propagation_policy("p", [ray_cluster()], namespace=NS)
    with pytest.raises(InputError):
        policies.propagation_policy("p", [], namespace=NS, cluster_names=["m1"])
    with pytest.raises(InputError, match="namespace"):
        policies.propagation_policy("p", [ray_cluster()], namespace=None, cluster_names=["m1"])


def test_divided_static_weights():
    clusters = {"fab-a": "member-1", "fab-b": "fab-b"}
    rs = policies.divided_scheduling(["fab-a", "fab-b"], weighting="static", weights={"fab-b": 3},
                                     cluster_of=clusters.__getitem__)
    assert rs["replicaSchedulingType"] == "Divided" and rs["replicaDivisionPreference"] == "Weighted"
    got = {tuple(w["targetCluster"]["clusterNames"]): w["weight"] for w in rs["weightPreference"]["staticWeightList"]}
    assert got == {("member-1",): 1, ("fab-b",): 3}
    pp = policies.propagation_policy("spread", [ray_cluster()], namespace=NS, cluster_names=list(clusters.values()),
                                     replica_scheduling=rs)
    crd_schema.validate(pp)
    assert pp["spec"]["placement"]["replicaScheduling"] == rs


def test_divided_dynamic_weights():
    rs = policies.divided_scheduling(["fab-a"], weighting="dynamic", weights={}, cluster_of=str)
    assert rs["weightPreference"] == {"dynamicWeight": "AvailableReplicas"}
    crd_schema.validate(policies.propagation_policy("s", [ray_cluster()], namespace=NS, cluster_names=["fab-a"],
                                                    replica_scheduling=rs))


def test_divided_refuses_bad_weights():
    with pytest.raises(ConfigError, match="fab-x"):
        policies.divided_scheduling(["fab-a"], weighting="static", weights={"fab-x": 2}, cluster_of=str)
    with pytest.raises(ConfigError, match="at least 1"):
        policies.divided_scheduling(["fab-a"], weighting="static", weights={"fab-a": 0}, cluster_of=str)
    with pytest.raises(ConfigError):
        policies.divided_scheduling([], weighting="dynamic", weights={}, cluster_of=str)


SITE_VARIANTS = {
    "registry and GPUs": {"image": "reg.fab-b:5000/rayproject/ray:2.60.0-py311", "workers": 2, "gpus": 2,
                          "site": "fab-b", "selector": {"nvidia.com/gpu.product": "A100", "odd~key/x": "1"}},
    "registry removed": {"image": "rayproject/ray:2.60.0-py311", "workers": 0, "site": "fab-c"},
    "other tag": {"image": "localhost/ray:2.61", "workers": 1, "site": "fab-d"},
}


@pytest.mark.parametrize("variant", list(SITE_VARIANTS))
@pytest.mark.parametrize("cluster_scoped", [False, True])
def test_override_round_trip(variant, cluster_scoped):
    template = ray_cluster(image="harbor.center:443/rayproject/ray:2.60.0-py311")
    site = ray_cluster(**SITE_VARIANTS[variant])
    del site["metadata"]["labels"]["only-a"]
    site["metadata"]["labels"]["only-site"] = "y"
    op = policies.site_override_policy("adcp-override-x", template, site, cluster="member-9",
                                       namespace=None if cluster_scoped else NS, cluster_scoped=cluster_scoped)
    crd_schema.validate(op)
    delivered = policies.apply_overrides(template, op, "member-9")
    assert delivered["spec"] == site["spec"]
    assert delivered["metadata"] == site["metadata"]
    assert template == ray_cluster(image="harbor.center:443/rayproject/ray:2.60.0-py311")  # not mutated


def test_registry_difference_is_an_image_overrider():
    template = ray_cluster(workers=2)
    site = ray_cluster(workers=2, image="reg.fab-b:5000/rayproject/ray:2.60.0-py311")
    overriders = policies.site_override_policy("o", template, site, cluster="c", namespace=NS)[
        "spec"]["overrideRules"][0]["overriders"]
    assert "plaintext" not in overriders  # the image is the only difference
    paths = [r["predicate"]["path"] for r in overriders["imageOverrider"]]
    assert len(paths) == 3 and all(_patch.get(site, p).startswith("reg.fab-b:5000/") for p in paths)
    assert {(r["component"], r["operator"], r["value"]) for r in overriders["imageOverrider"]} == {
        ("Registry", "replace", "reg.fab-b:5000")}


def test_identical_site_gets_empty_overriders():
    op = policies.site_override_policy("o", ray_cluster(), ray_cluster(), cluster="c", namespace=NS)
    assert op["spec"]["overrideRules"][0]["overriders"] == {}
    crd_schema.validate(op)


def test_divided_override_leaves_worker_replicas_alone():
    template, site = ray_cluster(workers=2), ray_cluster(workers=2, site="fab-b")
    for g in site["spec"]["workerGroupSpecs"]:
        g["replicas"] += 5
    op = policies.site_override_policy("o", template, site, cluster="c", namespace=NS, divided=True)
    delivered = policies.apply_overrides(template, op, "c")
    assert [g["replicas"] for g in delivered["spec"]["workerGroupSpecs"]] == \
        [g["replicas"] for g in template["spec"]["workerGroupSpecs"]]
    for g in delivered["spec"]["workerGroupSpecs"] + site["spec"]["workerGroupSpecs"]:
        g.pop("replicas")
    assert delivered["spec"] == site["spec"]


def test_override_refuses_a_different_object():
    with pytest.raises(ConfigError, match="one template"):
        policies.site_override_policy("o", ray_cluster(), ray_cluster(name="other"), cluster="c", namespace=NS)


def test_apply_overrides_only_for_its_cluster_and_object():
    template, site = ray_cluster(), ray_cluster(site="fab-b", workers=3)
    op = policies.site_override_policy("o", template, site, cluster="member-2", namespace=NS)
    assert policies.apply_overrides(template, op, "member-1") == template
    other = ray_cluster(name="another")
    assert policies.apply_overrides(other, op, "member-2") == other
    excluded = copy.deepcopy(op)
    excluded["spec"]["overrideRules"][0]["targetCluster"]["exclude"] = ["member-2"]
    assert policies.apply_overrides(template, excluded, "member-2") == template


def test_apply_overrides_refuses_what_it_cannot_model():
    op = policies.site_override_policy("o", ray_cluster(), ray_cluster(site="b"), cluster="c", namespace=NS)
    op["spec"]["overrideRules"][0]["overriders"]["commandOverrider"] = [{"containerName": "x", "operator": "add"}]
    with pytest.raises(InputError, match="commandOverrider"):
        policies.apply_overrides(ray_cluster(), op, "c")
    bad = {"spec": {"overrideRules": [{"targetCluster": {"clusterNames": ["c"]},
                                       "overriders": {"plaintext": [{"operator": "replace", "path": "/spec/nope"}]}}]}}
    with pytest.raises(InputError, match="/spec/nope"):
        policies.apply_overrides(ray_cluster(), bad, "c")


def test_pinned_job_policy():
    job = {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "train-Ä", "namespace": NS},
           "spec": {"entrypoint": "python -m train_jobs.train"}}
    pp = policies.pinned_job_policy(job, "member-3", namespace=NS)
    crd_schema.validate(pp)
    assert pp["spec"]["placement"]["clusterAffinity"] == {"clusterNames": ["member-3"]}
    assert "failover" not in pp["spec"] and "replicaScheduling" not in pp["spec"]["placement"]
    assert pp["spec"]["resourceSelectors"] == [policies.resource_selector(job)]
    tolerated = {t["key"] for t in pp["spec"]["placement"]["clusterTolerations"]}
    assert {"cluster.karmada.io/not-ready", "cluster.karmada.io/unreachable"} <= tolerated
    with pytest.raises(InputError):
        policies.pinned_job_policy(job, "member-3", namespace="elsewhere")


def test_workload_rebalancer():
    objs = [ray_cluster(), ray_cluster(name="adc-serve")]
    wr = policies.workload_rebalancer("Rebalance after fab-b", objs)
    crd_schema.validate(wr)
    assert wr["spec"]["workloads"] == [policies.resource_selector(o) for o in objs]
    assert wr["spec"]["ttlSecondsAfterFinished"] == 300
    assert "ttlSecondsAfterFinished" not in policies.workload_rebalancer("r", objs, ttl_s=None)["spec"]
    with pytest.raises(InputError):
        policies.workload_rebalancer("r", [])
    with pytest.raises(InputError):
        policies.workload_rebalancer("r", objs, ttl_s=-1)


@pytest.mark.parametrize("image, host", [
    ("rayproject/ray:2.60.0", ""), ("nginx", ""), ("localhost/ray:1", "localhost"),
    ("reg:5000/a/b:c", "reg:5000"), ("harbor.example.com/ray/ray@sha256:" + "0" * 64, "harbor.example.com"),
])
def test_split_image_like_karmada(image, host):
    got_host, rest = _patch.split_image(image)
    assert got_host == host
    assert (f"{host}/{rest}" if host else rest) == image
    assert _patch.with_registry(image, "new.reg:1") == f"new.reg:1/{rest}"


def test_pointer_escapes():
    assert _patch.tokens(_patch.pointer("a/b", "c~d", 0)) == ["a/b", "c~d", "0"]
    assert _patch.pointer("nvidia.com/gpu") == "/nvidia.com~1gpu"


def _random_doc(rng: random.Random, depth: int = 0):
    kind = rng.choice(["dict", "list", "scalar"] if depth < 4 else ["scalar"])
    if kind == "dict":
        keys = rng.sample(["a", "b/c", "d~e", "nvidia.com/gpu", "x", "ä"], rng.randint(0, 4))
        return {k: _random_doc(rng, depth + 1) for k in keys}
    if kind == "list":
        return [_random_doc(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return rng.choice([0, 1, True, False, None, "s", 1.5, "1"])


def test_diff_then_apply_gives_the_target():
    rng = random.Random(7)
    for _ in range(500):
        old, new = _random_doc(rng), _random_doc(rng)
        ops = _patch.diff(old, new)
        assert json.dumps(_patch.apply(old, ops), sort_keys=True) == json.dumps(new, sort_keys=True)
        assert _patch.diff(new, new) == []
