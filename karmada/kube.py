"""A thin, typed client of one Kubernetes apiserver (the Karmada apiserver) over the official
`kubernetes` package: server-side apply, Karmada `Cluster` objects, WorkloadRebalancers and RayJob
status, with every failure turned into the platform's error hierarchy (`configs.errors`).

Kinds are resolved to their REST paths by the apiserver's discovery (`/api/v1`,
`/apis/<group>/<version>`), so any kind the apiserver serves can be applied, namespaced or not.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from configs.errors import (
    AdcpError,
    InputError,
    KubeError,
    KubeTimeoutError,
    NotFoundError,
)
from karmada import kubeconfig as _kubeconfig

if TYPE_CHECKING:
    from typing import Self

__all__ = ["CLUSTER_API", "REBALANCER_API", "Applied", "Kube", "Resource", "cluster_ready"]

CLUSTER_API = "cluster.karmada.io/v1alpha1"
REBALANCER_API = "apps.karmada.io/v1alpha1"
RAYJOB_API = "ray.io/v1"
#: (connect, read) seconds of one request: an apiserver answers in well under a second; the read
#: allowance covers a busy control plane without hanging a CLI forever.
REQUEST_TIMEOUT_S = (5.0, 30.0)
_RAYJOB_FIELDS = ("jobStatus", "jobDeploymentStatus", "message", "startTime", "endTime", "dashboardURL", "jobId")


@dataclass(frozen=True)
class Resource:
    """How the apiserver serves a kind: its REST plural and whether objects live in a namespace."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool

    def path(self, name: str | None = None, namespace: str | None = None) -> str:
        base = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        if self.namespaced:
            if not namespace:
                raise InputError(f"{self.kind} {name or ''} is namespaced but has no metadata.namespace.",
                                 hint="Set metadata.namespace in the manifest.")
            base += f"/namespaces/{namespace}"
        return f"{base}/{self.plural}" + (f"/{name}" if name else "")


@dataclass(frozen=True)
class Applied:
    """One object after `Kube.apply_report`: the server's copy and what happened to it."""

    object: dict[str, Any]
    outcome: str  # "applied" (created or changed), "unchanged", or "dry-run"

    @property
    def ref(self) -> str:
        return f"{self.object.get('kind')}/{self.object.get('metadata', {}).get('name')}"


def cluster_ready(cluster: dict[str, Any]) -> tuple[bool, str]:
    """(Ready, the Ready condition's message) of a Karmada Cluster object."""
    for cond in (cluster.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            message = cond.get("message") or cond.get("reason") or f"Ready={cond.get('status')}"
            return cond.get("status") == "True", message
    return False, "no Ready condition reported yet"


class Kube:
    """One apiserver, reached with one kubeconfig context."""

    def __init__(self, config: Any, *, where: str = "") -> None:
        self._config = config
        self._api = _kubeconfig.api_client(config)
        self._where = where or config.host
        self._resources: dict[tuple[str, str], Resource] = {}

    @classmethod
    def connect(cls, kubeconfig: str | None = None, context: str | None = None) -> Kube:
        """A client of the apiserver of `context` in `kubeconfig` (defaults as kubectl's).
        Raises ConfigError when the file or context is missing; nothing is requested yet."""
        cfg = _kubeconfig.load(kubeconfig, context)
        where = f"{cfg.host} (kubeconfig {kubeconfig or 'default'}" + (f", context {context})" if context else ")")
        return cls(cfg, where=where)

    @property
    def host(self) -> str:
        return self._config.host

    def close(self) -> None:
        self._api.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- requests ---------------------------------------------------------------------------

    def request(self, method: str, path: str, *, query: list[tuple[str, str]] | None = None,
                body: Any = None, content_type: str = "application/json") -> dict[str, Any]:
        """The decoded JSON answer of one request; raises NotFoundError (404), InputError (400/422),
        KubeError (anything else, including an unreachable apiserver)."""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        method, url, headers, body, _ = self._api.param_serialize(
            method, path, query_params=query or [], header_params=headers, body=body, auth_settings=["BearerToken"])
        resp = self._send(method, url, headers, body)
        data = resp.read()
        if not 200 <= resp.status < 300:
            raise _status_error(resp.status, data, method, path, self._where)
        try:
            return json.loads(data) if data else {}
        except ValueError as e:
            raise KubeError(f"{method} {path} at {self._where} answered non-JSON: {data[:200]!r}",
                            status=resp.status) from e

    def _send(self, method: str, url: str, headers: dict[str, str], body: Any) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return self._api.call_api(method, url, header_params=headers, body=body, _request_timeout=REQUEST_TIMEOUT_S)
        except (HTTPError, ApiException, OSError) as e:
            raise KubeError(f"Cannot reach the apiserver {self._where}: {_reason(e)}",
                            hint="Check that the apiserver runs and that this machine can reach its URL.") from e

    def resource(self, api_version: str, kind: str) -> Resource:
        """The REST resource of `kind` in `api_version`, from the apiserver's discovery (cached)."""
        key = (api_version, kind)
        if key not in self._resources:
            path = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            try:
                listing = self.request("GET", path)
            except NotFoundError as e:
                raise InputError(f"The apiserver {self._where} does not serve {api_version}.",
                                 hint=_install_hint(api_version)) from e
            for r in listing.get("resources", []):
                if "/" not in r["name"]:
                    self._resources[(api_version, r["kind"])] = Resource(api_version, r["kind"], r["name"],
                                                                         r["namespaced"])
            if key not in self._resources:
                served = sorted(k for v, k in self._resources if v == api_version)
                raise InputError(f"The apiserver {self._where} serves no {kind} in {api_version}.",
                                 allowed=", ".join(served) or "nothing")
        return self._resources[key]

    def _path_of(self, obj: dict[str, Any], *, named: bool = True) -> str:
        try:
            api_version, kind, meta = obj["apiVersion"], obj["kind"], obj["metadata"]
            name = meta["name"]
        except (KeyError, TypeError) as e:
            raise InputError("Not a Kubernetes object (needs apiVersion, kind, metadata.name): "
                             f"{str(obj)[:200]}") from e
        return self.resource(api_version, kind).path(name if named else None, meta.get("namespace"))

    # --- generic objects --------------------------------------------------------------------

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        return self.request("GET", self.resource(api_version, kind).path(name, namespace))

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", self._path_of(obj, named=False), body=obj)

    def delete(self, obj: dict[str, Any]) -> None:
        """Delete `obj` (by apiVersion, kind, name, namespace); NotFoundError when it is not there."""
        self.request("DELETE", self._path_of(obj), body={"kind": "DeleteOptions", "apiVersion": "v1",
                                                          "propagationPolicy": "Background"})

    def apply(self, objects: list[dict[str, Any]], *, dry_run: bool = False, field_manager: str = "adcp",
              force: bool = True) -> list[dict[str, Any]]:
        """Server-side apply each object in order; the server's objects (not persisted with dry_run)."""
        return [self._apply_one(obj, dry_run, field_manager, force) for obj in objects]

    def apply_report(self, objects: list[dict[str, Any]], *, dry_run: bool = False,
                     field_manager: str = "adcp") -> list[Applied]:
        """Like `apply`, also saying per object whether the apiserver changed it (by resourceVersion)."""
        out = []
        for obj in objects:
            before = self._current_version(obj)
            after = self._apply_one(obj, dry_run, field_manager, True)
            changed = before is None or after.get("metadata", {}).get("resourceVersion") != before
            out.append(Applied(after, "dry-run" if dry_run else "applied" if changed else "unchanged"))
        return out

    def _current_version(self, obj: dict[str, Any]) -> str | None:
        try:
            return self.request("GET", self._path_of(obj)).get("metadata", {}).get("resourceVersion")
        except NotFoundError:
            return None  # not there yet: the apply creates it

    def _apply_one(self, obj: dict[str, Any], dry_run: bool, field_manager: str, force: bool) -> dict[str, Any]:
        query = [("fieldManager", field_manager)] + ([("force", "true")] if force else [])
        if dry_run:
            query.append(("dryRun", "All"))
        return self.request("PATCH", self._path_of(obj), query=query, body=obj,
                            content_type="application/apply-patch+yaml")

    # --- Karmada clusters -------------------------------------------------------------------

    def list_clusters(self) -> list[dict[str, Any]]:
        """Karmada Cluster objects (served by karmada-aggregated-apiserver, not a CRD)."""
        return self.request("GET", self.resource(CLUSTER_API, "Cluster").path()).get("items", [])

    def get_cluster(self, name: str) -> dict[str, Any]:
        try:
            return self.get(CLUSTER_API, "Cluster", name)
        except NotFoundError as e:
            raise NotFoundError(f"No Karmada cluster named {name} at {self._where}.",
                                hint="Register it (`adcp site register`) or check `kubectl get clusters`.") from e

    def wait_cluster_ready(self, name: str, *, timeout_s: float, poll_s: float = 2,
                           on_poll: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Poll the Cluster until its Ready condition is True and return it. A cluster not created yet
        counts as not ready; KubeTimeoutError after `timeout_s` names the last condition message."""
        def check() -> tuple[dict[str, Any] | None, str]:
            try:
                cluster = self.get(CLUSTER_API, "Cluster", name)
            except NotFoundError:
                return None, "the Cluster object does not exist yet (the karmada-agent creates it)"
            ready, message = cluster_ready(cluster)
            return (cluster if ready else None), message

        return _wait(f"Cluster {name} was not Ready", check, timeout_s, poll_s, on_poll,
                     "Check the karmada-agent on the member cluster: "
                     "kubectl -n karmada-system logs deploy/karmada-agent")

    # --- WorkloadRebalancer, RayJob ---------------------------------------------------------

    def create_rebalancer(self, obj: dict[str, Any]) -> dict[str, Any]:
        if (obj.get("apiVersion"), obj.get("kind")) != (REBALANCER_API, "WorkloadRebalancer"):
            raise InputError(f"Not a WorkloadRebalancer: {obj.get('apiVersion')} {obj.get('kind')}.",
                             allowed=f"{REBALANCER_API} WorkloadRebalancer")
        return self.create(obj)

    def get_rebalancer(self, name: str) -> dict[str, Any]:
        return self.get(REBALANCER_API, "WorkloadRebalancer", name)

    def wait_rebalancer(self, name: str, *, timeout_s: float, poll_s: float = 1,
                        on_poll: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Poll the WorkloadRebalancer until every workload of its spec has a result, and return it;
        KubeTimeoutError after `timeout_s` says how many are still pending."""
        def check() -> tuple[dict[str, Any] | None, str]:
            obj = self.get_rebalancer(name)
            wanted = len((obj.get("spec") or {}).get("workloads") or [])
            done = [w for w in (obj.get("status") or {}).get("observedWorkloads") or [] if w.get("result")]
            return (obj if len(done) >= wanted else None), f"{len(done)} of {wanted} workloads have a result"

        return _wait(f"WorkloadRebalancer {name} did not finish", check, timeout_s, poll_s, on_poll,
                     "Check karmada-controller-manager's logs on the control plane.")

    def rayjob_status(self, name: str, namespace: str) -> dict[str, Any]:
        """The RayJob template's status (Karmada aggregates the member's status into it): jobStatus,
        jobDeploymentStatus, message, startTime, endTime, dashboardURL, jobId (None when unset)."""
        status = self.get(RAYJOB_API, "RayJob", name, namespace).get("status") or {}
        return {k: status.get(k) for k in _RAYJOB_FIELDS}


def _wait(what: str, check: Callable[[], tuple[Any, str]], timeout_s: float, poll_s: float,
          on_poll: Callable[[str], None] | None, hint: str) -> Any:
    """Call `check` until it returns a result (not None) or `timeout_s` passes (KubeTimeoutError
    naming `what` and the last message `check` gave)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result, message = check()
        if result is not None:
            return result
        if on_poll:
            on_poll(message)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise KubeTimeoutError(f"{what} after {timeout_s:g} s: {message}", hint=hint)
        time.sleep(min(poll_s, remaining))  # the poll interval of a deadline-bounded wait


def _reason(e: BaseException) -> str:
    inner = getattr(e, "reason", None)
    return f"{type(e).__name__}: {inner or e}"[:300]


def _install_hint(api_version: str) -> str:
    group = api_version.split("/")[0]
    if group == "ray.io":
        return "Install the KubeRay CRDs in the Karmada apiserver (templates are stored there before they propagate)."
    if group.endswith("karmada.io"):
        return "Point the kubeconfig at the Karmada apiserver, not at a member cluster."
    return "Install the CRD that defines it."


def _status_error(status: int, data: bytes, method: str, path: str, where: str) -> AdcpError:
    try:
        body = json.loads(data)
        message = body.get("message") or data.decode(errors="replace")
    except ValueError:
        message = data.decode(errors="replace")
    message = message.strip()[:300]
    what = f"{method} {path} at {where}"
    if status == 401:
        return KubeError(f"The apiserver {where} rejected the credentials (401 Unauthorized).", status=status,
                         hint="Refresh the token or certificate of this kubeconfig context.")
    if status == 403:
        return KubeError(f"Forbidden: {what}: {message}", status=status,
                         hint="Grant this user RBAC access to the resource on the Karmada apiserver.")
    if status == 404:
        return NotFoundError(f"Not found: {what}: {message}", status=status)
    if status in (400, 422):
        return InputError(f"The apiserver refused {what}: {message}", status=status)
    return KubeError(f"{what} failed ({status}): {message}", status=status)
