"""Deploying the ADC Serve app at a site and classifying images through it.

Deployment goes through the dashboard's Serve REST API (`PUT /api/serve/applications/`, what
`serve deploy` uses), so it works the same through any site gateway. Changing only the model URI
changes the deployment's `user_config`, which Serve applies to running replicas in place: the new
model is swapped in without restarting replicas or dropping requests.
"""

from __future__ import annotations

import time
from typing import Any, Iterable

import httpx

from configs.errors import AdcpError, SiteError
from configs.models import ServeConfig

__all__ = ["IMPORT_PATH", "DEPLOYMENT", "serve_config", "deploy", "app_status", "wait_serving", "classify_batch",
           "classify_one"]

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
    """PUT the config; Serve then converges in the background (see `wait_serving`). `tls`: httpx
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


def wait_serving(
    dashboard_url: str,
    headers: dict[str, str],
    serve_url: str,
    app_name: str,
    model_id: str,
    *,
    model_uri: str | None = None,
    timeout_s: float = 180,
) -> float:
    """Wait until the app is RUNNING and answers with `model_id`; returns the seconds it took.

    Fails early when the running app reports that it could not load `model_uri` (it then keeps
    serving its previous model, see `reconfigure_error` in `GET /v1/model`)."""
    started = time.monotonic()
    last = "not deployed yet"
    with httpx.Client(timeout=5) as client:
        while time.monotonic() - started < timeout_s:
            try:
                app = app_status(dashboard_url, headers, app_name)
                state = app.get("status", "NOT_STARTED")
                if state in ("DEPLOY_FAILED", "UNHEALTHY"):
                    raise SiteError(f"Serve app {app_name} is {state}: {app.get('message', '')[:800]}")
                last = f"app {state}"
                if state == "RUNNING":
                    r = client.get(f"{serve_url}/v1/model")
                    body = r.json() if r.status_code == 200 else {}
                    served = body.get("model_version")
                    if served == model_id:
                        return time.monotonic() - started
                    failed = body.get("reconfigure_error") or {}
                    if model_uri and failed.get("model_uri") == model_uri:
                        raise SiteError(
                            f"Serve app {app_name} could not load {model_uri}: {failed.get('detail')}",
                            hint=f"It keeps serving {served}.",
                        )
                    last = f"app RUNNING, serving {served or 'no model'}"
            except httpx.HTTPError as e:
                last = f"{type(e).__name__}: {e}"
            time.sleep(_POLL_S)
    raise SiteError(f"Serve app {app_name} did not serve {model_id} within {timeout_s:.0f} s ({last}).")


def classify_batch(client: httpx.Client, serve_url: str, images: Iterable[tuple[str, bytes]]) -> list[dict[str, Any]]:
    """POST images to `/v1/classify/batch` (multipart); results in input order."""
    files = [("files", (name, blob, "image/png")) for name, blob in images]
    r = client.post(f"{serve_url}/v1/classify/batch", files=files)
    if r.status_code >= 400:
        raise _http_error(r)
    return r.json()["results"]


def classify_one(client: httpx.Client, serve_url: str, blob: bytes, content_type: str = "image/png") -> dict[str, Any]:
    r = client.post(f"{serve_url}/v1/classify", content=blob, headers={"Content-Type": content_type})
    if r.status_code >= 400:
        raise _http_error(r)
    return r.json()


def _http_error(r: httpx.Response) -> AdcpError:
    try:
        body = r.json()
        detail = body.get("detail") or body.get("error") or r.text
    except ValueError:
        detail = r.text[:300]
    return AdcpError(f"The Serve app answered {r.status_code}: {detail}")
