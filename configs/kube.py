"""Production values: a site's KubeRay cluster and the Karmada control plane that places it.

The same `SiteConfig` that runs a local Ray head in the embedded default names a `kuberay` runtime
in production; `raycluster/kuberay.py` builds the RayCluster/RayService/RayJob from these models and
`karmada/` the policies that place them. Defaults follow KubeRay's samples (ray-operator
`config/samples`) so an unchanged config renders a cluster that starts.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from configs.models import unique_names

__all__ = [
    "GPU_RESOURCE",
    "FailoverConfig",
    "KarmadaConfig",
    "KubeRayRuntime",
    "PodResources",
    "SpreadConfig",
    "WorkerGroupConfig",
]

#: The extended resource the NVIDIA device plugin advertises; Karmada's resourceSummary reports it too.
GPU_RESOURCE = "nvidia.com/gpu"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PodResources(_Strict):
    """Requests = limits for one Ray pod (KubeRay recommends equal values so Ray sees the limit)."""

    cpu: str = Field("2", description='Kubernetes CPU quantity, e.g. "2" or "1500m"')
    memory: str = Field("8Gi", description='Kubernetes memory quantity, e.g. "8Gi"')
    gpus: int = Field(0, ge=0, le=64, description="nvidia.com/gpu per pod (limits)")


class WorkerGroupConfig(_Strict):
    """One RayCluster worker group; `gpus` > 0 makes it a GPU group."""

    name: str = Field(..., description="groupName; made a valid DNS label when rendered")
    replicas: int = Field(1, ge=0, le=10_000)
    min_replicas: int = Field(0, ge=0, le=10_000)
    max_replicas: int = Field(4, ge=0, le=10_000)
    resources: PodResources = Field(default_factory=PodResources)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, str]] = Field(
        default_factory=list,
        description="Pod tolerations, e.g. [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]",
    )
    ray_resources: dict[str, float] = Field(default_factory=dict, description="Custom Ray resources of each worker")

    @model_validator(mode="after")
    def _replicas(self) -> WorkerGroupConfig:
        if not self.min_replicas <= self.max_replicas:
            raise ValueError(
                f"max_replicas must be greater than or equal to min_replicas. "
                f"Found: min_replicas={self.min_replicas}, max_replicas={self.max_replicas}"
            )
        if not self.min_replicas <= self.replicas <= self.max_replicas:
            raise ValueError(
                f"replicas must lie between min_replicas and max_replicas. Found: replicas={self.replicas}, "
                f"min_replicas={self.min_replicas}, max_replicas={self.max_replicas}"
            )
        return self


def _default_workers() -> list[WorkerGroupConfig]:
    return [
        WorkerGroupConfig(name="cpu", replicas=1, min_replicas=0, max_replicas=4),
        WorkerGroupConfig(
            name="gpu", replicas=0, min_replicas=0, max_replicas=2,
            resources=PodResources(cpu="8", memory="32Gi", gpus=1),
            tolerations=[{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
        ),
    ]


class KubeRayRuntime(_Strict):
    """The site runs on Kubernetes with KubeRay (>= 1.3); Karmada propagates the objects."""

    kind: Literal["kuberay"] = "kuberay"
    namespace: str = Field("ray-system", description="Namespace of the Ray objects at the site")
    cluster_name: str = Field(
        "adc", description="RayCluster/RayService name; services are <name>-head-svc, <name>-serve-svc"
    )
    ray_version: str = Field("2.60.0", description="spec.rayVersion")
    image: str = Field(
        "rayproject/ray:2.60.0-py311",
        description="Ray image (the site's registry prefix is applied by an OverridePolicy)",
    )
    image_pull_secrets: list[str] = Field(default_factory=list)
    head: PodResources = Field(default_factory=lambda: PodResources(cpu="2", memory="8Gi"))
    head_schedules_work: bool = Field(False, description="False sets num-cpus=0 on the head so work lands on workers")
    workers: list[WorkerGroupConfig] = Field(default_factory=_default_workers)
    autoscaling: bool = Field(True, description="KubeRay in-tree autoscaler (enableInTreeAutoscaling)")
    idle_timeout_s: int = Field(60, ge=0, le=86_400, description="Autoscaler scale-down idle time")
    dashboard_port: int = Field(8265, ge=1, le=65535)
    serve_port: int = Field(8000, ge=1, le=65535)
    metrics_port: int = Field(8080, ge=1, le=65535, description="Ray metrics export port on every pod")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node selector of every Ray pod")
    service_account: str | None = None
    volcano_queue: str | None = Field(
        None, description="Set to gang-schedule GPU worker groups with Volcano in this queue (batchScheduler volcano)"
    )
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment of every Ray container")

    @field_validator("workers")
    @classmethod
    def _unique_groups(cls, v: list[WorkerGroupConfig]) -> list[WorkerGroupConfig]:
        unique_names([w.name for w in v], "worker group names")
        return v

    @property
    def gpus(self) -> int:
        """Most GPUs the site's worker groups can hold (max_replicas x GPUs per pod)."""
        return sum(w.max_replicas * w.resources.gpus for w in self.workers)


class SpreadConfig(_Strict):
    """How a RayService spread over several sites divides its replicas."""

    sites: list[str] = Field(default_factory=list, description="Sites that share the ADC app; empty: each site its own")
    weighting: Literal["static", "dynamic"] = Field(
        "static", description="static: the weights below; dynamic: Karmada's AvailableReplicas"
    )
    weights: dict[str, int] = Field(default_factory=dict, description="Static weight per site (default 1)")


class FailoverConfig(_Strict):
    """spec.failover.application of the policies that place Ray objects."""

    enabled: bool = True
    toleration_s: int = Field(120, ge=0, description="How long an unhealthy application is tolerated before it moves")
    purge_mode: Literal["Immediately", "Directly", "Gracefully", "Never"] = Field(
        "Gracefully", description="What happens to the old copy (Karmada's purgeMode)"
    )
    grace_period_s: int = Field(600, ge=1, description="Gracefully: how long the old copy may stay")


class KarmadaConfig(_Strict):
    """The Karmada control plane the center talks to (production only)."""

    kubeconfig: str | None = Field(
        None, description="kubeconfig of the Karmada apiserver; default $KUBECONFIG or ~/.kube/config"
    )
    context: str | None = Field(None, description="kubeconfig context; default: the current one")
    namespace: str = Field("ray-system", description="Namespace of the resource templates and policies")
    cluster_scoped: bool = Field(False, description="Place with ClusterPropagationPolicy instead of PropagationPolicy")
    site_label: str = Field("adcp.io/site", description="Cluster label holding the site name (placement selects by it)")
    spread: SpreadConfig = Field(default_factory=SpreadConfig)
    failover: FailoverConfig = Field(default_factory=FailoverConfig)
