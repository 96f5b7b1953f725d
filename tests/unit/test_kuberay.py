"""KubeRay objects built from site configs (`raycluster.kuberay`): every object validates against
the upstream CRDs, and the parts that decide whether a site works are what the config says."""

from __future__ import annotations

import json
import math
import re
import shlex
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from configs.errors import ConfigError, InputError
from configs.kube import GPU_RESOURCE
from configs.models import ServeConfig
from configs.platform import KarmadaGateway, SiteConfig
from raycluster import kuberay
from tests.crd_schema import errors, validate

MODEL = "s3://bucket/models/adc/v3"
CODE = "s3://bucket/code/adc-1.2.zip"
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
ODD = ["x" * 200, "Fab.Line-3 GPU", "UPPER.case.Name", "Линия.Ä_3 GPU", "3-starts-with-digit", "日本"]

GPU_WORKERS = [
    {"name": "cpu", "replicas": 1, "min_replicas": 1, "max_replicas": 3,
     "resources": {"cpu": "4", "memory": "16Gi"}},
    {"name": "a100", "replicas": 1, "min_replicas": 0, "max_replicas": 4,
     "resources": {"cpu": "16", "memory": "64Gi", "gpus": 4},
     "node_selector": {"gpu-type": "a100"},
     "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
     "ray_resources": {"fab_gpu_node": 1, "weird'name": 0.5}},
]
CPU_WORKERS = [{"name": "cpu", "replicas": 2, "min_replicas": 1, "max_replicas": 6,
                "resources": {"cpu": "1500m", "memory": "6Gi"}}]
RUNTIMES: dict[str, dict[str, Any]] = {
    "default": {"kind": "kuberay"},
    "cpu-only": {"kind": "kuberay", "workers": CPU_WORKERS},
    "gpu": {"kind": "kuberay", "workers": GPU_WORKERS, "node_selector": {"pool": "ray"},
            "image_pull_secrets": ["harbor"], "service_account": "ray-sa", "env": {"HF_HOME": "/cache"}},
    "gpu-volcano": {"kind": "kuberay", "workers": GPU_WORKERS, "volcano_queue": "Train.Q ü"},
    "cpu-volcano": {"kind": "kuberay", "workers": CPU_WORKERS, "volcano_queue": "train"},
    "no-autoscaling": {"kind": "kuberay", "autoscaling": False, "head_schedules_work": True,
                       "metrics_port": 9090, "dashboard_port": 8266, "serve_port": 8001},
}


def make_site(runtime: dict[str, Any] | None, name: str = "fab-a") -> SiteConfig:
    return SiteConfig.model_validate({
        "name": name, "store": {"url": "s3://bucket/fab-a"}, "runtime": runtime,
        "gateway": {"kind": "karmada", "cluster": name}})


def has_gpus(site: SiteConfig) -> bool:
    return any(w.resources.gpus > 0 for w in site.runtime.workers)


BUILDERS: dict[str, Callable[[SiteConfig], dict]] = {
    "cluster": kuberay.ray_cluster,
    "service": lambda s: kuberay.ray_service(s, ServeConfig(), model_uri=MODEL, working_dir=CODE),
    "service-defaults": kuberay.ray_service,
    "job-existing": lambda s: kuberay.ray_job(s, name="train-1", entrypoint="python -m train_jobs.train",
                                              runtime_env={"working_dir": CODE}),
    "job-own": lambda s: kuberay.ray_job(s, name="train-2", entrypoint="python -m train_jobs.train",
                                         cluster="own", gpus=6 if has_gpus(s) else 0, cpus=3,
                                         active_deadline_s=7200),
}


def cluster_specs(obj: dict) -> list[dict]:
    spec = obj["spec"]
    return [s for s in (spec, spec.get("rayClusterConfig"), spec.get("rayClusterSpec"))
            if s and "headGroupSpec" in s]


def pod_templates(obj: dict) -> list[dict]:
    out = []
    for spec in cluster_specs(obj):
        out.append(spec["headGroupSpec"]["template"])
        out += [g["template"] for g in spec.get("workerGroupSpecs", [])]
    return out


@pytest.mark.parametrize("builder", BUILDERS)
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_every_object_validates(runtime: str, builder: str) -> None:
    site = make_site(RUNTIMES[runtime])
    obj = BUILDERS[builder](site)
    assert errors(obj) == []
    validate(obj)
    assert DNS1035.match(obj["metadata"]["name"]) and len(obj["metadata"]["name"]) <= 40
    assert obj["metadata"]["namespace"] == site.runtime.namespace
    assert yaml.safe_load(yaml.safe_dump(obj, sort_keys=False)) == obj  # plain data only
    for lbls in [obj["metadata"]["labels"]] + [t["metadata"]["labels"] for t in pod_templates(obj)]:
        assert lbls["app.kubernetes.io/name"] == "adcp"
        assert lbls["app.kubernetes.io/managed-by"] == "adcp"
        assert lbls["adcp.io/site"] == site.name
        assert lbls["app.kubernetes.io/component"] in ("cluster", "serve", "train")


@pytest.mark.parametrize("builder", BUILDERS)
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_every_pod_exports_metrics_and_knows_its_site(runtime: str, builder: str) -> None:
    site = make_site(RUNTIMES[runtime])
    rt = site.runtime
    obj = BUILDERS[builder](site)
    for spec in cluster_specs(obj):
        head = spec["headGroupSpec"]["rayStartParams"]
        assert head["metrics-export-port"] == str(rt.metrics_port)
        assert head["dashboard-host"] == "0.0.0.0"
        assert ("num-cpus" in head) is (not rt.head_schedules_work)
        for g in spec["workerGroupSpecs"]:
            assert g["rayStartParams"]["metrics-export-port"] == str(rt.metrics_port)
    for tmpl in pod_templates(obj):
        (container,) = tmpl["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["metrics"] == rt.metrics_port
        env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
        assert env["ADCP_SITE"] == site.name and env["ADCP_STORE"] == "s3://bucket/fab-a"
        assert rt.env.items() <= env.items()
        assert container["resources"]["requests"] == container["resources"]["limits"]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_cluster_follows_the_worker_config(runtime: str) -> None:
    site = make_site(RUNTIMES[runtime])
    rt = site.runtime
    spec = kuberay.ray_cluster(site)["spec"]
    assert spec["rayVersion"] == rt.ray_version
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["name"] == "ray-head"
    assert head["resources"]["limits"] == {"cpu": rt.head.cpu, "memory": rt.head.memory}
    assert {p["name"]: p["containerPort"] for p in head["ports"]}["dashboard"] == rt.dashboard_port
    assert len(spec["workerGroupSpecs"]) == len(rt.workers)
    for w, g in zip(rt.workers, spec["workerGroupSpecs"]):
        sizes = (g["replicas"], g["minReplicas"], g["maxReplicas"])
        assert sizes == (w.replicas, w.min_replicas, w.max_replicas)
        pod = g["template"]["spec"]
        resources = pod["containers"][0]["resources"]
        limits, requests = resources["limits"], resources["requests"]
        assert (limits["cpu"], limits["memory"]) == (w.resources.cpu, w.resources.memory)
        if w.resources.gpus:
            assert int(limits[GPU_RESOURCE]) == int(requests[GPU_RESOURCE]) == w.resources.gpus
            assert g["rayStartParams"]["num-gpus"] == str(w.resources.gpus)
        else:
            assert GPU_RESOURCE not in limits and "num-gpus" not in g["rayStartParams"]
        assert pod.get("nodeSelector", {}) == {**rt.node_selector, **w.node_selector}
        assert pod.get("tolerations", []) == w.tolerations
        if w.ray_resources:  # a shell word holding the JSON: KubeRay pastes it into `ray start`
            (word,) = shlex.split(g["rayStartParams"]["resources"])
            assert json.loads(word) == w.ray_resources
        assert pod.get("imagePullSecrets", []) == [{"name": s} for s in rt.image_pull_secrets]
        assert pod.get("serviceAccountName") == rt.service_account


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_autoscaling(runtime: str) -> None:
    site = make_site(RUNTIMES[runtime])
    rt = site.runtime
    spec = kuberay.ray_cluster(site)["spec"]
    assert spec["enableInTreeAutoscaling"] is rt.autoscaling
    if rt.autoscaling:
        assert spec["autoscalerOptions"] == {"idleTimeoutSeconds": rt.idle_timeout_s,
                                             "upscalingMode": "Default"}
    else:
        assert "autoscalerOptions" not in spec


@pytest.mark.parametrize("runtime,volcano", [("gpu-volcano", True), ("cpu-volcano", False),
                                             ("gpu", False), ("default", False)])
def test_volcano_labels_only_with_a_queue_and_gpus(runtime: str, volcano: bool) -> None:
    site = make_site(RUNTIMES[runtime])
    objs = {"cluster": kuberay.ray_cluster(site),
            "own-gpu": kuberay.ray_job(site, name="j", entrypoint="x", cluster="own",
                                       gpus=1 if has_gpus(site) else 0),
            "own-cpu": kuberay.ray_job(site, name="j", entrypoint="x", cluster="own"),
            "existing": kuberay.ray_job(site, name="j", entrypoint="x")}
    expect = {"cluster": volcano, "own-gpu": volcano, "own-cpu": False, "existing": False}
    for key, obj in objs.items():
        lbls = obj["metadata"]["labels"]
        assert (lbls.get("ray.io/scheduler-name") == "volcano") is expect[key], key
        if expect[key]:
            assert lbls["volcano.sh/queue-name"]  # the queue, as a valid label value
            validate(obj)


def test_serve_config_names_the_app_and_the_model() -> None:
    site = make_site(RUNTIMES["gpu"])
    serve = ServeConfig(app_name="ADC app.v2 Ä", route_prefix="/adc", num_replicas=3,
                        max_ongoing_requests=64)
    obj = kuberay.ray_service(site, serve, model_uri=MODEL, working_dir=CODE)
    cfg = yaml.safe_load(obj["spec"]["serveConfigV2"])
    app, review = cfg["applications"]
    assert review == {"name": "review", "import_path": "serve_apps.review:app", "route_prefix": "/review",
                      "runtime_env": {"working_dir": CODE}}
    assert app["name"] == serve.app_name and app["route_prefix"] == "/adc"
    assert app["import_path"] == "serve_apps.adc:app"
    assert app["runtime_env"] == {"working_dir": CODE}
    (dep,) = app["deployments"]
    assert dep["name"] == "ADCDeployment" and dep["num_replicas"] == 3 and dep["max_ongoing_requests"] == 64
    assert dep["user_config"] == {**serve.user_config.model_dump(), "model_uri": MODEL}
    assert dep["ray_actor_options"] == {"num_cpus": serve.replica_cpus, "num_gpus": serve.replica_gpus}
    assert cfg["http_options"]["port"] == site.runtime.serve_port


def test_serve_keeps_configured_model_and_has_no_working_dir_unless_given() -> None:
    serve = ServeConfig.model_validate({"user_config": {"model_uri": "file:///m/1"}})
    cfg = yaml.safe_load(kuberay.ray_service(make_site(RUNTIMES["default"]), serve)["spec"]["serveConfigV2"])
    app, review = cfg["applications"]
    assert "runtime_env" not in app and "runtime_env" not in review
    assert app["deployments"][0]["user_config"]["model_uri"] == "file:///m/1"


@pytest.mark.parametrize("replicas,cpus", [(1, 1.0), (5, 1.0), (7, 0.5), (2, 0.0)])
def test_serve_cpu_group_holds_the_replicas(replicas: int, cpus: float) -> None:
    site = make_site(RUNTIMES["cpu-only"])  # 1500m CPU per pod
    obj = kuberay.ray_service(site, ServeConfig(num_replicas=replicas, replica_cpus=cpus))
    validate(obj)
    (group,) = obj["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    per_pod = math.floor(1.5 / cpus) if cpus else replicas
    assert group["replicas"] == group["minReplicas"] == math.ceil(replicas / per_pod)
    assert group["maxReplicas"] >= group["replicas"]
    container = group["template"]["spec"]["containers"][0]
    assert GPU_RESOURCE not in container["resources"]["limits"]
    assert "serve" in {p["name"] for p in container["ports"]}


def test_serve_gpu_group_when_replicas_need_gpus() -> None:
    site = make_site(RUNTIMES["gpu"])  # a100 group: 4 GPUs, 16 CPUs per pod
    obj = kuberay.ray_service(site, ServeConfig(num_replicas=9, replica_gpus=1, replica_cpus=2))
    validate(obj)
    (group,) = obj["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert group["replicas"] == math.ceil(9 / 4)
    assert int(group["template"]["spec"]["containers"][0]["resources"]["limits"][GPU_RESOURCE]) == 4
    assert group["template"]["spec"]["tolerations"] == GPU_WORKERS[1]["tolerations"]


@pytest.mark.parametrize("runtime,serve", [
    ("cpu-only", ServeConfig(replica_gpus=1)),   # no GPU group at all
    ("cpu-only", ServeConfig(replica_cpus=2)),   # 2 CPUs do not fit a 1500m pod
    ("gpu", ServeConfig(replica_gpus=8)),        # 8 GPUs do not fit a 4-GPU pod
])
def test_serve_replicas_that_cannot_fit_are_refused(runtime: str, serve: ServeConfig) -> None:
    with pytest.raises(ConfigError):
        kuberay.ray_service(make_site(RUNTIMES[runtime]), serve)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_job_on_the_existing_cluster_selects_it(runtime: str) -> None:
    site = make_site(RUNTIMES[runtime])
    env = {"working_dir": CODE, "env_vars": {"A": "it's \"quoted\": yes"}}
    spec = kuberay.ray_job(site, name="t", entrypoint="python -m train_jobs.train --x 'a b'",
                           runtime_env=env, submission_mode="HTTPMode")["spec"]
    assert spec["clusterSelector"] == {"ray.io/cluster": kuberay.ray_cluster(site)["metadata"]["name"]}
    assert not {"rayClusterSpec", "shutdownAfterJobFinishes", "ttlSecondsAfterFinished"} & spec.keys()
    assert yaml.safe_load(spec["runtimeEnvYAML"]) == env
    assert spec["entrypoint"] == "python -m train_jobs.train --x 'a b'"
    assert spec["submissionMode"] == "HTTPMode"


@pytest.mark.parametrize("gpus,cpus", [(0, 0), (1, 0), (4, 0), (5, 0), (13, 9.5)])
def test_job_on_its_own_cluster_fits_its_gpus(gpus: int, cpus: float) -> None:
    site = make_site(RUNTIMES["gpu"])
    obj = kuberay.ray_job(site, name="own", entrypoint="x", cluster="own", gpus=gpus, cpus=cpus, ttl_s=600)
    validate(obj)
    spec = obj["spec"]
    assert "clusterSelector" not in spec
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] == 600
    cpu_group, gpu_group = spec["rayClusterSpec"]["workerGroupSpecs"]
    per_pod = GPU_WORKERS[1]["resources"]["gpus"]
    if gpus:
        assert gpu_group["replicas"] == gpu_group["minReplicas"] == math.ceil(gpus / per_pod)
        assert gpu_group["replicas"] * per_pod >= gpus
        assert gpu_group["maxReplicas"] >= gpu_group["replicas"]
    else:
        assert gpu_group["replicas"] == GPU_WORKERS[1]["replicas"]
    if cpus:
        assert cpu_group["replicas"] * 4 >= cpus > (cpu_group["replicas"] - 1) * 4


def test_job_keeps_its_cluster_when_asked() -> None:
    spec = kuberay.ray_job(make_site(RUNTIMES["gpu"]), name="j", entrypoint="x", cluster="own",
                           shutdown_after_finish=False)["spec"]
    assert spec["shutdownAfterJobFinishes"] is False
    assert "ttlSecondsAfterFinished" not in spec  # KubeRay rejects a TTL without shutdown
    assert "activeDeadlineSeconds" not in spec


@pytest.mark.parametrize("kwargs,error", [
    ({"submission_mode": "Batch"}, InputError),
    ({"submission_mode": "SidecarMode"}, InputError),   # KubeRay: no SidecarMode with clusterSelector
    ({"entrypoint": "  "}, InputError),
    ({"name": ""}, InputError),
    ({"active_deadline_s": 0}, InputError),
    ({"gpus": -1}, InputError),
    ({"cluster": "shared"}, InputError),
    ({"gpus": 9}, ConfigError),                          # more than the existing cluster can hold
])
def test_bad_job_arguments(kwargs: dict[str, Any], error: type[Exception]) -> None:
    site = make_site(RUNTIMES["default"])
    assert site.runtime.gpus < 9
    args = {"name": "j", "entrypoint": "x", **kwargs}
    with pytest.raises(error):
        kuberay.ray_job(site, **args)


def test_gpu_job_on_a_cpu_site_is_refused() -> None:
    with pytest.raises(ConfigError):
        kuberay.ray_job(make_site(RUNTIMES["cpu-only"]), name="j", entrypoint="x", cluster="own", gpus=1)


def test_sidecar_mode_on_own_cluster_is_allowed() -> None:
    validate(kuberay.ray_job(make_site(RUNTIMES["gpu"]), name="j", entrypoint="x", cluster="own",
                             submission_mode="SidecarMode"))


@pytest.mark.parametrize("runtime", [None, {"kind": "local"}])
def test_sites_without_kuberay_have_no_objects(runtime: dict | None) -> None:
    site = make_site(runtime)
    calls = [lambda: kuberay.ray_cluster(site), lambda: kuberay.ray_service(site),
             lambda: kuberay.ray_job(site, name="j", entrypoint="x"), lambda: kuberay.site_objects(site),
             lambda: kuberay.service_names(site)]
    for call in calls:
        with pytest.raises(ConfigError, match="kuberay"):
            call()


def test_site_objects_and_service_names_agree() -> None:
    site = make_site(RUNTIMES["no-autoscaling"])
    cluster, service = kuberay.site_objects(site, ServeConfig(), model_uri=MODEL)
    assert (cluster["kind"], service["kind"]) == ("RayCluster", "RayService")
    names = kuberay.service_names(site)
    rt = site.runtime
    assert names == {"dashboard": f"{cluster['metadata']['name']}-head-svc:{rt.dashboard_port}",
                     "serve": f"{service['metadata']['name']}-serve-svc:{rt.serve_port}",
                     "metrics": f"{cluster['metadata']['name']}-head-svc:{rt.metrics_port}"}
    KarmadaGateway(cluster="fab-a", dashboard_service=names["dashboard"], serve_service=names["serve"],
                   metrics_service=names["metrics"])


def test_default_service_names() -> None:
    assert kuberay.service_names(make_site(RUNTIMES["default"])) == {
        "dashboard": "adc-head-svc:8265", "serve": "adc-serve-serve-svc:8000", "metrics": "adc-head-svc:8080"}


@pytest.mark.parametrize("odd", ODD)
def test_odd_cluster_names(odd: str) -> None:
    site = make_site({"kind": "kuberay", "cluster_name": odd})
    cluster, service = kuberay.site_objects(site)
    for obj in (cluster, service):
        validate(obj)
        assert DNS1035.match(obj["metadata"]["name"]) and len(obj["metadata"]["name"]) <= 40
    assert cluster["metadata"]["annotations"]["adcp.io/name"] == odd
    job = kuberay.ray_job(site, name="j", entrypoint="x")
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
    for svc in kuberay.service_names(site).values():
        name = svc.split(":")[0]
        assert DNS1035.match(name) and len(name) <= 63


@pytest.mark.parametrize("odd", ODD)
def test_odd_job_group_and_app_names(odd: str) -> None:
    workers = [{**GPU_WORKERS[0], "name": odd}, {**GPU_WORKERS[1], "name": odd + " GPU"}]
    site = make_site({"kind": "kuberay", "workers": workers, "volcano_queue": odd})
    job = kuberay.ray_job(site, name=odd, entrypoint="x", cluster="own", gpus=2)
    explicit = kuberay.ray_cluster(site, name=odd)
    service = kuberay.ray_service(site, ServeConfig(app_name=odd), name=odd)
    for obj in (job, explicit, service):
        validate(obj)
        assert DNS1035.match(obj["metadata"]["name"]) and len(obj["metadata"]["name"]) <= 40
        assert obj["metadata"]["annotations"]["adcp.io/name"] == odd
    groups = [g["groupName"] for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]]
    assert all(DNS1035.match(g) for g in groups) and len(set(groups)) == 2
    assert yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["name"] == odd


def test_long_names_stay_different() -> None:
    a, b = "line-" * 40 + "a", "line-" * 40 + "b"
    site = make_site({"kind": "kuberay", "workers": [{"name": a}, {"name": b}]})
    groups = [g["groupName"] for g in kuberay.ray_cluster(site)["spec"]["workerGroupSpecs"]]
    assert groups[0] != groups[1]
    assert (kuberay.ray_job(site, name=a, entrypoint="x")["metadata"]["name"]
            != kuberay.ray_job(site, name=b, entrypoint="x")["metadata"]["name"])
    names = [kuberay.site_objects(make_site({"kind": "kuberay", "cluster_name": n})) for n in (a, b)]
    assert names[0][0]["metadata"]["name"] != names[1][0]["metadata"]["name"]
    assert names[0][1]["metadata"]["name"] != names[1][1]["metadata"]["name"]


@pytest.mark.parametrize("replica_gpus,volcano", [(0.0, False), (0.5, True)])
def test_volcano_on_the_serve_cluster_only_for_gpu_replicas(replica_gpus: float, volcano: bool) -> None:
    site = make_site(RUNTIMES["gpu-volcano"])
    obj = kuberay.ray_service(site, ServeConfig(replica_gpus=replica_gpus))
    validate(obj)
    assert (obj["metadata"]["labels"].get("ray.io/scheduler-name") == "volcano") is volcano
