"""The coordinator's HTTP routes for models and rollouts, over `coordinator.jobs.rollout`.

`coordinator.api.create_app` adds them with `add_model_routes(app, center)`; the app-wide door
(`coordinator.api.auth`) checks each caller's role, and AdcpErrors raised here become 4xx/5xx JSON
through the app's handler. Rollouts answer when every site serves the new model (seconds; each site is timed).
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from configs.models import ServeConfig
from configs.tasks import TaskRecord
from coordinator.api.platform_routes import principal_name
from coordinator.center.core import Center
from coordinator.jobs import rollout
from coordinator.jobs.tasks import Reporter, TaskRunner

__all__ = ["DeployIn", "RollbackIn", "RolloutRow", "add_model_routes"]

_PREFIX = "/api/v1"


class DeployIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    to: list[str] = Field(..., min_length=1, description="Sites whose Serve app gets the model", examples=[["fab-a"]])
    replicas: int | None = Field(None, ge=1, le=1000, description="Serve replicas per site (default: serve defaults)")
    timeout_s: float = Field(240, gt=0, le=3600, description="Seconds to wait per site for the new version to answer")
    why: str | None = Field(None, max_length=500, description="Why (recorded with the alias moves; default: deploy)")
    shadow: str | None = Field(None, description="A challenger NAME@VERSION run beside the model on a share of "
                               "the images (callers get the model's answers)", examples=["adc@3"])
    shadow_rate: float = Field(0.1, ge=0, le=1, description="Share of images the shadow also classifies")
    thresholds: dict[str, float] | None = Field(None, description="Per-class thresholds replacing the model's own")
    shadow_thresholds: dict[str, float] | None = Field(None, description="Per-class thresholds of the shadow")

    def options(self) -> dict[str, Any]:
        """The shadow/threshold keywords of rollout.deploy that this body sets (none when it sets none)."""
        out: dict[str, Any] = {}
        if self.shadow:
            out["shadow"] = (rollout.parse_model_ref(self.shadow), self.shadow_rate)
        if self.thresholds:
            out["thresholds"] = self.thresholds
        if self.shadow_thresholds:
            out["shadow_thresholds"] = self.shadow_thresholds
        return out


class RollbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    replicas: int | None = Field(None, ge=1, le=1000, description="Serve replicas (default: serve defaults)")
    timeout_s: float = Field(240, gt=0, le=3600)
    why: str | None = Field(None, max_length=500, description="The reason, recorded as the alias moves' why")


class RolloutRow(BaseModel):
    """One site's part of a rollout."""

    model_config = ConfigDict(extra="forbid")
    site: str
    model: str = Field(..., description="model/NAME@VERSION rolled out")
    previous: str | None = Field(None, description="What the site's Serve app served before")
    seconds: float | None = Field(None, description="From the request to the new version answering at the site")
    status: Literal["serving", "failed"]
    deployment_id: str | None = Field(None, description="Its row in GET /deployments")
    error: str | None = None
    shadow: str | None = Field(None, description="model/NAME@VERSION run beside it as shadow")
    shadow_error: str | None = Field(None, description="Why the site could not load the shadow (the model serves)")


_WAIT = "true: answer when every site serves the model; false: 202 with the task that runs the rollout"
_BUSY = {409: {"description": "A rollout to one of the sites is still running (ConflictError: `site`, `running`); "
                              "nothing was shipped. Retry once it ends."}}


def add_model_routes(app: FastAPI, center: Center, serve_cfg: ServeConfig | None = None) -> None:
    """Add GET /models, POST /models/{name}/{version}/deploy, POST /sites/{site}/rollback and
    GET /deployments under /api/v1 (the door checks roles). `serve_cfg` defaults to the serve section
    of `configs/defaults.yaml`, read once here."""
    if serve_cfg is None:
        from configs.loader import load_defaults

        serve_cfg = load_defaults().serve

    def cfg(replicas: int | None) -> ServeConfig:
        return serve_cfg if replicas is None else serve_cfg.model_copy(update={"num_replicas": replicas})

    @app.get(f"{_PREFIX}/models", tags=["models"])
    def list_models() -> list[dict[str, Any]]:
        """Model artifacts of the central store; `serving_at` lists the sites serving each now,
        `aliases` each site's aliases naming that version (`{"fab-a": ["champion"]}`)."""
        return rollout.list_models(center)

    @app.post(f"{_PREFIX}/models/{{name}}/{{version}}/deploy", tags=["models"],
              response_model=list[RolloutRow] | TaskRecord, responses=_BUSY)
    def deploy_model(name: str, version: str, body: DeployIn, request: Request, response: Response,
                     wait: bool = Query(True, description=_WAIT)) -> Any:
        """Roll `model/{name}@{version}` out to `to`, all sites at once; one row per site with the
        seconds from the request to the new version answering. 503 with every row in `results`
        when any site failed; 409 when a rollout to one of them is still running. With
        `wait=false`: 202 with the task that runs it (its result: the rows)."""
        ref = rollout.parse_model_ref(f"{name}@{version}")
        if wait:
            return rollout.deploy(center, ref, body.to, cfg(body.replicas), timeout_s=body.timeout_s,
                                  by=principal_name(request), why=body.why, **body.options())
        ref, names = rollout.check(center, ref, body.to)
        by = principal_name(request)

        def work(report: Reporter) -> list[dict[str, Any]]:
            return rollout.deploy(center, ref, names, cfg(body.replicas), timeout_s=body.timeout_s,
                                  on_event=lambda site, msg: report.event(f"{site}: {msg}"), by=by, why=body.why,
                                  **body.options())

        response.status_code = 202
        return _tasks(request).start("deploy", f"{ref} -> {','.join(names)}", work, user=principal_name(request),
                                     detail={"model": str(ref), "to": names})

    @app.post(f"{_PREFIX}/sites/{{site}}/rollback", tags=["models"], response_model=RolloutRow | TaskRecord,
              responses=_BUSY)
    def rollback(site: str, request: Request, response: Response, body: RollbackIn | None = None,
                 wait: bool = Query(True, description=_WAIT)) -> Any:
        """Redeploy the model the site served before its current one (404 when there is none, 409
        while a rollout to the site runs). With `wait=false`: 202 with the task that runs it (its
        result: the site's row, in a list)."""
        body = body or RollbackIn()
        if wait:
            return rollout.rollback(center, site, cfg(body.replicas), timeout_s=body.timeout_s,
                                    by=principal_name(request), why=body.why)
        current = rollout.rollback_target(center, site)
        rollout.check(center, current["previous"], [site])
        by = principal_name(request)

        def work(report: Reporter) -> list[dict[str, Any]]:
            return [rollout.rollback(center, site, cfg(body.replicas), timeout_s=body.timeout_s,
                                     on_event=lambda s, msg: report.event(f"{s}: {msg}"), by=by, why=body.why)]

        response.status_code = 202
        return _tasks(request).start("rollback", f"{site} -> {current['previous']}", work,
                                     user=principal_name(request), detail={"site": site, "to": current["previous"]})

    @app.get(f"{_PREFIX}/deployments", tags=["models"])
    def deployments(site: str | None = Query(None, description="Only this site"),
                    limit: int = Query(50, ge=1, le=1000)) -> list[dict[str, Any]]:
        """Rollouts, newest first: site, model, previous, status, seconds, error."""
        if site is not None:
            center.site(site)
        return center.state.deployments(site=site, limit=limit)


def _tasks(request: Request) -> TaskRunner:
    """The app's task runner (`create_app` puts it on `app.state.tasks`)."""
    return request.app.state.tasks
