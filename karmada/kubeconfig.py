"""A kubeconfig context as the kubernetes client's `Configuration`, and the same credentials for
httpx (the gateway's Ray and Serve calls go through the Karmada apiserver with them)."""

from __future__ import annotations

import ssl
from typing import Any

from configs.errors import ConfigError

__all__ = ["api_client", "auth_headers", "httpx_options", "load", "requests_options"]


def load(kubeconfig: str | None = None, context: str | None = None) -> Any:
    """The `kubernetes.client.Configuration` of `context` in `kubeconfig` (default: $KUBECONFIG or
    ~/.kube/config, current context). Raises ConfigError when the file or context is missing."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    cfg = client.Configuration()
    try:
        config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg,
                                persist_config=False)
    except (ConfigException, OSError, TypeError) as e:
        where = kubeconfig or "$KUBECONFIG or ~/.kube/config"
        raise ConfigError(f"Cannot load the kubeconfig {where}" + (f" (context {context})" if context else "")
                          + f": {e}", hint="Point karmada.kubeconfig at the Karmada apiserver's kubeconfig.") from e
    return cfg


def api_client(cfg: Any) -> Any:
    from kubernetes import client

    return client.ApiClient(cfg)


def auth_headers(cfg: Any) -> dict[str, str]:
    """The apiserver credentials that travel as headers (a bearer token, when the context has one)."""
    token = (cfg.api_key or {}).get("authorization") or (cfg.api_key or {}).get("BearerToken")
    if not token:
        return {}
    prefix = (cfg.api_key_prefix or {}).get("authorization", "")
    value = f"{prefix} {token}".strip() if prefix else token
    if not value.lower().startswith("bearer "):
        value = f"Bearer {value}"
    return {"Authorization": value}


def httpx_options(cfg: Any) -> dict[str, Any]:
    """httpx TLS settings from the Configuration: an SSL context with the CA (or no verification when
    the context says insecure-skip-tls-verify) and the client certificate."""
    if not cfg.host.startswith("https"):
        return {}
    if not cfg.verify_ssl:
        return {"verify": False}
    ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert or None)
    if cfg.cert_file:
        ctx.load_cert_chain(cfg.cert_file, cfg.key_file or None)
    return {"verify": ctx}


def requests_options(cfg: Any) -> dict[str, Any]:
    """The same settings for `requests` (Ray's JobSubmissionClient): `verify` (CA file or bool), `cert`."""
    if not cfg.host.startswith("https"):
        return {}
    opts: dict[str, Any] = {"verify": (cfg.ssl_ca_cert or True) if cfg.verify_ssl else False}
    if cfg.cert_file:
        opts["cert"] = (cfg.cert_file, cfg.key_file) if cfg.key_file else cfg.cert_file
    return opts
