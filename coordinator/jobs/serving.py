"""Deploying the ADC Serve app at a site.

Deployment goes through the dashboard's Serve REST API (`PUT /api/serve/applications/`, what
`serve deploy` uses), so it works the same through any site gateway. Changing only the model URI
changes the deployment's `user_config`, which Serve applies to running replicas in place: the new
model is swapped in without restarting replicas or dropping requests.
"""

from __future__ import annotations

from typing import Any

import httpx

from configs.errors import SiteError
from configs.models import ServeConfig

__all__ = ["DEPLOYMENT", "IMPORT_PATH", "app_status", "deploy", "serve_config"]

IMPORT_PATH = "serve_apps.adc:app"
DEPLOYMENT = "ADCDeployment"
_POLL_S = 0.5


def serve_config(cfg: ServeConfig, *, working_dir: str, http_port: int | None = None,
                 http_options: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> dict[str, Any]:
    """The Serve REST config (the schema `serve deploy` takes) for the ADC app. Serve listens at
    `http_options` (a gateway's `serve_http_options()`), or on 127.0.0.1:`http_port`."""
    return {
        "proxy_location": "HeadOnly",
        "http_options": http_options or {"host": "127.0.0.1", "port": http_port},
        "applications": [
            {
                "name": cfg.app_name,
                "route_prefix": cfg.route_prefix,
                "import_path": IMPORT_PATH,
                "runtime_env": {"working_dir": working_dir, "env_vars": dict(env or {})},
                "deployments": [
                    {
                        "name": DEPLOYMENT,
                        "num_replicas": cfg.num_replicas,
                        "max_ongoing_requests": cfg.max_ongoing_requests,
                        "ray_actor_options": {"num_cpus": cfg.replica_cpus, "num_gpus": cfg.replica_gpus},
                        "user_config": cfg.user_config.model_dump(),
                    }
                ],
            }
        ],
    }


def deploy(dashboard_url: str, headers: dict[str, str], config: dict[str, Any], *,
           tls: dict[str, Any] | None = None) -> None:
    """PUT the config; Serve then converges in the background (see `coordinator.jobs.rollout`). `tls`: httpx
    `verify`/`cert` options of the gateway."""
    try:
        r = httpx.put(f"{dashboard_url}/api/serve/applications/", json=config, headers=headers, timeout=60,
                      **(tls or {}))
    except httpx.HTTPError as e:
        raise SiteError(f"Cannot reach the site's dashboard at {dashboard_url}: {e}") from e
    if r.status_code >= 400:
        raise SiteError(f"The site rejected the Serve config ({r.status_code}): {r.text[:500]}")


def app_status(dashboard_url: str, headers: dict[str, str], app_name: str, *,
               tls: dict[str, Any] | None = None) -> dict[str, Any]:
    r = httpx.get(f"{dashboard_url}/api/serve/applications/", headers=headers, timeout=10, **(tls or {}))
    r.raise_for_status()
    return (r.json().get("applications") or {}).get(app_name) or {}
