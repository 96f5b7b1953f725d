"""The review station Ray Serve application: `serve_apps.review:app` (route prefix `/review`).

One small deployment (0.1 CPU) with a FastAPI ingress (`serve_apps.review_api`) that serves the
station page and its JSON routes over the site review DB. Everything it needs comes from the
environment the platform gives both Serve apps at a site (`runtime_env.env_vars` locally,
container env in KubeRay renders):

| var | meaning |
|---|---|
| `ADCP_SITE` | site name (required) |
| `ADCP_REVIEW_DB_URL` | SQLAlchemy URL of the site review DB (required) |
| `ADCP_CENTER_PUBLIC_KEY` | the center's station-token public key, PEM (required) |
| `ADCP_CENTER_URL` | the coordinator's base URL, to exchange API tokens at login (optional) |
| `ADCP_DISPLAY_NAMES` | JSON `{"site", "products", "classes"}` (optional) |
| `ADCP_REVIEW_LEASE_S` | lease seconds of a claim (default 300) |
| `ADCP_SITE_STORE_OPTIONS` | JSON fsspec storage options of the site store (optional) |
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

from ray import serve

from configs.errors import ConfigError

__all__ = [
    "ReviewDeployment",
    "app",
    "station_settings",
]

logger = logging.getLogger("ray.serve")
_REQUIRED = ("ADCP_SITE", "ADCP_REVIEW_DB_URL", "ADCP_CENTER_PUBLIC_KEY")
_DEFAULT_LEASE_S = 300.0


def _json_env(env: Mapping[str, str], name: str) -> dict[str, Any]:
    text = env.get(name, "").strip()
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{name} is not valid JSON ({e}).", allowed="a JSON object") from e
    if not isinstance(value, dict):
        raise ConfigError(f"{name} is a JSON {type(value).__name__}, not an object.", allowed="a JSON object")
    return value


def station_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """The keyword arguments of `build_review_api` (besides `db`) plus `db_url`, read from `env`;
    ConfigError naming what is missing or malformed."""
    missing = [k for k in _REQUIRED if not env.get(k, "").strip()]
    if missing:
        raise ConfigError(f"The review station needs {', '.join(missing)} in its environment.",
                          hint="The platform sets them when it deploys both Serve apps of a site.")
    lease = env.get("ADCP_REVIEW_LEASE_S", "").strip()
    try:
        lease_s = float(lease) if lease else _DEFAULT_LEASE_S
    except ValueError as e:
        raise ConfigError(f"ADCP_REVIEW_LEASE_S is {lease!r}, not a number of seconds.") from e
    if lease_s <= 0:
        raise ConfigError(f"ADCP_REVIEW_LEASE_S is {lease_s}; a lease must last more than 0 seconds.")
    return {
        "db_url": env["ADCP_REVIEW_DB_URL"].strip(),
        "site": env["ADCP_SITE"].strip(),
        "public_key_pem": env["ADCP_CENTER_PUBLIC_KEY"],
        "center_url": env.get("ADCP_CENTER_URL", "").strip() or None,
        "display_names": _json_env(env, "ADCP_DISPLAY_NAMES"),
        "lease_s": lease_s,
        "store_options": _json_env(env, "ADCP_SITE_STORE_OPTIONS"),
    }


# No CPU reserved: the station is a light web app waiting on its DB and store, and a fractional CPU
# it held would be taken from what a site's training job needs (a 4-CPU site serving the ADC app
# has exactly 3 left for Ray Train's workers and Ray Data; 2.9 would leave the job pending).
@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64, health_check_period_s=10)
@serve.ingress()
class ReviewDeployment:
    """Ray Serve replica: the site review DB and the station's FastAPI app."""

    def __init__(self) -> None:
        from serve_apps.review_db import ReviewDB

        settings = station_settings(os.environ)
        self._db_url = settings.pop("db_url")
        self.settings = settings
        self.db = ReviewDB(self._db_url, lease_s=settings["lease_s"])
        logger.info("Review station for site %s (lease %s s, center %s)", settings["site"],
                    settings["lease_s"], settings["center_url"] or "not set")

    def __serve_build_asgi_app__(self):
        from serve_apps.review_api import build_review_api

        return build_review_api(self.db, **self.settings)

    def check_health(self) -> None:
        """Serve calls this every `health_check_period_s`: the replica is healthy while its DB answers."""
        self.db.get_state("health")

    def __del__(self) -> None:
        db = getattr(self, "db", None)
        if db is not None:
            db.close()


app = ReviewDeployment.bind()
