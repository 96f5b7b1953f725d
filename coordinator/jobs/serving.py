"""Deploying a site's Serve apps: the ADC app (route `/`) and the review station (`/review`).

Both apps go in every config (Serve's PUT replaces the whole set of applications), with the same
code bundle and the site's environment (`configs.site_env`: site, store, review DB, the center's
public key and URL, display names). Deployment goes through the dashboard's Serve REST API
(`PUT /api/serve/applications/`, what `serve deploy` uses), so it works the same through any site
gateway. Changing only the model URI
changes the deployment's `user_config`, which Serve applies to running replicas in place: the new
model is swapped in without restarting replicas or dropping requests.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import httpx

from configs import site_env as env_names
from configs.errors import ConfigError, SiteError
from configs.models import ServeConfig, ServeUserConfig
from configs.platform import SiteConfig
from coordinator.center.local_sites import review_db_url

if TYPE_CHECKING:
    from coordinator.center.core import Center

__all__ = ["DEPLOYMENT", "IMPORT_PATH", "REVIEW_APP", "REVIEW_IMPORT_PATH", "REVIEW_ROUTE_PREFIX", "app_status",
           "center_url", "deploy", "serve_config", "site_env", "site_user_config"]

IMPORT_PATH = "serve_apps.adc:app"
DEPLOYMENT = "ADCDeployment"
REVIEW_APP = env_names.REVIEW_APP
REVIEW_IMPORT_PATH = env_names.REVIEW_IMPORT_PATH
REVIEW_ROUTE_PREFIX = env_names.REVIEW_ROUTE_PREFIX
_POLL_S = 0.5


def serve_config(cfg: ServeConfig, *, working_dir: str, http_port: int | None = None,
                 http_options: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> dict[str, Any]:
    """The Serve REST config (the schema `serve deploy` takes) for both apps of a site: the ADC app
    (`cfg`) and the review station (`serve_apps.review:app` at `/review`), both imported from
    `working_dir` with `env` (`site_env(...)` plus anything else) as their env_vars. Serve listens
    at `http_options` (a gateway's `serve_http_options()`), or on 127.0.0.1:`http_port`."""
    if cfg.route_prefix == REVIEW_ROUTE_PREFIX or cfg.app_name == REVIEW_APP:
        raise ConfigError(f"The ADC app cannot be named {REVIEW_APP!r} or served at {REVIEW_ROUTE_PREFIX}: "
                        "the review station has them.", hint="Use another app_name / route_prefix.")
    def runtime_env() -> dict[str, Any]:
        return {"working_dir": working_dir, "env_vars": dict(env or {})}

    return {
        "proxy_location": "HeadOnly",
        "http_options": http_options or {"host": "127.0.0.1", "port": http_port},
        "applications": [
            {
                "name": cfg.app_name,
                "route_prefix": cfg.route_prefix,
                "import_path": IMPORT_PATH,
                "runtime_env": runtime_env(),
                "deployments": [
                    {
                        "name": DEPLOYMENT,
                        "num_replicas": cfg.num_replicas,
                        "max_ongoing_requests": cfg.max_ongoing_requests,
                        "ray_actor_options": {"num_cpus": cfg.replica_cpus, "num_gpus": cfg.replica_gpus},
                        "user_config": cfg.user_config.model_dump(),
                    }
                ],
            },
            {
                "name": REVIEW_APP,
                "route_prefix": REVIEW_ROUTE_PREFIX,
                "import_path": REVIEW_IMPORT_PATH,
                "runtime_env": runtime_env(),
            },
        ],
    }


def site_user_config(cfg: ServeConfig, site: SiteConfig) -> ServeConfig:
    """`cfg` with the ADC app's `audit_rate` taken from the site's `review.audit_rate`."""
    if "audit_rate" not in ServeUserConfig.model_fields:  # older configs.models: no audit sampling yet
        return cfg
    return cfg.model_copy(update={"user_config": cfg.user_config.model_copy(
        update={"audit_rate": site.review.audit_rate})})


def center_url(center: Center) -> str | None:
    """The coordinator's base URL as sites reach it: `center.api.public_url`, else the URL of the
    coordinator running for `center.home` (`adcp up` records it; 0.0.0.0 read as 127.0.0.1), else None."""
    if center.config.center.api.public_url:
        return center.config.center.api.public_url
    from coordinator.process import info_path  # the process module: only the recorded URL is read

    try:
        url = json.loads(info_path(center.home).read_text()).get("url")
    except (OSError, ValueError, AttributeError):
        return None
    return url.replace("://0.0.0.0:", "://127.0.0.1:") if isinstance(url, str) and url else None


def site_env(center: Center, site: str | SiteConfig) -> dict[str, str]:
    """The environment of both Serve apps at `site` (contract §3): site name, the site store's URL
    and options, the review DB URL (local sites: SQLite in the site's folder), the center's
    station-token public key, the coordinator's URL, display names and the lease. Deterministic
    for the same inputs, so a rollout keeps the apps' runtime_env (replicas swap models in place)."""
    cfg = center.site(site) if isinstance(site, str) else site
    store = center.store(cfg.name)
    keys = getattr(center, "station_keys", None)  # Center.station_keys (coordinator.center.station_keys)
    return env_names.site_env(
        cfg, center.config.display_names, store_url=store.url, store_options=store.storage_options,
        db_url=review_db_url(center.home, cfg), public_key=keys.public_pem() if keys is not None else None,
        center_url=center_url(center))


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
