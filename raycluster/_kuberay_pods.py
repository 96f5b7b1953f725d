"""Pod-level pieces of the KubeRay objects: head and worker group specs, containers, labels.

`raycluster.kuberay` assembles these into RayCluster, RayService and RayJob. Everything here is a
pure function from the config models to plain dicts (the shape of KubeRay's `ray.io/v1` types).
"""

from __future__ import annotations

import json
import math
import re
import shlex
from dataclasses import dataclass, field
from typing import Any, Literal

from configs.errors import ConfigError
from configs.kube import GPU_RESOURCE, KubeRayRuntime, PodResources, WorkerGroupConfig
from configs.platform import SiteConfig
from raycluster.k8s_names import dns_label, label_value

#: Longest RayCluster/RayService/RayJob name we render. KubeRay allows 53 (clusters) and 47
#: (services, jobs: it appends 6 characters for the cluster they own); 40 leaves room for the
#: names it derives (`<name>-head-svc`, `<name>-serve-svc`, `<name>-<group>-worker-xxxxx`).
MAX_NAME = 40
#: Longest worker groupName: it shows up in pod names and in the `ray.io/group` label.
MAX_GROUP = 24
GCS_PORT = 6379
CLIENT_PORT = 10001
Component = Literal["cluster", "serve", "train"]


@dataclass(frozen=True)
class Group:
    """One worker group as rendered: the config plus the sizes a builder chose for it."""

    name: str
    replicas: int
    min_replicas: int
    max_replicas: int
    resources: PodResources
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, str]] = field(default_factory=list)
    ray_resources: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, w: WorkerGroupConfig, *, name: str | None = None, replicas: int | None = None) -> Group:
        """`w` as configured, or resized to at least `replicas` pods (min raised, max widened)."""
        if replicas is None:
            rep, lo, hi = w.replicas, w.min_replicas, w.max_replicas
        else:
            rep, lo, hi = replicas, replicas, max(replicas, w.max_replicas)
        return cls(name=name or w.name, replicas=rep, min_replicas=lo, max_replicas=hi,
                   resources=w.resources, node_selector=dict(w.node_selector),
                   tolerations=list(w.tolerations), ray_resources=dict(w.ray_resources))


def kuberay_runtime(site: SiteConfig) -> KubeRayRuntime:
    """The site's KubeRay runtime; ConfigError for a local site or one without a runtime."""
    rt = site.runtime
    if not isinstance(rt, KubeRayRuntime):
        kind = getattr(rt, "kind", None) or "none"
        raise ConfigError(
            f"Site {site.name} has runtime '{kind}', so it has no KubeRay objects.",
            allowed="runtime.kind: kuberay",
            hint=f"Set runtime: {{kind: kuberay}} for site {site.name} in the platform file.",
        )
    return rt


def labels(site: SiteConfig, component: Component) -> dict[str, str]:
    """The labels every object and pod of `site` carries."""
    return {
        "app.kubernetes.io/name": "adcp",
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": "adcp",
        "adcp.io/site": label_value(site.name),
    }


def metadata(name: str, rt: KubeRayRuntime, lbl: dict[str, str], user_name: str) -> dict[str, Any]:
    """ObjectMeta; the `adcp.io/name` annotation keeps the name the user wrote."""
    return {"name": name, "namespace": rt.namespace, "labels": lbl,
            "annotations": {"adcp.io/name": user_name}}


def volcano_labels(rt: KubeRayRuntime, groups: list[Group]) -> dict[str, str]:
    """`ray.io/scheduler-name: volcano` plus the queue when a queue is set and a group has GPUs.

    KubeRay (run with `--batch-scheduler=volcano`) then makes one PodGroup for the whole Ray
    cluster: head and every worker group are gang-scheduled together, CPU groups included.
    """
    if not rt.volcano_queue or not any(g.resources.gpus > 0 for g in groups):
        return {}
    return {"ray.io/scheduler-name": "volcano", "volcano.sh/queue-name": label_value(rt.volcano_queue)}


def cpu_count(quantity: str) -> float:
    """A Kubernetes CPU quantity ("2", "1500m", "0.5") as a number of CPUs."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(m?)\s*", quantity)
    if not m:
        raise ConfigError(f'Got "{quantity}" for a CPU quantity.', allowed='"2", "0.5" or "1500m"')
    value = float(m.group(1))
    return value / 1000 if m.group(2) else value


def pods_for(need: float, per_pod: float, what: str) -> int:
    """How many pods of `per_pod` hold `need` (at least 1 when need > 0)."""
    if need <= 0:
        return 0
    if per_pod <= 0:
        raise ConfigError(f"A pod with {per_pod:g} {what} cannot hold {need:g} {what}.",
                          hint=f"Give the worker group {what} in runtime.workers.")
    return math.ceil(need / per_pod - 1e-9)


def _resources(res: PodResources) -> dict[str, Any]:
    amounts: dict[str, str] = {"cpu": res.cpu, "memory": res.memory}
    if res.gpus > 0:
        amounts[GPU_RESOURCE] = str(res.gpus)
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _env(site: SiteConfig, rt: KubeRayRuntime, extra: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    # The platform's values win over runtime.env: the store URL must match what the center uses.
    # `extra` (the Serve apps' env: plain values and secretKeyRefs) wins over both.
    env = {**rt.env, "ADCP_SITE": site.name, "ADCP_STORE": site.store.url}
    given = {e["name"] for e in extra or []}
    return [{"name": k, "value": v} for k, v in env.items() if k not in given] + [dict(e) for e in extra or []]


def _ports(rt: KubeRayRuntime, *, head: bool, serve: bool) -> list[dict[str, Any]]:
    ports = []
    if head:
        ports += [{"name": "gcs-server", "containerPort": GCS_PORT},
                  {"name": "dashboard", "containerPort": rt.dashboard_port},
                  {"name": "client", "containerPort": CLIENT_PORT}]
    if serve:
        ports.append({"name": "serve", "containerPort": rt.serve_port})
    ports.append({"name": "metrics", "containerPort": rt.metrics_port})
    return ports


def _pod_template(site: SiteConfig, rt: KubeRayRuntime, component: Component, container: dict[str, Any],
                  node_selector: dict[str, str], tolerations: list[dict[str, str]]) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [container]}
    if node_selector:
        spec["nodeSelector"] = node_selector
    if tolerations:
        spec["tolerations"] = [dict(t) for t in tolerations]
    if rt.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": s} for s in rt.image_pull_secrets]
    if rt.service_account:
        spec["serviceAccountName"] = rt.service_account
    return {"metadata": {"labels": labels(site, component)}, "spec": spec}


def _container(site: SiteConfig, rt: KubeRayRuntime, name: str, res: PodResources,
               ports: list[dict[str, Any]], env: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"name": name, "image": rt.image, "ports": ports, "resources": _resources(res),
            "env": _env(site, rt, env)}


def head_group(site: SiteConfig, rt: KubeRayRuntime, component: Component,
               env: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """headGroupSpec: dashboard on all interfaces, metrics port, no work unless head_schedules_work."""
    params = {"dashboard-host": "0.0.0.0", "dashboard-port": str(rt.dashboard_port),
              "metrics-export-port": str(rt.metrics_port)}
    if not rt.head_schedules_work:
        params["num-cpus"] = "0"
    container = _container(site, rt, "ray-head", rt.head, _ports(rt, head=True, serve=True), env)
    return {"rayStartParams": params,
            "template": _pod_template(site, rt, component, container, dict(rt.node_selector), [])}


def worker_group(site: SiteConfig, rt: KubeRayRuntime, g: Group, component: Component,
                 *, serve: bool = False, env: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One workerGroupSpecs entry; `serve` adds the Serve port (RayService's serve-svc targets it);
    `env`: container env entries over the site's (as for the head)."""
    params = {"metrics-export-port": str(rt.metrics_port)}
    if g.resources.gpus > 0:
        params["num-gpus"] = str(g.resources.gpus)
    if g.ray_resources:
        # KubeRay pastes rayStartParams into the `ray start` shell command: quote the JSON.
        params["resources"] = shlex.quote(json.dumps(g.ray_resources, sort_keys=True))
    container = _container(site, rt, "ray-worker", g.resources, _ports(rt, head=False, serve=serve), env)
    selector = {**rt.node_selector, **g.node_selector}
    return {
        "groupName": dns_label(g.name, MAX_GROUP),
        "replicas": g.replicas,
        "minReplicas": g.min_replicas,
        "maxReplicas": g.max_replicas,
        "rayStartParams": params,
        "template": _pod_template(site, rt, component, container, selector, g.tolerations),
    }


def cluster_spec(site: SiteConfig, rt: KubeRayRuntime, groups: list[Group], component: Component,
                 *, serve: bool = False, env: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A RayClusterSpec (also RayService.rayClusterConfig and RayJob.rayClusterSpec); `env`:
    container env entries (`{name, value}` or `{name, valueFrom}`) for the head and every worker."""
    spec: dict[str, Any] = {
        "rayVersion": rt.ray_version,
        "enableInTreeAutoscaling": rt.autoscaling,
        "headGroupSpec": head_group(site, rt, component, env),
        "workerGroupSpecs": [worker_group(site, rt, g, component, serve=serve, env=env) for g in groups],
    }
    if rt.autoscaling:
        spec["autoscalerOptions"] = {"idleTimeoutSeconds": rt.idle_timeout_s, "upscalingMode": "Default"}
    return spec
