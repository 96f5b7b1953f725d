"""The `karmada` site gateway: a site's Ray services through the Karmada apiserver's aggregated
cluster proxy.

    <apiserver>/apis/cluster.karmada.io/v1alpha1/clusters/<cluster>/proxy/
        api/v1/namespaces/<ns>/services/<svc>:<port>/proxy/<path>

The apiserver authenticates the kubeconfig's credentials (bearer token, client certificate) and
consumes `Authorization`, so the site's Ray token travels in `X-Ray-Authorization`, which Ray's
dashboard accepts in its place. Job submission, Serve calls and metrics scrapes use the same code as
for a direct gateway; only the base URL, headers and TLS options differ.

`karmada_gateway` is this kind's factory in `raycluster.gateway`'s registry; the center calls
`raycluster.gateway.gateway_for`, which imports this module only when a karmada site is used.
"""

from __future__ import annotations

import functools
from typing import Any
from urllib.parse import quote

from configs.errors import ConfigError
from configs.kube import KarmadaConfig
from configs.platform import KarmadaGateway as KarmadaGatewayConfig
from configs.platform import SiteConfig
from karmada import kubeconfig
from raycluster import gateway as direct
from raycluster.gateway import Service, SiteGateway

__all__ = ["PROXY_PATH", "KarmadaSiteGateway", "forget_credentials", "karmada_gateway"]

PROXY_PATH = ("/apis/cluster.karmada.io/v1alpha1/clusters/{cluster}/proxy"
              "/api/v1/namespaces/{namespace}/services/{service}/proxy")


class KarmadaSiteGateway(SiteGateway):
    """Base URLs under the aggregated proxy; apiserver credentials plus `X-Ray-Authorization`."""

    def __init__(self, site: str, *, apiserver: str, cluster: str, namespace: str, services: dict[str, str],
                 kube_headers: dict[str, str] | None = None, tls: dict[str, Any] | None = None,
                 requests_tls: dict[str, Any] | None = None, ray_token: str = "",
                 serve_http: dict[str, Any] | None = None) -> None:
        super().__init__(site)
        self.apiserver = apiserver.rstrip("/")
        self.cluster = cluster
        self.namespace = namespace
        self.services = dict(services)
        self.kube_headers = dict(kube_headers or {})
        self.tls = dict(tls or {})
        self.requests_tls = dict(requests_tls or {})
        self.ray_token = ray_token
        self._serve_http = serve_http

    def base_url(self, service: Service) -> str:
        try:
            svc = self.services[service]
        except KeyError:
            raise ConfigError(f"Site {self.site} names no {service} service.",
                              allowed=", ".join(sorted(self.services))) from None
        return self.apiserver + PROXY_PATH.format(
            cluster=quote(self.cluster, safe=""), namespace=quote(self.namespace, safe=""),
            service=quote(svc, safe=":"))

    def headers(self, service: Service) -> dict[str, str]:
        out = dict(self.kube_headers)
        if self.ray_token:
            out["X-Ray-Authorization"] = f"Bearer {self.ray_token}"
        return out

    def client_options(self) -> dict[str, Any]:
        return dict(self.tls)

    def serve_http_options(self) -> dict[str, Any]:
        """Inside the cluster Serve listens on all pod addresses at the serve service's port."""
        if self._serve_http:
            return dict(self._serve_http)
        port = self.services.get("serve", ":8000").rsplit(":", 1)[1]
        return {"host": "0.0.0.0", "port": int(port) if port.isdigit() else 8000}

    def job_client(self) -> Any:
        """Ray's `JobSubmissionClient` through the proxy, with the CA and client certificate."""
        from ray.job_submission import JobSubmissionClient

        verify = self.requests_tls.get("verify", True)
        cert = self.requests_tls.get("cert")
        if cert is None:
            return JobSubmissionClient(address=self.base_url("dashboard"), headers=self.headers("dashboard"),
                                       verify=verify)
        return _cert_job_client_class()(address=self.base_url("dashboard"), headers=self.headers("dashboard"),
                                        verify=verify, cert=cert)


@functools.cache
def _cert_job_client_class() -> type:
    from ray.job_submission import JobSubmissionClient

    class CertJobClient(JobSubmissionClient):
        """Ray's client sends no client certificate; kubeconfigs often authenticate with one."""

        def __init__(self, *args: Any, cert: Any, **kwargs: Any) -> None:
            self._adcp_cert = cert
            super().__init__(*args, **kwargs)

        def _do_request(self, method: str, endpoint: str, **kwargs: Any) -> Any:
            kwargs.setdefault("cert", self._adcp_cert)
            return super()._do_request(method, endpoint, **kwargs)

    return CertJobClient


@functools.lru_cache(maxsize=32)
def _credentials(kubeconfig_path: str | None, context: str | None) -> dict[str, Any]:
    """Apiserver URL, auth headers and TLS options (httpx and requests) of a kubeconfig context,
    read once per process."""
    cfg = kubeconfig.load(kubeconfig_path, context)
    return {"apiserver": cfg.host, "kube_headers": kubeconfig.auth_headers(cfg),
            "tls": kubeconfig.httpx_options(cfg), "requests_tls": kubeconfig.requests_options(cfg)}


def karmada_gateway(site: SiteConfig, *, karmada: KarmadaConfig | None = None,
                    local_urls: dict[str, str] | None = None, token: str = "", **_options: Any) -> KarmadaSiteGateway:
    """The `karmada` kind's factory: the site's services under the aggregated proxy, with the
    credentials of its kubeconfig context (else the platform's `karmada` defaults). For a local site
    (`local_urls`/`token` from its running Ray head) behind a karmada gateway, which is how the
    tests exercise the proxy path, Serve keeps the local head's HTTP address."""
    gw = site.gateway
    if not isinstance(gw, KarmadaGatewayConfig):
        raise TypeError(f"karmada_gateway got a {gw.kind} gateway config for site {site.name}")
    defaults = karmada or KarmadaConfig()
    serve_http = None
    if local_urls and local_urls.get("serve"):
        serve_http = direct.serve_http_from_url(local_urls["serve"])
    creds = _credentials(gw.kubeconfig or defaults.kubeconfig, gw.context or defaults.context)
    return KarmadaSiteGateway(
        site.name, cluster=gw.cluster, namespace=gw.namespace,
        services={"dashboard": gw.dashboard_service, "serve": gw.serve_service, "metrics": gw.metrics_service,
                  **({"prometheus": gw.prometheus_service} if gw.prometheus_service else {})},
        ray_token=token or direct.read_token(gw.token_file), serve_http=serve_http, **creds)


def forget_credentials() -> None:
    """Drop cached kubeconfig credentials (after a kubeconfig changed on disk)."""
    _credentials.cache_clear()
