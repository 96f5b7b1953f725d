"""The coordinator's HTTP routes for the gate (`coordinator.jobs.gate`): gate a line's version
against its champion, and make a line's golden set.

`coordinator.api.create_app` adds them with `add_gate_routes(app, center, tasks)`; the door
(`coordinator.api.auth`) checks each caller's role.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from configs.tasks import TaskRecord
from coordinator.api.platform_routes import principal_name
from coordinator.center.core import Center
from coordinator.jobs import gate
from coordinator.jobs.tasks import Reporter, TaskRunner

__all__ = ["GateIn", "GoldenIn", "add_gate_routes"]

_PREFIX = "/api/v1"


class GateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    site: str | None = Field(None, description="Site that runs the gate (default: the line's first site); "
                             "the champion is the line's champion there")
    timeout_s: float = Field(900, gt=0, le=6 * 3600, description="Seconds the gate job may take")


class GoldenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dataset: str = Field(..., description="Dataset NAME@VERSION whose test-split images become the golden set",
                         examples=["aoi@3"])
    name: str | None = Field(None, description="Artifact name of the golden set (default: golden-<line>)")


_WAIT = "true: answer with the report when the gate has run; false: 202 with the task that runs it"


def add_gate_routes(app: FastAPI, center: Center, tasks: TaskRunner) -> None:
    """Add POST /models/{line}/{version}/gate and POST /models/{line}/golden under /api/v1."""

    @app.post(f"{_PREFIX}/models/{{line}}/{{version}}/gate", tags=["models"],
              response_model=dict[str, Any] | TaskRecord)
    def gate_model(line: str, version: str, request: Request, response: Response, body: GateIn | None = None,
                   wait: bool = Query(True, description=_WAIT)) -> Any:
        """Score `model/{line}@{version}` against the line's champion at the site on the golden set
        and the held-out recent verdicts; the report (stored with the version) says `passed`, which
        figures `failed` and why, every figure of both models, the recalibrated thresholds and the
        data versions. A failed gate is a 200 answer with `passed` false. 404 for an unknown model,
        400 without a golden set, 503 when the gate job could not run. `wait=false`: 202 with the
        task (its result: the report)."""
        body = body or GateIn()
        if not wait:
            if body.site:
                center.site(body.site)  # 404 now rather than in the task

            def work(report: Reporter) -> dict[str, Any]:
                return gate.run_gate(center, line, version, site=body.site, timeout_s=body.timeout_s,
                                     on_event=report.event)

            response.status_code = 202
            return tasks.start("gate", f"{line}@{version}", work, user=principal_name(request),
                               detail={"line": line, "version": version, "site": body.site})
        return gate.run_gate(center, line, version, site=body.site, timeout_s=body.timeout_s)

    @app.post(f"{_PREFIX}/models/{{line}}/golden", tags=["models"])
    def make_golden(line: str, body: GoldenIn, request: Request) -> dict[str, Any]:
        """Publish the labelled test-split images of `dataset` (never trained on) as the next version
        of `dataset/golden-{line}` (or `name`); the same images and labels again keep the latest
        version (`changed` false, `message` says so). 404 for an unknown dataset."""
        return gate.make_golden(center, line, body.dataset, name=body.name, user=principal_name(request))
