"""Routes that make the coordinator the one door for a remote client: local-site startup state,
long work as tasks, a site's Ray address for Ray's own tools, classification through the gateway,
verification as a task, and the platform file the coordinator runs with.

`create_app` adds them with `add_platform_routes(app, center, tasks, local_sites)`; the app-wide
role check (coordinator.api.auth) guards each.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from fastapi import FastAPI, File, Query, Request, UploadFile
from pydantic import BaseModel, ConfigDict, Field

from configs.errors import InputError, SiteError
from configs.tasks import TaskRecord
from coordinator.center.core import CENTER, Center
from coordinator.center.local_sites import LocalSites
from coordinator.jobs.tasks import TaskRunner

__all__ = ["VerifyIn", "add_platform_routes", "principal_name"]

_PREFIX = "/api/v1"
#: Images one classify call forwards (the Serve app's batch endpoint takes this many at most).
MAX_CLASSIFY_FILES = 64


class VerifyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    artifact: str = Field(..., description="KIND/NAME[@VERSION]", examples=["dataset/aoi@1"])
    site: str = Field(CENTER, description="'center' or a site name")
    repair: bool = Field(False, description="Re-copy bad or missing objects from the center")


def principal_name(request: Request) -> str | None:
    """The name of the caller, when the door put one on the request."""
    p = getattr(request.state, "principal", None)
    return getattr(p, "name", None)


def add_platform_routes(app: FastAPI, center: Center, tasks: TaskRunner, local_sites: LocalSites | None) -> None:
    @app.get(f"{_PREFIX}/local-sites", tags=["sites"])
    def local_sites_status() -> dict[str, Any]:
        """The platform's local sites (embedded default) as the coordinator starts them:
        `ready` once every one is running or failed."""
        return local_sites.status() if local_sites else {"ready": True, "sites": {}}

    @app.get(f"{_PREFIX}/platform", tags=["sites"])
    def platform() -> dict[str, Any]:
        """The platform configuration the coordinator runs with (what `adcp render` builds from)."""
        return center.config.model_dump(mode="json")

    @app.get(f"{_PREFIX}/tasks", tags=["tasks"])
    def list_tasks(limit: int = Query(50, ge=1, le=500)) -> list[TaskRecord]:
        """Long work the coordinator runs (pushes, rollouts, verifies), newest first."""
        return tasks.list(limit)

    @app.get(f"{_PREFIX}/tasks/{{task_id}}", tags=["tasks"])
    def get_task(task_id: str) -> TaskRecord:
        """One task: state, events, per-destination progress, result or error."""
        return tasks.get(task_id)

    @app.get(f"{_PREFIX}/sites/{{name}}/env", tags=["sites"])
    def site_env(name: str) -> dict[str, Any]:
        """What Ray's own tools need for this site, through its gateway: `RAY_ADDRESS` and
        `RAY_JOB_HEADERS` for `ray job submit`, and the Ray dashboard address."""
        gw = center.gateway(name)
        address = gw.base_url("dashboard")
        headers = gw.headers("dashboard")
        env = {"RAY_ADDRESS": address, "RAY_JOB_HEADERS": json.dumps(headers, sort_keys=True)}
        try:
            serve = gw.base_url("serve")
        except SiteError:
            serve = None
        return {"site": name, "env": env, "dashboard_url": address + "/", "serve_url": serve,
                "serve_headers": gw.headers("serve") if serve else {},
                "gateway": center.site(name).gateway.kind}

    @app.post(f"{_PREFIX}/sites/{{name}}/classify", tags=["sites"])
    def classify(name: str,
                 files: list[UploadFile] = File(..., description="Images (PNG, JPEG, ...)")) -> dict[str, Any]:
        """Classify images at a site's ADC app, through the site gateway: one result per file."""
        if len(files) > MAX_CLASSIFY_FILES:
            raise InputError(f"Got {len(files)} images.", allowed=f"at most {MAX_CLASSIFY_FILES} per call")
        gw = center.gateway(name)
        parts = [("files", (f.filename or f"image-{i}", f.file.read(), f.content_type or "image/png"))
                 for i, f in enumerate(files)]
        try:
            with gw.client("serve", timeout_s=120) as client:
                r = client.post("/v1/classify/batch", files=parts)
        except httpx.HTTPError as e:
            raise SiteError(f"Cannot reach the ADC app at {name}: {e}.") from e
        if r.status_code >= 400:
            try:
                detail = r.json()
            except ValueError:
                detail = {"detail": r.text[:300]}
            err = InputError if r.status_code < 500 else SiteError
            raise err(f"The ADC app at {name} answered {r.status_code}: {detail.get('detail') or detail}")
        return {"site": name, "results": r.json()["results"]}

    @app.post(f"{_PREFIX}/artifacts/verify", tags=["artifacts"], status_code=202)
    def verify(body: VerifyIn, request: Request) -> TaskRecord:
        """Rehash every object of an artifact where it is stored (a task: follow /tasks/{id})."""
        if body.site != CENTER:
            center.site(body.site)  # 404 naming the known sites, before a task starts
        task = tasks.start("verify", f"{body.artifact} at {body.site}",
                           lambda report: center.verify(body.artifact, body.site, repair=body.repair),
                           user=principal_name(request))
        return task
