"""Sites seen from Karmada: each member `Cluster` as the site model the coordinator plans with.

`resources` has exactly the shape of `raycluster.gateway.resources()` for a local Ray cluster
(`{"total"|"available": {CPU, GPU, memory, object_store_memory, custom}}`), so the planner reads a
Karmada site the way it reads a local one: `SiteView(v["name"], v["ready"],
free=v["resources"]["available"], total=v["resources"]["total"])` (only CPU, GPU and memory count).
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

from configs.kube import GPU_RESOURCE
from karmada.kube import cluster_ready
from raycluster.k8s_quantity import parse_quantity

if TYPE_CHECKING:
    from karmada.kube import Kube

__all__ = ["discover", "site_view"]

#: Kubernetes resource names -> the Ray names `raycluster.gateway.resources()` uses.
_RAY_NAMES = {"cpu": "CPU", GPU_RESOURCE: "GPU", "memory": "memory"}
_KNOWN = ("CPU", "GPU", "memory", "object_store_memory")


def _amounts(resources: dict[str, Any] | None) -> dict[str, Decimal]:
    out: dict[str, Decimal] = {}
    for name, quantity in (resources or {}).items():
        if name in _RAY_NAMES:
            out[_RAY_NAMES[name]] = Decimal(str(parse_quantity(quantity)))
    return out


def _resources(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """total = allocatable; available = allocatable - allocated - allocating (never below 0).

    Other resources a node reports (pods, ephemeral-storage, hugepages) are not Ray resources, so
    `custom` stays empty; a Ray cluster's custom resources are declared in its worker groups."""
    total = _amounts(summary.get("allocatable"))
    used = _amounts(summary.get("allocated"))
    for name, amount in _amounts(summary.get("allocating")).items():
        used[name] = used.get(name, Decimal(0)) + amount
    out: dict[str, dict[str, Any]] = {
        part: dict.fromkeys(_KNOWN, 0.0) | {"custom": {}} for part in ("total", "available")
    }
    for name, amount in total.items():
        out["total"][name] = float(amount)
        out["available"][name] = float(max(amount - used.get(name, Decimal(0)), Decimal(0)))
    return out


def site_view(cluster: dict[str, Any], *, site_label: str) -> dict[str, Any]:
    """The site model of a Karmada Cluster object: its site name (the `site_label` label, else the
    cluster name), readiness, sync mode, API endpoint, labels and free/total capacity."""
    meta, spec, status = cluster.get("metadata") or {}, cluster.get("spec") or {}, cluster.get("status") or {}
    labels = dict(meta.get("labels") or {})
    ready, message = cluster_ready(cluster)
    return {
        "name": labels.get(site_label) or meta.get("name"),
        "cluster": meta.get("name"),
        "ready": ready,
        "ready_message": message,
        "sync_mode": spec.get("syncMode") or "Push",
        "api_endpoint": spec.get("apiEndpoint"),
        "labels": labels,
        "resources": _resources(status.get("resourceSummary") or {}),
    }


def discover(kube: Kube, site_label: str) -> list[dict[str, Any]]:
    """Every member cluster of the Karmada control plane as a site view, by site name."""
    return sorted((site_view(c, site_label=site_label) for c in kube.list_clusters()), key=lambda v: v["name"])
