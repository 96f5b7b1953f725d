"""Karmada policies as data: PropagationPolicy / ClusterPropagationPolicy, per-site OverridePolicy,
a training RayJob pinned to one cluster, WorkloadRebalancer, and `apply_overrides`, which computes
what Karmada delivers to a cluster (used by tests and by `adcp render --explain`).

Every function returns a plain dict shaped by the CRDs in ../shared/schemas
(policy.karmada.io/v1alpha1, apps.karmada.io/v1alpha1); YAML is written only at the edge.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any, Literal

from configs.errors import ConfigError, InputError
from configs.kube import FailoverConfig
from karmada import _patch
from raycluster.k8s_names import dns_name

__all__ = ["APPS_API", "POLICY_API", "apply_overrides", "cluster_affinity", "divided_scheduling", "failover_spec",
           "label_in", "pinned_job_policy", "propagation_policy", "resource_selector", "site_override_policy",
           "workload_rebalancer"]

POLICY_API = "policy.karmada.io/v1alpha1"
APPS_API = "apps.karmada.io/v1alpha1"
MANAGED_BY = {"app.kubernetes.io/managed-by": "adcp"}
#: Taints Karmada puts on a Cluster that stops reporting; a pinned job tolerates them forever.
_CLUSTER_FAILURE_TAINTS = ("cluster.karmada.io/not-ready", "cluster.karmada.io/unreachable")
#: Karmada renamed purgeMode Immediately to Directly; the CRD accepts only the new name.
_PURGE_MODE = {"Immediately": "Directly", "Directly": "Directly", "Gracefully": "Gracefully", "Never": "Never"}
#: Worker replicas that Karmada's RayCluster/RayService interpreters revise when dividing replicas.
_WORKER_REPLICAS = re.compile(r"^/spec(/rayClusterConfig)?/workerGroupSpecs/\d+/replicas$")


def resource_selector(obj: dict) -> dict:
    """{apiVersion, kind, name, namespace?} selecting exactly `obj`."""
    try:
        sel = {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": obj["metadata"]["name"]}
    except (KeyError, TypeError) as e:
        raise InputError("An object to select needs apiVersion, kind and metadata.name.",
                         hint=f"Got keys {sorted(obj) if isinstance(obj, dict) else type(obj).__name__}.") from e
    if obj["metadata"].get("namespace"):
        sel["namespace"] = obj["metadata"]["namespace"]
    return sel


def _metadata(name: str, namespace: str | None, cluster_scoped: bool) -> dict:
    meta: dict[str, Any] = {"name": dns_name(name)}
    if not cluster_scoped:
        if not namespace:
            raise InputError(f"Policy {name} is namespaced and needs a namespace.",
                             hint="Pass namespace=..., or cluster_scoped=True.")
        meta["namespace"] = namespace
    meta["labels"] = dict(MANAGED_BY)
    return meta


def _selectors(objects: list[dict], namespace: str | None, cluster_scoped: bool) -> list[dict]:
    if not objects:
        raise InputError("A policy needs at least one object to select.")
    sels = [resource_selector(o) for o in objects]
    if not cluster_scoped:
        foreign = [s for s in sels if s.get("namespace", namespace) != namespace]
        if foreign:
            raise InputError(
                f"A PropagationPolicy/OverridePolicy in namespace {namespace} selects only objects of that "
                f"namespace; got {', '.join(_describe(s) for s in foreign)}.",
                hint="Use cluster_scoped=True (Cluster*Policy) or put the objects in the policy's namespace.")
    return sels


def _describe(sel: dict) -> str:
    return f"{sel['kind']}/{sel['name']} in {sel.get('namespace')}"


def failover_spec(failover: FailoverConfig) -> dict | None:
    """spec.failover of a policy, or None when failover is disabled."""
    if not failover.enabled:
        return None
    mode = _PURGE_MODE[failover.purge_mode]
    app: dict[str, Any] = {"decisionConditions": {"tolerationSeconds": failover.toleration_s}, "purgeMode": mode}
    if mode == "Gracefully":  # the CRD: required only for Gracefully
        app["gracePeriodSeconds"] = failover.grace_period_s
    return {"application": app}


def cluster_affinity(*, cluster_names: list[str] | None = None, match_labels: dict[str, str] | None = None,
                     match_expressions: list[dict] | None = None) -> dict:
    """clusterAffinity (also a targetCluster): by names and/or a label selector."""
    affinity: dict[str, Any] = {}
    if cluster_names:
        affinity["clusterNames"] = list(cluster_names)
    selector: dict[str, Any] = {}
    if match_labels:
        selector["matchLabels"] = dict(match_labels)
    if match_expressions:
        selector["matchExpressions"] = copy.deepcopy(match_expressions)
    if selector:
        affinity["labelSelector"] = selector
    if not affinity:
        raise InputError("A placement needs cluster names or a cluster label selector.",
                         hint="An empty clusterAffinity would place on every member cluster.")
    return affinity


def label_in(key: str, values: list[str]) -> list[dict]:
    """matchExpressions selecting clusters whose label `key` is one of `values`."""
    return [{"key": key, "operator": "In", "values": list(values)}]


def propagation_policy(
    name: str, objects: list[dict], *, namespace: str | None, cluster_names: list[str] | None = None,
    match_labels: dict[str, str] | None = None, failover: FailoverConfig | None = None,
    replica_scheduling: dict | None = None, cluster_scoped: bool = False, priority: int | None = None,
    match_expressions: list[dict] | None = None,
) -> dict:
    """PropagationPolicy (namespaced) or ClusterPropagationPolicy (`cluster_scoped`) placing
    `objects` on the clusters named or selected by labels. `propagateDeps` is on, so pull secrets
    and service accounts travel (and fail over) with the Ray objects."""
    spec: dict[str, Any] = {
        "resourceSelectors": _selectors(objects, namespace, cluster_scoped),
        "propagateDeps": True,
        "placement": {"clusterAffinity": cluster_affinity(
            cluster_names=cluster_names, match_labels=match_labels, match_expressions=match_expressions)},
    }
    if replica_scheduling:
        spec["placement"]["replicaScheduling"] = copy.deepcopy(replica_scheduling)
    if priority is not None:
        spec["priority"] = priority
    if failover is not None and (fo := failover_spec(failover)):
        spec["failover"] = fo
    kind = "ClusterPropagationPolicy" if cluster_scoped else "PropagationPolicy"
    return {"apiVersion": POLICY_API, "kind": kind, "metadata": _metadata(name, namespace, cluster_scoped),
            "spec": spec}


def divided_scheduling(sites: list[str], *, weighting: Literal["static", "dynamic"], weights: dict[str, int],
                       cluster_of: Callable[[str], str]) -> dict:
    """replicaScheduling that divides replicas over `sites`: static weights (default 1 per site), or
    Karmada's dynamic weight by AvailableReplicas. Raises ConfigError for weights of other sites."""
    if not sites:
        raise ConfigError("A divided placement needs at least one site.", hint="Set karmada.spread.sites.")
    unknown = sorted(set(weights) - set(sites))
    if unknown:
        raise ConfigError(f"karmada.spread.weights names sites outside the spread: {', '.join(unknown)}.",
                          allowed=", ".join(sites))
    bad = {s: w for s, w in weights.items() if w < 1}
    if bad:
        raise ConfigError(f"Spread weights must be at least 1. Found: {bad}")
    if weighting == "dynamic":
        preference: dict[str, Any] = {"dynamicWeight": "AvailableReplicas"}
    elif weighting == "static":
        preference = {"staticWeightList": [
            {"targetCluster": {"clusterNames": [cluster_of(s)]}, "weight": weights.get(s, 1)} for s in sites]}
    else:
        raise ConfigError(f'Got "{weighting}" for spread weighting.', allowed="static, dynamic")
    return {"replicaSchedulingType": "Divided", "replicaDivisionPreference": "Weighted",
            "weightPreference": preference}


def site_override_policy(name: str, template: dict, site_object: dict, *, cluster: str, namespace: str | None,
                         cluster_scoped: bool = False, divided: bool = False) -> dict:
    """OverridePolicy (or ClusterOverridePolicy) that turns `template` into `site_object` on `cluster`:
    an imageOverrider (component Registry, one per container image path) where the registry differs,
    labels/annotations overriders, and plaintext JSON-patch ops for every other spec difference.
    `divided`: Karmada divides the template's replicas, so worker-group replicas are left alone.
    Raises ConfigError when the two objects differ in kind, name or namespace (not overridable)."""
    _same_identity(template, site_object)
    images = _image_overriders(template, site_object)
    staged = _apply_images(template, images)
    skip = (lambda p: bool(_WORKER_REPLICAS.match(p))) if divided else None
    plaintext = [_plaintext(op) for op in _patch.diff(staged["spec"], site_object["spec"], "/spec", skip=skip)]
    overriders: dict[str, Any] = {}
    if images:
        overriders["imageOverrider"] = images
    for field, key in (("labels", "labelsOverrider"), ("annotations", "annotationsOverrider")):
        ops = _map_overriders(template["metadata"].get(field) or {}, site_object["metadata"].get(field) or {})
        if ops:
            overriders[key] = ops
    if plaintext:
        overriders["plaintext"] = plaintext
    kind = "ClusterOverridePolicy" if cluster_scoped else "OverridePolicy"
    return {"apiVersion": POLICY_API, "kind": kind, "metadata": _metadata(name, namespace, cluster_scoped),
            "spec": {"resourceSelectors": _selectors([template], namespace, cluster_scoped),
                     "overrideRules": [{"targetCluster": {"clusterNames": [cluster]}, "overriders": overriders}]}}


def _same_identity(template: dict, site_object: dict) -> None:
    a, b = resource_selector(template), resource_selector(site_object)
    if a != b:
        raise ConfigError(
            f"Karmada keeps one template per object: {b['kind']}/{b['name']} (namespace {b.get('namespace')}) "
            f"of this site cannot come from {a['kind']}/{a['name']} (namespace {a.get('namespace')}).",
            hint="Give every site of the Karmada render the same runtime.cluster_name, and runtime.namespace = "
                 "karmada.namespace.")


def _image_overriders(template: dict, site_object: dict) -> list[dict]:
    out = []
    for path in _patch.image_paths(template["spec"], "/spec"):
        try:
            theirs = _patch.get(site_object, path)
        except InputError:
            continue  # the container is not at the site: the plaintext diff removes it
        if not isinstance(theirs, str):
            continue
        have, want = _patch.split_image(_patch.get(template, path))[0], _patch.split_image(theirs)[0]
        if have == want:
            continue
        rule = {"component": "Registry", "operator": "replace" if want else "remove", "predicate": {"path": path}}
        if want:
            rule["value"] = want
        out.append(rule)
    return out


def _apply_images(obj: dict, rules: list[dict]) -> dict:
    ops = []
    for rule in rules:
        if rule.get("component") != "Registry":
            raise InputError(f"imageOverrider component {rule.get('component')} is not modelled here.",
                             allowed="Registry")
        path = rule["predicate"]["path"]
        if rule["operator"] == "remove":
            registry = ""
        elif rule["operator"] == "replace":
            registry = rule["value"]
        else:  # add: appended to the host name, as Karmada does
            registry = _patch.split_image(_patch.get(obj, path))[0] + rule["value"]
        ops.append({"op": "replace", "path": path, "value": _patch.with_registry(_patch.get(obj, path), registry)})
    return _patch.apply(obj, ops)


def _map_overriders(have: dict[str, str], want: dict[str, str]) -> list[dict]:
    """labelsOverrider/annotationsOverrider entries turning `have` into `want`."""
    out = []
    for operator, value in (
        ("remove", {k: v for k, v in have.items() if k not in want}),
        ("replace", {k: v for k, v in want.items() if k in have and have[k] != v}),
        ("add", {k: v for k, v in want.items() if k not in have}),
    ):
        if value:
            out.append({"operator": operator, "value": value})
    return out


def _plaintext(op: dict) -> dict:
    out = {"operator": op["op"], "path": op["path"]}
    if op["op"] != "remove":  # the CRD: value must be empty for remove
        out["value"] = op["value"]
    return out


def pinned_job_policy(job: dict, cluster: str, *, namespace: str) -> dict:
    """PropagationPolicy placing a training RayJob on `cluster` only, with no application failover
    and tolerating Karmada's not-ready/unreachable cluster taints, so it is never moved while it
    runs (the coordinator resumes elsewhere from a relayed checkpoint instead)."""
    policy = propagation_policy(dns_name("adcp-job", job.get("metadata", {}).get("name", "")), [job],
                                namespace=namespace, cluster_names=[cluster])
    policy["spec"]["placement"]["clusterTolerations"] = [
        {"key": key, "operator": "Exists", "effect": "NoExecute"} for key in _CLUSTER_FAILURE_TAINTS]
    return policy


def workload_rebalancer(name: str, objects: list[dict], *, ttl_s: int | None = 300) -> dict:
    """WorkloadRebalancer asking Karmada to reschedule `objects` once (e.g. after a site came back);
    it deletes itself `ttl_s` seconds after finishing (None keeps it)."""
    if not objects:
        raise InputError("A WorkloadRebalancer needs at least one workload.")
    if ttl_s is not None and ttl_s < 0:
        raise InputError(f"Got {ttl_s} for ttl_s.", allowed="seconds >= 0, or None to keep it")
    spec: dict[str, Any] = {"workloads": [resource_selector(o) for o in objects]}
    if ttl_s is not None:
        spec["ttlSecondsAfterFinished"] = ttl_s
    return {"apiVersion": APPS_API, "kind": "WorkloadRebalancer",
            "metadata": {"name": dns_name(name), "labels": dict(MANAGED_BY)}, "spec": spec}


def apply_overrides(template: dict, override_policy: dict, cluster: str) -> dict:
    """What Karmada delivers to `cluster`: `template` with the rules of `override_policy` that target
    that cluster applied in Karmada's order (image, labels, annotations, plaintext). A policy whose
    resourceSelectors do not select `template` leaves it unchanged. Raises InputError for overriders
    or cluster selectors this function does not model (command/args/field overriders, label selectors)."""
    out = copy.deepcopy(template)
    spec = override_policy.get("spec", {})
    if not _selects(spec.get("resourceSelectors"), template):
        return out
    rules = spec.get("overrideRules")
    if rules is None and "overriders" in spec:  # the deprecated single-rule form
        rules = [{"targetCluster": spec.get("targetCluster"), "overriders": spec["overriders"]}]
    for rule in rules or []:
        if _targets(rule.get("targetCluster"), cluster):
            out = _apply_rule(out, rule.get("overriders") or {})
    return out


def _selects(selectors: list[dict] | None, obj: dict) -> bool:
    if not selectors:
        return True
    me = resource_selector(obj)
    for sel in selectors:
        if "labelSelector" in sel:
            raise InputError("apply_overrides does not evaluate resourceSelectors by labels.")
        if all(me.get(k) == v for k, v in sel.items()):
            return True
    return False


def _targets(target: dict | None, cluster: str) -> bool:
    if not target:
        return True
    if "labelSelector" in target or "fieldSelector" in target:
        raise InputError("apply_overrides cannot evaluate a targetCluster by labels or fields (it knows no "
                         "cluster labels).", hint="Target clusters by clusterNames.")
    if cluster in (target.get("exclude") or []):
        return False
    return cluster in target["clusterNames"] if "clusterNames" in target else True


def _apply_rule(obj: dict, overriders: dict) -> dict:
    unsupported = sorted(set(overriders) - {"imageOverrider", "labelsOverrider", "annotationsOverrider", "plaintext"})
    if unsupported:
        raise InputError(f"apply_overrides does not model {', '.join(unsupported)}.",
                         allowed="imageOverrider (Registry), labelsOverrider, annotationsOverrider, plaintext")
    obj = _apply_images(obj, overriders.get("imageOverrider") or [])
    for field, key in (("labels", "labelsOverrider"), ("annotations", "annotationsOverrider")):
        for entry in overriders.get(key) or []:
            _apply_map(obj["metadata"], field, entry)
    ops = [{"op": p["operator"], "path": p["path"], **({"value": p["value"]} if "value" in p else {})}
           for p in overriders.get("plaintext") or []]
    return _patch.apply(obj, ops)


def _apply_map(metadata: dict, field: str, entry: dict) -> None:
    """Karmada's label/annotation overrider: add sets keys, replace and remove touch existing keys only."""
    current = metadata.get(field)
    for key, value in entry["value"].items():
        if entry["operator"] == "add":
            current = metadata.setdefault(field, {})
            current[key] = value
        elif current is not None and key in current:
            if entry["operator"] == "replace":
                current[key] = value
            else:
                del current[key]
