"""The record of a long piece of work the coordinator runs for a client (a push, a rollout, a
verify): what the API returns at `/api/v1/tasks/{id}` and the CLI reads to show progress."""

from __future__ import annotations

from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["TaskRecord", "TaskState"]


class TaskState(str, Enum):
    running = "running"
    succeeded = "succeeded"
    failed = "failed"


class TaskRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    kind: str = Field(..., description="push | deploy | rollback | verify")
    target: str = Field(..., description="What it works on, e.g. dataset/aoi@1 -> fab-a,fab-b")
    state: TaskState
    user: str | None = Field(None, description="Who started it")
    detail: dict[str, Any] = Field(default_factory=dict, description="What was asked (ids of transfers, sites)")
    events: list[str] = Field(default_factory=list, description="What happened, in order, with the time")
    progress: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="Per destination: bytes_done, bytes_total, objects_done, objects_total")
    result: Any = Field(None, description="The work's result (e.g. one row per site)")
    error: str | None = None
    started_at: float
    finished_at: float | None = None
