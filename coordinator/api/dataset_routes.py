"""The coordinator's HTTP route for importing a factory's images (`coordinator.jobs.imports`).

`coordinator.api.create_app` adds it with `add_dataset_routes(app, center, tasks)`; the door
(`coordinator.api.auth`) checks each caller's role.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from configs.tasks import TaskRecord
from coordinator.api.platform_routes import principal_name
from coordinator.center.core import Center
from coordinator.jobs import imports
from coordinator.jobs.tasks import Reporter, TaskRunner

__all__ = ["ImportIn", "add_dataset_routes"]

_PREFIX = "/api/v1"


class ImportIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str = Field(..., description="fsspec URL of the images: a folder on the COORDINATOR's host "
                        "(it reads the source itself) or s3://bucket/prefix", examples=["s3://factory/aoi/2026-01"])
    name: str = Field(..., description="Dataset (and annotations) name; versions are numbered", examples=["fab-a-aoi"])
    labels: str | None = Field(None, description="CSV or Parquet manifest (path,label,...): a URL, a path on the "
                               "coordinator's host, or a path relative to the source")
    storage_options: dict[str, Any] | None = Field(None, description="fsspec options for the source "
                                                   "(e.g. endpoint_url, key, secret); never stored")
    wait: bool = Field(False, description="true: answer with the report; false: 202 with the task")


def add_dataset_routes(app: FastAPI, center: Center, tasks: TaskRunner) -> None:
    """Add POST /api/v1/datasets/import."""

    @app.post(f"{_PREFIX}/datasets/import", tags=["datasets"], response_model=dict[str, Any] | TaskRecord)
    def import_dataset(body: ImportIn, request: Request, response: Response) -> Any:
        """Import a factory's images (folder per class, a CSV/Parquet manifest, or unlabelled) as
        dataset/NAME@next and annotations/NAME@next. Bad files never abort it: they are listed in
        `rejected` ({path, reason}). A re-import publishes only what changed (`changed: false`
        and the existing version when nothing did). 400/404 for a bad name, a missing source or
        no image files. `wait=false`: 202 with the task (its result: the report)."""
        imports.check(body.source, body.name, body.labels, body.storage_options)
        user = principal_name(request)
        if body.wait:
            return imports.run_import(center, body.source, body.name, labels=body.labels,
                                      storage_options=body.storage_options, user=user)

        def work(report: Reporter) -> dict[str, Any]:
            return imports.run_import(center, body.source, body.name, labels=body.labels,
                                      storage_options=body.storage_options, user=user, report=report)

        response.status_code = 202
        return tasks.start("import", f"{body.source} -> dataset/{body.name}", work, user=user,
                           detail={"source": body.source, "name": body.name, "labels": body.labels})
