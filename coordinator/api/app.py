"""The coordinator's HTTP API (FastAPI). Every route under /api/v1 passes the door
(`coordinator.api.auth`): a bearer token (the admin one created at `adcp up`, or a user's), a role
allowed by `ROUTE_ROLES`, and an audit row for every change; each handler calls the same `Center`
method the CLI calls.

OpenAPI docs are at /docs and /openapi.json (they describe the API and hold no data).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from configs.errors import AdcpError, InputError
from coordinator.api.auth import install_door
from coordinator.api.dataset_routes import add_dataset_routes
from coordinator.api.gate_routes import add_gate_routes
from coordinator.api.job_routes import add_job_routes
from coordinator.api.line_routes import add_line_routes
from coordinator.api.model_routes import add_model_routes
from coordinator.api.monitoring_routes import add_monitoring_routes
from coordinator.api.platform_routes import add_platform_routes, principal_name
from coordinator.api.quality_routes import add_quality_routes
from coordinator.api.release_routes import add_release_routes
from coordinator.api.retrain_routes import add_retrain_routes
from coordinator.api.review_routes import add_review_routes
from coordinator.api.upload_routes import add_upload_routes
from coordinator.api.user_routes import add_user_routes
from coordinator.center.core import CENTER, Center
from coordinator.center.local_sites import LocalSites
from coordinator.center.uploads import Uploads
from coordinator.dashboard.routes import add_dashboard_routes
from coordinator.jobs.release import Releaser
from coordinator.jobs.retrain import Retrainer
from coordinator.jobs.runner import Trainer
from coordinator.jobs.tasks import TaskRunner
from coordinator.monitoring.monitor import Monitor
from data.artifacts import KINDS

__all__ = ["API_VERSION", "SiteIn", "TransferIn", "create_app"]

API_VERSION = "v1"
log = logging.getLogger("adcp.coordinator")


class SiteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    dashboard: str = Field(..., description="Ray dashboard base URL")
    store: str = Field(..., description="fsspec URL of the site store")
    store_options: dict[str, Any] = Field(default_factory=dict, description="fsspec storage options (no secrets)")
    serve: str | None = None
    metrics: str | None = None
    registry: str | None = None
    transfer: Literal["push", "pull"] = "push"
    labels: dict[str, str] = Field(default_factory=dict)
    token_file: str | None = Field(None, description="File with the site's Ray token, on the coordinator's host")


class TransferIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    artifact: str = Field(..., description="KIND/NAME[@VERSION]", examples=["dataset/aoi@1"])
    to: list[str] = Field(..., min_length=1, description="Destination sites")
    source: str = Field(CENTER, description="'center' or a site name")
    verify_existing: bool = False
    max_mbps: float | None = Field(None, gt=0, description="Bandwidth cap per destination, MB/s")


def create_app(center: Center, token: str, trainer: Trainer | None = None, monitor: Monitor | None = None, *,
               tasks: TaskRunner | None = None, local_sites: LocalSites | None = None,
               releaser: Releaser | None = None, retrainer: Retrainer | None = None) -> FastAPI:
    """The API over `center`. `monitor` (default: one over the platform's monitoring settings) is
    on `app.state.monitor`; it sweeps the sites while the app is served (started and stopped by
    the app's lifespan)."""
    monitor = monitor or Monitor(center)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        monitor.start()
        try:
            yield
        finally:
            monitor.stop()

    app = FastAPI(title="ADC Platform coordinator", version="1", lifespan=lifespan,
                  description="Sites, artifacts and transfers of the ADC Platform.")
    app.state.monitor = monitor
    users, audit = install_door(app, token, center.state)  # before any route: it guards each one added after

    @app.exception_handler(AdcpError)
    async def _adcp_error(request: Request, exc: AdcpError) -> JSONResponse:
        return JSONResponse(exc.to_json(), status_code=exc.http_status)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        body = {"error": "Unauthorized" if exc.status_code == 401 else "HTTPError", "detail": exc.detail}
        if exc.status_code == 401:
            body["hint"] = "Send 'Authorization: Bearer <token>'; the token is in <home>/coordinator/api_token."
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [{"where": ".".join(str(p) for p in e["loc"]), "problem": e["msg"]} for e in exc.errors()]
        return JSONResponse({"error": "InputError", "detail": "The request is not valid.", "problems": problems},
                            status_code=422)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(f"/api/{API_VERSION}/sites")
    async def list_sites(live: bool = Query(True, description="Read each site's live status")) -> list[dict[str, Any]]:
        if live:
            return await run_in_threadpool(center.status)
        return [s.model_dump(mode="json") for s in center.sites()]

    @app.get(f"/api/{API_VERSION}/sites/{{name}}")
    async def get_site(name: str) -> dict[str, Any]:
        site = center.site(name)
        status = (await run_in_threadpool(center.status, [name]))[0]
        return {**status, "config": site.model_dump(mode="json")}

    @app.post(f"/api/{API_VERSION}/sites", status_code=201)
    def add_site(body: SiteIn) -> dict[str, Any]:
        fields = body.model_dump()
        return center.add_site(fields.pop("name"), **fields).model_dump(mode="json")

    @app.delete(f"/api/{API_VERSION}/sites/{{name}}", status_code=204)
    def remove_site(name: str) -> None:
        center.remove_site(name)

    @app.get(f"/api/{API_VERSION}/artifacts")
    def list_artifacts(site: str = Query(CENTER, description="'center' or a site name"),
                       kind: str | None = Query(None, description=f"one of {', '.join(KINDS)}"),
                       ) -> list[dict[str, Any]]:
        if kind is not None and kind not in KINDS:
            raise InputError(f'Got "{kind}" for kind.', allowed=", ".join(KINDS))
        return center.artifacts(site, kind)

    @app.post(f"/api/{API_VERSION}/transfers", status_code=202)
    def create_transfer(body: TransferIn, request: Request, response: Response,
                        wait: bool = Query(False, description="Answer when every transfer has finished"),
                        ) -> dict[str, Any]:
        """Start a push; 202 with one transfer id per site and the id of the task that runs it
        (follow it at /tasks/{id}: per-site bytes and objects), or with `wait=true` 200 with the
        results."""
        plan = center.plan_push(body.artifact, body.to, source=body.source, verify_existing=body.verify_existing,
                                max_mbps=body.max_mbps)
        if wait:
            response.status_code = 200
            return {**plan.to_dict(), "results": [o.to_dict() for o in center.run_push(plan)]}

        def work(report) -> list[dict[str, Any]]:
            for leg in plan.legs:
                report.event(f"{leg.direction} {plan.ref} to {leg.site.name} (transfer {leg.transfer_id})")
            outcomes = center.run_push(plan, on_plan=report.plan, on_progress=report.advance)
            return [o.to_dict() for o in outcomes]

        task = tasks.start("push", f"{plan.ref} -> {','.join(leg.site.name for leg in plan.legs)}", work,
                           user=principal_name(request), detail=plan.to_dict())
        return {**plan.to_dict(), "task_id": task.id}

    @app.get(f"/api/{API_VERSION}/transfers")
    def list_transfers(limit: int = Query(50, ge=1, le=1000)) -> list[dict[str, Any]]:
        return center.transfers(limit)

    @app.get(f"/api/{API_VERSION}/transfers/{{transfer_id}}")
    def get_transfer(transfer_id: str) -> dict[str, Any]:
        return center.transfer(transfer_id)

    tasks = tasks or TaskRunner()
    app.state.tasks = tasks
    add_platform_routes(app, center, tasks, local_sites)
    add_upload_routes(app, Uploads(center.central, center.home / "coordinator" / "uploads"))
    add_model_routes(app, center)
    add_line_routes(app, center)
    add_dataset_routes(app, center, tasks)
    add_monitoring_routes(app, center, monitor)
    add_quality_routes(app, center, monitor)
    add_dashboard_routes(app, center)
    add_user_routes(app, users, audit)
    add_review_routes(app, center, tasks)
    add_gate_routes(app, center, tasks)
    if trainer is not None:
        add_job_routes(app, trainer)
        add_retrain_routes(app, retrainer or Retrainer(center, trainer))
    if releaser is not None:
        add_release_routes(app, releaser)
    return app
