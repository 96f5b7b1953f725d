"""The environment both Serve apps of a site run with (issue 12, contract §3), and the names of
the review station app: one place, so the coordinator (local sites' Serve config), the KubeRay
render (container env) and the apps that read it agree.

The variables:

- `ADCP_SITE`: the site name; `ADCP_SITE_STORE` (+ `ADCP_SITE_STORE_OPTIONS`, JSON): the site
  store's fsspec URL (root of the ArtifactStore) and storage options;
- `ADCP_REVIEW_DB_URL`: SQLAlchemy URL of the site review DB (in KubeRay renders it comes from the
  Secret `SiteConfig.review_db_secret`, key `url`, via `secretKeyRef`);
- `ADCP_CENTER_PUBLIC_KEY`: PEM of the center's station-token key; `ADCP_CENTER_URL`: the
  coordinator's base URL (both may be absent);
- `ADCP_DISPLAY_NAMES`: JSON `{"site", "products", "classes"}`; `ADCP_REVIEW_LEASE_S`: lease seconds.
"""

from __future__ import annotations

import json
from typing import Any

from configs.platform import DisplayNames, SiteConfig

__all__ = [
    "CENTER_PUBLIC_KEY",
    "CENTER_URL",
    "DISPLAY_NAMES",
    "REVIEW_APP",
    "REVIEW_DB_SECRET_KEY",
    "REVIEW_DB_URL",
    "REVIEW_IMPORT_PATH",
    "REVIEW_LEASE_S",
    "REVIEW_ROUTE_PREFIX",
    "SITE",
    "SITE_STORE",
    "SITE_STORE_OPTIONS",
    "display_names",
    "site_env",
]

#: The review station's Serve application (serve_apps.review), beside the ADC app at every site.
REVIEW_APP = "review"
REVIEW_IMPORT_PATH = "serve_apps.review:app"
REVIEW_ROUTE_PREFIX = "/review"
#: The key of the review DB Secret that holds the SQLAlchemy URL (KubeRay renders).
REVIEW_DB_SECRET_KEY = "url"

SITE = "ADCP_SITE"
SITE_STORE = "ADCP_SITE_STORE"
SITE_STORE_OPTIONS = "ADCP_SITE_STORE_OPTIONS"
REVIEW_DB_URL = "ADCP_REVIEW_DB_URL"
CENTER_PUBLIC_KEY = "ADCP_CENTER_PUBLIC_KEY"
CENTER_URL = "ADCP_CENTER_URL"
DISPLAY_NAMES = "ADCP_DISPLAY_NAMES"
REVIEW_LEASE_S = "ADCP_REVIEW_LEASE_S"


def display_names(site: SiteConfig, names: DisplayNames) -> dict[str, Any]:
    """`{"site": the site's display name (else its name), "products": {...}, "classes": {...}}`,
    classes being DEFAULT_CLASS_NAMES with the platform's names over them."""
    return {"site": site.title, "products": dict(names.products), "classes": names.class_names()}


def site_env(site: SiteConfig, names: DisplayNames, *, store_url: str | None = None,
             store_options: dict[str, Any] | None = None, db_url: str | None = None,
             public_key: str | None = None, center_url: str | None = None) -> dict[str, str]:
    """The §3 variables of `site` as strings, in a fixed order (the same inputs give the same dict,
    so a rollout does not change the apps' runtime_env and restart their replicas). What is not
    given (None) is left out; `store_url` defaults to the site's store."""
    env = {SITE: site.name, SITE_STORE: store_url or site.store.url}
    options = site.store.options if store_options is None else store_options
    if options:
        env[SITE_STORE_OPTIONS] = json.dumps(options, sort_keys=True)
    if db_url:
        env[REVIEW_DB_URL] = db_url
    if public_key:
        env[CENTER_PUBLIC_KEY] = public_key
    if center_url:
        env[CENTER_URL] = center_url.rstrip("/")
    env[DISPLAY_NAMES] = json.dumps(display_names(site, names), ensure_ascii=False, sort_keys=True)
    env[REVIEW_LEASE_S] = str(site.review.lease_s)
    return env
