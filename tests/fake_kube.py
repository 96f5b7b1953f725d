"""A small Kubernetes API server for tests: a TEST DOUBLE, not an apiserver.

A real HTTP server (threaded `http.server` on 127.0.0.1, a free port) that answers the subset of
the Kubernetes API that `karmada.kube` uses, so the official `kubernetes` client talks to it over
HTTP exactly as it would to the Karmada apiserver:

- discovery: `/api`, `/apis`, `/api/v1`, `/apis/<group>/<version>` resource lists;
- GET (one or a list), POST (create), PATCH (`application/apply-patch+yaml` server-side apply,
  `application/merge-patch+json`), DELETE of namespaced and cluster-scoped objects of the kinds in
  `RESOURCES` (KubeRay, Karmada policies, WorkloadRebalancer, `cluster.karmada.io` Cluster,
  Namespace, ConfigMap); `?dryRun=All` answers without persisting;
- bearer-token auth: 401 without the right token, 403 for a token in `forbidden_tokens`;
- test hooks from the test thread: `set_cluster` (a Cluster's Ready condition and resourceSummary),
  `set_status` (any object's status, e.g. a RayJob's), `on_create` (e.g. a WorkloadRebalancer gets
  its `status.observedWorkloads` once created); `requests` records every request it received.

It does NOT emulate: admission (validating/mutating webhooks, OpenAPI/CRD schema validation),
real server-side-apply field ownership and conflict detection (an apply deep-merges into the stored
object: dicts merged, lists replaced, one managedFields entry per object), watches, subresources,
label selectors, RBAC beyond the token check, or anything Karmada does (scheduling, propagation,
status aggregation, rebalancing): tests set the outcomes through the hooks.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import itertools
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

#: (apiVersion, kind, plural, namespaced) the double serves.
RESOURCES: list[tuple[str, str, str, bool]] = [
    ("v1", "Namespace", "namespaces", False),
    ("v1", "ConfigMap", "configmaps", True),
    ("ray.io/v1", "RayCluster", "rayclusters", True),
    ("ray.io/v1", "RayJob", "rayjobs", True),
    ("ray.io/v1", "RayService", "rayservices", True),
    ("policy.karmada.io/v1alpha1", "PropagationPolicy", "propagationpolicies", True),
    ("policy.karmada.io/v1alpha1", "ClusterPropagationPolicy", "clusterpropagationpolicies", False),
    ("policy.karmada.io/v1alpha1", "OverridePolicy", "overridepolicies", True),
    ("policy.karmada.io/v1alpha1", "ClusterOverridePolicy", "clusteroverridepolicies", False),
    ("apps.karmada.io/v1alpha1", "WorkloadRebalancer", "workloadrebalancers", False),
    ("cluster.karmada.io/v1alpha1", "Cluster", "clusters", False),
]
TOKEN = "adcp-test-token"
FORBIDDEN_TOKEN = "adcp-forbidden-token"

Key = tuple[str, str, str, str]  # apiVersion, plural, namespace ("" when cluster-scoped), name


class _Reply(Exception):
    """An answer other than 200, raised from a handler: a Kubernetes Status object."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _merge(base: Any, patch: Any) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = _merge(base.get(k), v) if v is not None else None
        return {k: v for k, v in out.items() if v is not None}
    return copy.deepcopy(patch)


class FakeKube:
    """The double's state and hooks; `start()` serves it, `stop()` shuts it down."""

    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.kubeconfig: Path | None = None  # set by the fixture (write_kubeconfig)
        self.forbidden_tokens = {FORBIDDEN_TOKEN}
        self.requests: list[dict[str, Any]] = []
        self._objects: dict[Key, dict[str, Any]] = {}
        self._hooks: dict[str, list[Callable[[dict[str, Any]], dict[str, Any] | None]]] = {}
        self._rv = itertools.count(1)
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.by_path = {(api, plural): (kind, ns) for api, kind, plural, ns in RESOURCES}
        self.by_kind = {(api, kind): (plural, ns) for api, kind, plural, ns in RESOURCES}

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> FakeKube:
        fake = self

        class Handler(_Handler):
            state = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="fake-kube", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=10)
            self._server = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def write_kubeconfig(self, path: Path) -> Path:
        """A kubeconfig with contexts `fake` (the right token, the current one), `fake-wrong-token`
        and `fake-forbidden`, all pointing at this server."""
        users = {"fake": self.token, "fake-wrong-token": "not-the-token", "fake-forbidden": FORBIDDEN_TOKEN}
        doc = {
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": n, "user": {"token": t}} for n, t in users.items()],
            "contexts": [{"name": n, "context": {"cluster": "fake", "user": n, "namespace": "ray-system"}}
                         for n in users],
        }
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    # --- test hooks -------------------------------------------------------------------------

    def set_cluster(self, name: str, *, ready: bool | None = True, message: str = "", sync_mode: str = "Push",
                    api_endpoint: str = "https://10.0.0.1:6443", labels: dict[str, str] | None = None,
                    allocatable: dict[str, str] | None = None, allocated: dict[str, str] | None = None,
                    allocating: dict[str, str] | None = None) -> dict[str, Any]:
        """Create or replace a Karmada Cluster with this status (ready None: no Ready condition)."""
        status: dict[str, Any] = {}
        if ready is not None:
            status["conditions"] = [{"type": "Ready", "status": "True" if ready else "False",
                                     "reason": "ClusterReady" if ready else "ClusterNotReachable",
                                     "message": message or ("cluster is healthy and ready to accept workloads"
                                                            if ready else "cluster is not reachable"),
                                     "lastTransitionTime": _now()}]
        summary = {k: v for k, v in (("allocatable", allocatable), ("allocated", allocated),
                                     ("allocating", allocating)) if v is not None}
        if summary:
            status["resourceSummary"] = summary
        obj = {"apiVersion": "cluster.karmada.io/v1alpha1", "kind": "Cluster",
               "metadata": {"name": name, "labels": dict(labels or {})},
               "spec": {"syncMode": sync_mode, "apiEndpoint": api_endpoint}, "status": status}
        with self._lock:
            old = self._objects.get(("cluster.karmada.io/v1alpha1", "clusters", "", name))
            return self._store(("cluster.karmada.io/v1alpha1", "clusters", "", name), obj, old)

    def set_status(self, api_version: str, kind: str, name: str, namespace: str | None, status: dict[str, Any]) -> None:
        key = self._key(api_version, kind, name, namespace)
        with self._lock:
            self._objects[key]["status"] = copy.deepcopy(status)
            self._objects[key]["metadata"]["resourceVersion"] = str(next(self._rv))

    def on_create(self, kind: str, hook: Callable[[dict[str, Any]], dict[str, Any] | None]) -> None:
        """After an object of `kind` is created (POST or apply), `hook(obj)` may return its status."""
        self._hooks.setdefault(kind, []).append(hook)

    def stored(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """The stored object, or None when absent (a test inspection helper)."""
        with self._lock:
            obj = self._objects.get(self._key(api_version, kind, name, namespace))
            return copy.deepcopy(obj) if obj else None

    def count(self, kind: str) -> int:
        with self._lock:
            return sum(1 for o in self._objects.values() if o["kind"] == kind)

    def _key(self, api_version: str, kind: str, name: str, namespace: str | None) -> Key:
        plural, namespaced = self.by_kind[(api_version, kind)]
        return (api_version, plural, (namespace or "") if namespaced else "", name)

    # --- the store --------------------------------------------------------------------------

    def _store(self, key: Key, obj: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
        meta = obj.setdefault("metadata", {})
        if old is None:
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        else:
            for field in ("uid", "creationTimestamp", "generation"):
                meta.setdefault(field, old["metadata"].get(field))
        meta["resourceVersion"] = str(next(self._rv))
        self._objects[key] = obj
        return copy.deepcopy(obj)

    def create(self, key: Key, kind: str, body: dict[str, Any], dry_run: bool) -> dict[str, Any]:
        with self._lock:
            if key in self._objects:
                raise _Reply(409, "AlreadyExists", f'{key[1]} "{key[3]}" already exists')
            obj = copy.deepcopy(body)
            if key[2]:
                obj["metadata"]["namespace"] = key[2]
            return self._created(key, kind, obj, dry_run)

    def _created(self, key: Key, kind: str, obj: dict[str, Any], dry_run: bool) -> dict[str, Any]:
        if dry_run:
            obj["metadata"].update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
            return obj
        out = self._store(key, obj, None)
        for hook in self._hooks.get(kind, []):
            status = hook(copy.deepcopy(out))
            if status is not None:
                self._objects[key]["status"] = status
                out = copy.deepcopy(self._objects[key])
        return out

    def apply(self, key: Key, kind: str, body: dict[str, Any], manager: str, dry_run: bool) -> dict[str, Any]:
        """Create or deep-merge (dicts merged, lists replaced); resourceVersion moves only on change."""
        applied = {k: v for k, v in copy.deepcopy(body).items() if k != "status"}
        if key[2]:
            applied.setdefault("metadata", {})["namespace"] = key[2]
        entry = {"manager": manager, "operation": "Apply", "apiVersion": key[0], "fieldsType": "FieldsV1"}
        with self._lock:
            old = self._objects.get(key)
            if old is None:
                applied["metadata"]["managedFields"] = [dict(entry, time=_now())]
                return self._created(key, kind, applied, dry_run)
            new = _merge(old, applied)
            if _content(new) == _content(old):
                return copy.deepcopy(old)
            new["metadata"]["managedFields"] = [dict(entry, time=_now())]
            if new.get("spec") != old.get("spec"):
                new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
            return copy.deepcopy(new) if dry_run else self._store(key, new, old)

    def delete(self, key: Key, dry_run: bool) -> dict[str, Any]:
        with self._lock:
            if key not in self._objects:
                raise _Reply(404, "NotFound", f'{key[1]} "{key[3]}" not found')
            return copy.deepcopy(self._objects[key]) if dry_run else self._objects.pop(key)


def _content(obj: dict[str, Any]) -> dict[str, Any]:
    meta = {k: v for k, v in obj.get("metadata", {}).items() if k not in ("managedFields", "resourceVersion")}
    return {**obj, "metadata": meta}


class _Handler(BaseHTTPRequestHandler):
    state: FakeKube

    def log_message(self, *args: Any) -> None:  # quiet: pytest shows failures, not access logs
        pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        record = {"method": method, "path": url.path, "query": query,
                  "content_type": self.headers.get("Content-Type"), "body": raw.decode(errors="replace")}
        self.state.requests.append(record)
        try:
            self._auth()
            body = yaml.safe_load(raw) if raw else None  # JSON is YAML, so one parser serves both
            code, answer = self._route(method, url.path, query, body)
        except _Reply as r:
            code, answer = r.code, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                    "message": r.message, "reason": r.reason, "code": r.code}
        except yaml.YAMLError as e:
            code, answer = 400, {"kind": "Status", "status": "Failure", "message": f"bad body: {e}", "code": 400}
        data = json.dumps(answer).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _auth(self) -> None:
        given = self.headers.get("Authorization", "")
        token = given[7:] if given.startswith("Bearer ") else None
        if token in self.state.forbidden_tokens:
            raise _Reply(403, "Forbidden", f'User "test" cannot access {self.path}')
        if token != self.state.token:
            raise _Reply(401, "Unauthorized", "Unauthorized")

    def _route(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        parts = [p for p in path.split("/") if p]
        if method == "GET" and parts == ["api"]:
            return 200, {"kind": "APIVersions", "versions": ["v1"]}
        if method == "GET" and parts == ["apis"]:
            return 200, _group_list()
        if parts[:2] == ["api", "v1"]:
            api_version, rest = "v1", parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            api_version, rest = f"{parts[1]}/{parts[2]}", parts[3:]
        else:
            raise _Reply(404, "NotFound", "the server could not find the requested resource")
        if not rest:
            if method == "GET" and any(api == api_version for api, *_ in RESOURCES):
                return 200, _resource_list(api_version)
            raise _Reply(404, "NotFound", "the server could not find the requested resource")
        return self._objects(method, api_version, rest, query, body)

    def _objects(self, method: str, api_version: str, rest: list[str], query: dict[str, list[str]],
                 body: Any) -> tuple[int, Any]:
        namespace = ""
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        if len(rest) > 2 or (api_version, rest[0]) not in self.state.by_path:
            raise _Reply(404, "NotFound", "the server could not find the requested resource")
        kind, namespaced = self.state.by_path[(api_version, rest[0])]
        name = rest[1] if len(rest) == 2 else None
        if namespaced != bool(namespace) and not (method == "GET" and name is None):
            raise _Reply(404, "NotFound", f"{rest[0]} is {'not ' if not namespaced else ''}namespaced")
        key: Key = (api_version, rest[0], namespace, name or "")
        dry_run = query.get("dryRun") == ["All"]
        if method == "GET":
            return 200, self._get(key, kind)
        if method == "POST" and name is None:
            return 201, self.state.create((*key[:3], _name_of(body)), kind, body, dry_run)
        if method == "PATCH" and name:
            return 200, self._patch(key, kind, body, query, dry_run)
        if method == "DELETE" and name:
            self.state.delete(key, dry_run)
            return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success", "details": {"name": name}}
        raise _Reply(405, "MethodNotAllowed", f"{method} is not supported here")

    def _get(self, key: Key, kind: str) -> dict[str, Any]:
        with self.state._lock:
            if key[3]:
                if key not in self.state._objects:
                    raise _Reply(404, "NotFound", f'{key[1]}.{key[0]} "{key[3]}" not found')
                return copy.deepcopy(self.state._objects[key])
            items = [copy.deepcopy(o) for k, o in sorted(self.state._objects.items())
                     if k[:2] == key[:2] and (not key[2] or k[2] == key[2])]
        return {"apiVersion": key[0], "kind": f"{kind}List", "metadata": {"resourceVersion": "1"}, "items": items}

    def _patch(self, key: Key, kind: str, body: Any, query: dict[str, list[str]], dry_run: bool) -> dict[str, Any]:
        ctype = (self.headers.get("Content-Type") or "").split(";")[0]
        if ctype == "application/apply-patch+yaml":
            manager = (query.get("fieldManager") or [""])[0]
            if not manager:
                raise _Reply(400, "BadRequest", "fieldManager is required for apply requests")
            if _name_of(body) != key[3] or body.get("kind") != kind:
                raise _Reply(400, "BadRequest", "the body's kind/name does not match the URL")
            return self.state.apply(key, kind, body, manager, dry_run)
        if ctype == "application/merge-patch+json":
            with self.state._lock:
                if key not in self.state._objects:
                    raise _Reply(404, "NotFound", f'{key[1]} "{key[3]}" not found')
                old = self.state._objects[key]
                new = _merge(old, body)
                return copy.deepcopy(new) if dry_run else self.state._store(key, new, old)
        raise _Reply(415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {ctype}")


def _name_of(body: Any) -> str:
    try:
        return body["metadata"]["name"]
    except (KeyError, TypeError) as e:
        raise _Reply(400, "BadRequest", "metadata.name is required") from e


def _group_list() -> dict[str, Any]:
    groups: dict[str, list[str]] = {}
    for api, *_ in RESOURCES:
        if "/" in api:
            group, version = api.split("/")
            if version not in groups.setdefault(group, []):
                groups[group].append(version)
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
        {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
         "preferredVersion": {"groupVersion": f"{g}/{vs[0]}", "version": vs[0]}} for g, vs in groups.items()]}


def _resource_list(api_version: str) -> dict[str, Any]:
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": api_version, "resources": [
        {"name": plural, "singularName": kind.lower(), "namespaced": ns, "kind": kind,
         "verbs": ["create", "delete", "get", "list", "patch", "update"]}
        for api, kind, plural, ns in RESOURCES if api == api_version]}


@contextlib.contextmanager
def serving(folder: Path) -> Iterator[FakeKube]:
    """A started FakeKube with its kubeconfig written to `folder` (`fake.kubeconfig`); stopped on exit."""
    fake = FakeKube().start()
    try:
        fake.kubeconfig = fake.write_kubeconfig(folder / "fake-kubeconfig.yaml")
        yield fake
    finally:
        fake.stop()


@pytest.fixture(name="fake_kube")
def fake_kube_fixture(tmp_path: Path) -> Iterator[FakeKube]:
    """The `fake_kube` fixture: import `fake_kube_fixture` into a test module to use it."""
    with serving(tmp_path) as fake:
        yield fake
