"""`karmada.render`: both targets over three KubeRay sites validate against the CRDs, and what
Karmada delivers to each cluster (template + that site's OverridePolicy) is exactly what the
kuberay target renders for the site."""

from __future__ import annotations

import copy
import re

import pytest
import yaml

from configs.errors import ConfigError, InputError, NotFoundError
from configs.models import ServeConfig
from configs.platform import PlatformConfig
from karmada import _patch, policies, render
from raycluster import kuberay
from raycluster.k8s_names import label_value
from tests import crd_schema

LONG = "fab-" + "l" * 35 + "1"  # 40 characters, the longest site name
MODEL_URI = "s3://models/Ä-modèl 検査@v1"


def platform(**karmada) -> PlatformConfig:
    return PlatformConfig.model_validate({
        "center": {"store": {"url": "s3://center/store"}},
        "karmada": karmada,
        "sites": [
            {"name": LONG, "runtime": {"kind": "kuberay", "workers": [{"name": "cpu", "max_replicas": 6}]},
             "gateway": {"dashboard": "http://cpu.example:8265"}, "store": {"url": "s3://cpu/store"}},
            {"name": "fab-gpu", "registry": "reg.fab-gpu:5000", "store": {"url": "s3://gpu/store"},
             "gateway": {"dashboard": "http://gpu.example:8265"},
             "runtime": {"kind": "kuberay", "node_selector": {"topology.kubernetes.io/zone": "gpu-1"}, "workers": [
                 {"name": "cpu", "replicas": 2, "max_replicas": 8},
                 {"name": "GPU.Ä_big", "replicas": 1, "max_replicas": 4, "resources": {"cpu": "16", "gpus": 4},
                  "node_selector": {"nvidia.com/gpu.product": "H100"},
                  "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}]}},
            {"name": "fab-k", "runtime": {"kind": "kuberay"}, "store": {"url": "s3://k/store"},
             "gateway": {"kind": "karmada", "cluster": "member-3"}},
            {"name": "fab-local", "runtime": {"kind": "local"}, "store": {"url": "/tmp/adcp-local-store"}},
        ],
    })


def kube_sites(p: PlatformConfig):
    return [s for s in p.sites if s.runtime.kind == "kuberay"]


def all_objects(rendered):
    return [o for objs in rendered.values() for o in objs]


@pytest.mark.parametrize("target", ["kuberay", "karmada"])
@pytest.mark.parametrize("karmada", [{}, {"cluster_scoped": True},
                                     {"spread": {"sites": [LONG, "fab-gpu", "fab-k"], "weighting": "dynamic"}}])
def test_every_object_validates(target, karmada):
    rendered = render.render(platform(**karmada), target, serve=ServeConfig(app_name="adc-Ä"), model_uri=MODEL_URI)
    for obj in all_objects(rendered):
        assert crd_schema.errors(obj) == [], (obj["kind"], obj["metadata"]["name"])


def test_kuberay_target_is_each_sites_objects_with_its_registry():
    p = platform()
    rendered = render.render(p, "kuberay")
    assert set(rendered) == {f"{s.name}/{k}.yaml" for s in kube_sites(p) for k in ("raycluster", "rayservice")}
    for site in kube_sites(p):
        own = rendered[f"{site.name}/raycluster.yaml"][0]
        plain = kuberay.ray_cluster(site)
        images = _patch.image_paths(own)
        assert images
        for path in images:
            want = f"{site.registry}/{_patch.get(plain, path)}" if site.registry else _patch.get(plain, path)
            assert _patch.get(own, path) == want
            _set(plain, path, want)
        assert own == plain


def _set(doc, path, value):
    *parent, last = _patch.tokens(path)
    node = doc
    for t in parent:
        node = node[int(t)] if isinstance(node, list) else node[t]
    node[int(last) if isinstance(node, list) else last] = value


def _overrides(rendered, site, kind):
    return next(o for o in rendered[f"policies/override-{site.name}.yaml"]
                if o["spec"]["resourceSelectors"][0]["kind"] == kind)


@pytest.mark.parametrize("template_site", [None, "fab-gpu", "fab-k"])
def test_karmada_delivers_what_kuberay_renders(template_site):
    p = platform()
    serve = ServeConfig(num_replicas=3, app_name="adc-Ä")
    own = render.render(p, "kuberay", serve=serve, model_uri=MODEL_URI)
    rendered = render.render(p, "karmada", serve=serve, model_uri=MODEL_URI, template_site=template_site)
    for kind, file in (("RayCluster", "raycluster"), ("RayService", "rayservice")):
        template = rendered[f"templates/{file}.yaml"][0]
        for site in kube_sites(p):
            cluster = site.gateway.cluster if site.gateway.kind == "karmada" else site.name
            op = _overrides(rendered, site, kind)
            assert op["spec"]["overrideRules"][0]["targetCluster"] == {"clusterNames": [cluster]}
            delivered = policies.apply_overrides(template, op, cluster)
            mine = own[f"{site.name}/{file}.yaml"][0]
            assert delivered["spec"] == mine["spec"], (site.name, kind)
            assert delivered["metadata"] == mine["metadata"], (site.name, kind)


def test_registry_goes_through_an_image_overrider():
    rendered = render.render(platform(), "karmada")
    site = platform().site("fab-gpu")
    for kind in ("RayCluster", "RayService"):
        rules = _overrides(rendered, site, kind)["spec"]["overrideRules"][0]["overriders"]["imageOverrider"]
        assert rules and {(r["component"], r["operator"], r.get("value")) for r in rules} == {
            ("Registry", "replace", site.registry)}
        assert all(r["predicate"]["path"].endswith("/image") for r in rules)


def test_propagation_selects_sites_by_label():
    p = platform(site_label="example.com/adc-site")
    rendered = render.render(p, "karmada")
    (pp,) = rendered["policies/propagation.yaml"]
    assert pp["kind"] == "PropagationPolicy" and pp["metadata"]["namespace"] == p.karmada.namespace
    assert pp["spec"]["placement"]["clusterAffinity"]["labelSelector"]["matchExpressions"] == [
        {"key": "example.com/adc-site", "operator": "In", "values": [label_value(s.name) for s in kube_sites(p)]}]
    templates = [rendered["templates/raycluster.yaml"][0], rendered["templates/rayservice.yaml"][0]]
    assert pp["spec"]["resourceSelectors"] == [policies.resource_selector(t) for t in templates]
    assert pp["spec"]["failover"]["application"]["purgeMode"] == p.karmada.failover.purge_mode
    assert "policies/spread.yaml" not in rendered


def test_cluster_scoped_variant():
    rendered = render.render(platform(cluster_scoped=True), "karmada")
    kinds = {o["kind"] for o in all_objects(rendered)}
    assert {"ClusterPropagationPolicy", "ClusterOverridePolicy"} <= kinds
    assert not {"PropagationPolicy", "OverridePolicy"} & kinds
    for obj in all_objects(rendered):
        if obj["kind"].startswith("Cluster"):
            assert "namespace" not in obj["metadata"]


def test_failover_disabled():
    rendered = render.render(platform(failover={"enabled": False}), "karmada")
    assert "failover" not in rendered["policies/propagation.yaml"][0]["spec"]


@pytest.mark.parametrize("weighting", ["static", "dynamic"])
def test_spread_divides_the_rayservice(weighting):
    spread = {"sites": [LONG, "fab-gpu", "fab-k"], "weighting": weighting, "weights": {"fab-gpu": 3}}
    p = platform(spread=spread)
    rendered = render.render(p, "karmada")
    service = rendered["templates/rayservice.yaml"][0]
    (main,) = rendered["policies/propagation.yaml"]
    assert [s["kind"] for s in main["spec"]["resourceSelectors"]] == ["RayCluster"]
    (sp,) = rendered["policies/spread.yaml"]
    assert sp["spec"]["resourceSelectors"] == [policies.resource_selector(service)]
    rs = sp["spec"]["placement"]["replicaScheduling"]
    assert rs["replicaSchedulingType"] == "Divided"
    if weighting == "static":
        weights = {w["targetCluster"]["clusterNames"][0]: w["weight"]
                   for w in rs["weightPreference"]["staticWeightList"]}
        assert weights == {LONG: 1, "fab-gpu": 3, "member-3": 1}
    else:
        assert rs["weightPreference"] == {"dynamicWeight": "AvailableReplicas"}
    own = render.render(p, "kuberay")
    for site in kube_sites(p):
        op = _overrides(rendered, site, "RayService")
        assert not any(re.search(r"/workerGroupSpecs/\d+/replicas$", o["path"])
                       for o in op["spec"]["overrideRules"][0]["overriders"].get("plaintext", []))
        cluster = site.gateway.cluster if site.gateway.kind == "karmada" else site.name
        delivered = policies.apply_overrides(service, op, cluster)
        mine = copy.deepcopy(own[f"{site.name}/rayservice.yaml"][0])
        for obj in (delivered, mine):
            for g in obj["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
                g.pop("replicas")
        assert delivered["spec"] == mine["spec"]


def test_spread_must_cover_the_rendered_sites():
    with pytest.raises(ConfigError, match="fab-k"):
        render.render(platform(spread={"sites": [LONG, "fab-gpu"]}), "karmada")
    with pytest.raises(ConfigError, match="fab-nowhere"):
        render.render(platform(spread={"sites": ["fab-nowhere"]}), "karmada")


def test_sites_must_share_the_template_identity():
    p = platform()
    p.sites[1].runtime.namespace = "elsewhere"
    with pytest.raises(ConfigError, match="fab-gpu"):
        render.render(p, "karmada")
    p = platform()
    p.sites[2].runtime.cluster_name = "other"
    with pytest.raises(ConfigError, match="one template"):
        render.render(p, "karmada")
    assert render.render(p, "kuberay")  # each site alone is fine


def test_site_filter_and_errors():
    p = platform()
    assert set(render.render(p, "kuberay", sites=["fab-k"])) == {"fab-k/raycluster.yaml", "fab-k/rayservice.yaml"}
    with pytest.raises(NotFoundError) as e:
        render.render(p, "karmada", sites=["fab-x"])
    assert "fab-gpu" in str(e.value) and "fab-x" in str(e.value)
    with pytest.raises(ConfigError, match="fab-local"):
        render.render(p, "kuberay", sites=["fab-local"])
    only_local = PlatformConfig.model_validate({"center": {"store": {"url": "s3://c/s"}}, "sites": [
        {"name": "fab-a", "runtime": {"kind": "local"}, "store": {"url": "/tmp/a"}}]})
    with pytest.raises(ConfigError) as e:
        render.render(only_local, "kuberay")
    assert e.value.hint
    with pytest.raises(InputError):
        render.render(p, "helm")
    with pytest.raises(NotFoundError):
        render.render(p, "karmada", template_site="fab-local")


@pytest.mark.parametrize("target", ["kuberay", "karmada"])
def test_write_then_load(tmp_path, target):
    rendered = render.render(platform(), target, serve=ServeConfig(app_name="adc-Ä"), model_uri=MODEL_URI)
    paths = render.write(rendered, tmp_path / "out")
    assert [p.relative_to((tmp_path / "out").resolve()).as_posix() for p in paths] == list(rendered)
    assert not [p for p in (tmp_path / "out").rglob("*") if p.name.endswith(".tmp")]
    for path, objs in zip(paths, rendered.values()):
        assert render.load([path]) == objs
        assert list(yaml.safe_load_all(path.read_text(encoding="utf-8"))) == objs
    assert sorted(map(repr, render.load([tmp_path / "out"]))) == sorted(map(repr, all_objects(rendered)))
    services = [o for o in render.load([tmp_path / "out"]) if o["kind"] == "RayService"]
    assert services
    for svc in services:
        app = yaml.safe_load(svc["spec"]["serveConfigV2"])["applications"][0]
        assert app["deployments"][0]["user_config"]["model_uri"] == MODEL_URI and app["name"] == "adc-Ä"


def test_write_refuses_escaping_paths(tmp_path):
    with pytest.raises(InputError):
        render.write({"../evil.yaml": [{"a": 1}]}, tmp_path / "out")


def test_load_errors(tmp_path):
    with pytest.raises(NotFoundError):
        render.load([tmp_path / "missing.yaml"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [unclosed\n")
    with pytest.raises(InputError):
        render.load([bad])
    bad.write_text("just a string\n")
    with pytest.raises(InputError, match="mapping"):
        render.load([bad])


@pytest.mark.parametrize("cluster", ["existing", "own"])
def test_training_job_is_pinned(cluster):
    p = platform()
    job, pp = render.training_job(p, "fab-k", name="Train Ä big model", entrypoint="python -m train_jobs.train",
                                  runtime_env={"working_dir": "s3://k/code.zip"}, gpus=1, cluster=cluster)
    for obj in (job, pp):
        crd_schema.validate(obj)
    assert job["kind"] == "RayJob" and pp["kind"] == "PropagationPolicy"
    assert pp["spec"]["placement"]["clusterAffinity"] == {"clusterNames": ["member-3"]}
    assert pp["spec"]["resourceSelectors"] == [policies.resource_selector(job)]
    assert "failover" not in pp["spec"]
    with pytest.raises(NotFoundError):
        render.training_job(p, "fab-x", name="t", entrypoint="x", runtime_env={}, gpus=0, cluster="existing")
    with pytest.raises(ConfigError):
        render.training_job(p, "fab-local", name="t", entrypoint="x", runtime_env={}, gpus=0, cluster="existing")


def test_rebalancer_over_the_templates_validates():
    rendered = render.render(platform(), "karmada")
    templates = rendered["templates/raycluster.yaml"] + rendered["templates/rayservice.yaml"]
    crd_schema.validate(policies.workload_rebalancer("adcp-rebalance", templates))
