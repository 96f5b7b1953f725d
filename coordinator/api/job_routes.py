"""The coordinator's HTTP routes for training and tuning jobs, over `coordinator.jobs.runner.Trainer`.

`create_app` adds them with `add_job_routes(app, trainer)`; the request body is
`configs.runs.RunRequest` and the answers are `Job` / `PlanRecord` records, so /openapi.json shows
the very models the runner stores and the CLI reads.
"""

from __future__ import annotations

from fastapi import FastAPI, Query
from fastapi.responses import PlainTextResponse

from configs.runs import Job, PlanRecord, RunRequest
from coordinator.jobs.runner import Trainer

__all__ = ["add_job_routes"]

_BASE = "/api/v1/jobs"


def add_job_routes(app: FastAPI, trainer: Trainer) -> None:
    """POST /jobs/plan, POST /jobs, GET /jobs, GET /jobs/{id}, GET /jobs/{id}/logs and
    POST /jobs/{id}/stop (the app-wide door checks each caller's role)."""

    @app.post(f"{_BASE}/plan", response_model=PlanRecord, tags=["jobs"])
    def plan_job(body: RunRequest) -> PlanRecord:
        """Where the job would run and why, and what must be shipped there (nothing starts)."""
        return trainer.plan(body)

    @app.post(_BASE, status_code=202, response_model=Job, tags=["jobs"])
    def start_job(body: RunRequest) -> Job:
        """Plan and start the run (202: it goes on in the coordinator; follow it with GET /jobs/{id})."""
        return trainer.start(body)

    @app.get(_BASE, response_model=list[Job], tags=["jobs"])
    def list_jobs(limit: int = Query(50, ge=1, le=1000)) -> list[Job]:
        """Jobs, newest first."""
        return trainer.jobs(limit)

    @app.get(f"{_BASE}/{{job_id}}", response_model=Job, tags=["jobs"])
    def get_job(job_id: str) -> Job:
        return trainer.job(job_id)

    @app.get(f"{_BASE}/{{job_id}}/logs", response_class=PlainTextResponse, tags=["jobs"])
    def job_logs(job_id: str, attempt: int = Query(-1, description="1-based attempt; -1 the latest")) -> str:
        """The Ray job logs of one attempt, read through the site gateway."""
        return trainer.logs(job_id, attempt - 1 if attempt > 0 else -1)

    @app.post(f"{_BASE}/{{job_id}}/stop", response_model=Job, tags=["jobs"])
    def stop_job(job_id: str) -> Job:
        return trainer.stop(job_id)
