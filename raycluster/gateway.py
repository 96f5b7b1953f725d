"""The site gateway: the one seam through which the center reaches a site's services.

A gateway turns "site fab-b, service dashboard, path /api/jobs/" into a URL plus headers. Everything
above it (job submission, Serve calls, status, metrics scrapes) is the same code whatever the kind:

- `DirectGateway`: plain base URLs (a local Ray head, or a site behind an ingress); the Ray token
  goes in `Authorization: Bearer`.
- the `karmada` kind (karmada/) subclasses `SiteGateway` with the aggregated-proxy base URL and the
  kubeconfig's credentials, and moves the Ray token to `X-Ray-Authorization`.

`gateway_for(site, ...)` is the one factory the center calls. It finds the site's gateway kind in a
registry of kind -> factory (named "module:function" and imported only when a site of that kind is
used, as fsspec's registry does), so a platform of direct sites never imports `karmada`. A new kind
is one module with a factory plus one `register_gateway` line (and its config model in
`configs.platform`).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import httpx

from configs.errors import ConfigError, SiteError
from configs.platform import DirectGateway as DirectGatewayConfig
from configs.platform import SiteConfig

__all__ = [
    "SERVICES",
    "DirectGateway",
    "GatewayFactory",
    "Service",
    "SiteGateway",
    "direct_gateway",
    "gateway_factory",
    "gateway_for",
    "gateway_kinds",
    "read_token",
    "register_gateway",
    "resources",
    "serve_http_from_url",
    "site_status",
]

Service = Literal["dashboard", "serve", "metrics", "prometheus"]
SERVICES: tuple[str, ...] = ("dashboard", "serve", "metrics", "prometheus")


class SiteGateway(ABC):
    """How the center reaches one site's services."""

    def __init__(self, site: str) -> None:
        self.site = site

    @abstractmethod
    def base_url(self, service: Service) -> str:
        """Base URL of `service` (no trailing slash); SiteError when the site has none."""

    @abstractmethod
    def headers(self, service: Service) -> dict[str, str]:
        """Headers every request to `service` carries (authentication)."""

    def url(self, service: Service, path: str = "") -> str:
        return self.base_url(service) + ("/" + path.lstrip("/") if path else "")

    def client(self, service: Service, timeout_s: float = 10) -> httpx.Client:
        """An httpx client with the service's base URL and headers."""
        return httpx.Client(base_url=self.base_url(service), headers=self.headers(service),
                            timeout=timeout_s, **self.client_options())

    def client_options(self) -> dict[str, Any]:
        """Extra httpx options (TLS verification, client certificates)."""
        return {}

    def serve_http_options(self) -> dict[str, Any]:
        """`http_options` of a Serve config deployed through this gateway (where Serve listens)."""
        return serve_http_from_url(self.base_url("serve"))

    def job_client(self) -> Any:
        """Ray's `JobSubmissionClient` for the site's jobs API, through this gateway."""
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(address=self.base_url("dashboard"), headers=self.headers("dashboard"))


def serve_http_from_url(url: str) -> dict[str, Any]:
    """Serve's `http_options` for a Serve endpoint reached directly at `url`."""
    parts = urlsplit(url)
    return {"host": parts.hostname or "127.0.0.1", "port": parts.port or 8000}


def read_token(path: str | None) -> str:
    """The Ray token in file `path` ('' for no file); ConfigError when it cannot be read."""
    if not path:
        return ""
    try:
        return Path(path).read_text().strip()
    except OSError as e:
        raise ConfigError(f"Cannot read the site's Ray token at {path}: {e.strerror}.") from e


class DirectGateway(SiteGateway):
    """Plain base URLs; the Ray token as `Authorization: Bearer`."""

    def __init__(self, site: str, urls: dict[str, str | None], token: str = "") -> None:
        super().__init__(site)
        self.urls = {k: v.rstrip("/") for k, v in urls.items() if v}
        self.token = token

    def base_url(self, service: Service) -> str:
        try:
            return self.urls[service]
        except KeyError:
            raise SiteError(
                f"Site {self.site} has no {service} address.",
                allowed=", ".join(sorted(self.urls)) or "none configured",
                hint=f"Register it with `adcp site add {self.site} --{service} URL`.",
            ) from None

    def headers(self, service: Service) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


def direct_gateway(site: SiteConfig, *, local_urls: dict[str, str] | None = None, token: str = "",
                   **_options: Any) -> DirectGateway:
    """The `direct` kind's factory: the config's URLs, overridden by a running local site's
    `local_urls`. Options meant for other kinds (`karmada=`) do not concern it."""
    gw = site.gateway
    if not isinstance(gw, DirectGatewayConfig):
        raise TypeError(f"direct_gateway got a {gw.kind} gateway config for site {site.name}")
    urls = {"dashboard": gw.dashboard, "serve": gw.serve, "metrics": gw.metrics, "prometheus": gw.prometheus}
    urls.update({k: v for k, v in (local_urls or {}).items() if v})
    return DirectGateway(site.name, urls, token or read_token(gw.token_file))


class GatewayFactory(Protocol):
    """Builds one site's gateway. `local_urls`/`token` come from a running local site (its ports are
    picked at start, so they are not in the config); kind-specific options (the karmada kind's
    `karmada=` defaults) arrive as keywords, and a factory ignores those it does not use."""

    def __call__(self, site: SiteConfig, *, local_urls: dict[str, str] | None = None, token: str = "",
                 **options: Any) -> SiteGateway: ...


#: kind -> factory, or "module:attribute" of a factory imported on first use.
_registry: dict[str, GatewayFactory | str] = {
    "direct": direct_gateway,
    "karmada": "karmada.gateway:karmada_gateway",
}


def register_gateway(kind: str, factory: GatewayFactory | str, *, clobber: bool = False) -> None:
    """Add a gateway kind: a factory, or "module:attribute" naming one (imported when first used).
    ValueError when `kind` is taken and `clobber` is false."""
    if kind in _registry and not clobber:
        raise ValueError(f"Gateway kind {kind!r} is already registered; pass clobber=True to replace it.")
    _registry[kind] = factory


def gateway_kinds() -> list[str]:
    """The registered gateway kinds."""
    return sorted(_registry)


def gateway_factory(kind: str) -> GatewayFactory:
    """The factory of gateway `kind`, importing its module on first use. ConfigError for an unknown
    kind; ImportError naming the module when it cannot be imported."""
    try:
        factory = _registry[kind]
    except KeyError:
        raise ConfigError(f"Unknown site gateway kind {kind!r}.", allowed=", ".join(gateway_kinds())) from None
    if isinstance(factory, str):
        module, _, attribute = factory.partition(":")
        try:
            factory = getattr(importlib.import_module(module), attribute)
        except ImportError as e:
            raise ImportError(f"The {kind} site gateway needs {module}, which cannot be imported: {e}") from e
        _registry[kind] = factory
    return factory


def gateway_for(site: SiteConfig, *, local_urls: dict[str, str] | None = None, token: str = "",
                **options: Any) -> SiteGateway:
    """The gateway a site's config asks for (its `gateway.kind`), built by that kind's factory."""
    return gateway_factory(site.gateway.kind)(site, local_urls=local_urls, token=token, **options)


def _camel(name: str) -> str:
    """How the dashboard's JSON (`to_google_style`) renames a resource in /api/cluster_status."""
    first, *rest = name.split("_")
    return first + "".join(part.title() for part in rest)


def resources(
    totals: Mapping[str, float], usage: Mapping[str, list[float]]
) -> dict[str, dict[str, Any]]:
    """Total and available CPU, GPU, memory, object store and custom resources of a cluster.

    `totals` are the summed `resources_total` of the live nodes (`/api/v0/nodes`), which keep
    resource names as given; `usage` is `/api/cluster_status` usage, `{camelName: [used, total]}`,
    whose names the dashboard camel-cases (`fab_a` -> `fabA`), so it is only used for amounts used.
    """
    known = ("CPU", "GPU", "memory", "object_store_memory")
    out: dict[str, dict[str, Any]] = {
        part: dict.fromkeys(known, 0.0) | {"custom": {}} for part in ("total", "available")
    }
    for name, total in totals.items():
        if name.startswith(("node:", "accelerator_type:")):
            continue  # Ray's placement markers, not capacity
        used = usage.get(_camel(name), [0.0])[0]
        for part, amount in (("total", total), ("available", total - used)):
            (out[part] if name in known else out[part]["custom"])[name] = amount
    return out


def site_status(gateway: SiteGateway, *, timeout_s: float = 5) -> dict[str, Any]:
    """Reachability, Ray version, resources total/available, jobs and Serve apps (never raises)."""
    out: dict[str, Any] = {"name": gateway.site, "reachable": False}
    try:
        with gateway.client("dashboard", timeout_s) as c:
            version = c.get("/api/version").raise_for_status().json()
            nodes = c.get("/api/v0/nodes", params={"detail": "1"}).raise_for_status().json()
            cluster = c.get("/api/cluster_status", params={"format": "0"}).raise_for_status().json()
            jobs = c.get("/api/jobs/").raise_for_status().json()
            serve = c.get("/api/serve/applications/")
        totals: dict[str, float] = {}
        for node in nodes["data"]["result"]["result"]:
            if node["state"] == "ALIVE":
                for name, amount in node["resources_total"].items():
                    totals[name] = totals.get(name, 0.0) + amount
        report = (cluster["data"]["clusterStatus"] or {}).get("loadMetricsReport", {})
    except (httpx.HTTPError, SiteError, ValueError, KeyError, TypeError) as e:
        out["error"] = f"{type(e).__name__}: {e}"
        return out
    apps: dict[str, str] = {}
    if serve.status_code == 200:
        for name, app in (serve.json().get("applications") or {}).items():
            apps[name] = app.get("status", "UNKNOWN")
    out.update(
        reachable=True,
        ray_version=version.get("ray_version"),
        resources=resources(totals, report.get("usage", {})),
        jobs={
            "running": sorted(j.get("submission_id") or j.get("job_id") or "?" for j in jobs
                              if j.get("status") in ("PENDING", "RUNNING")),
            "total": len(jobs),
        },
        serve_apps=apps,
    )
    return out
