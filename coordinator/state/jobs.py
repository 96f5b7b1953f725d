"""The one place job records are stored and read: typed `Job`s over the jobs table of the state DB
(its JSON columns hold the spec, plan, attempts and outcome as the models dump them)."""

from __future__ import annotations

import json
from typing import Any

from configs.errors import NotFoundError
from configs.runs import TERMINAL, Job
from coordinator.state.db import State, now

__all__ = ["JobRecords"]

_TERMINAL = tuple(sorted(s.value for s in TERMINAL))


class JobRecords:
    """save / get / list / active over one State."""

    def __init__(self, state: State) -> None:
        self.state = state

    def save(self, job: Job) -> Job:
        """Insert or update `job` (its spec and creation time are written once); sets its
        `updated_at` (and `created_at` on the first save) and returns it."""
        stamp = now()
        job.created_at = job.created_at or stamp
        job.updated_at = stamp
        d = job.model_dump(mode="json")
        self.state._exec(
            "INSERT INTO jobs (id, kind, origin, status, spec, plan, attempts, outcome, error, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET status = excluded.status, "
            "plan = excluded.plan, attempts = excluded.attempts, outcome = excluded.outcome, error = excluded.error, "
            "updated_at = excluded.updated_at",
            (d["id"], d["kind"], d["origin"], d["status"], json.dumps(d["spec"]), json.dumps(d["plan"]),
             json.dumps(d["attempts"]), json.dumps(d["outcome"]), d["error"], d["created_at"], d["updated_at"]),
        )
        return job

    def get(self, job_id: str) -> Job:
        rows = self.state._exec("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise NotFoundError(f"No job {job_id}.", hint="List jobs with `adcp jobs`.")
        return _job(rows[0])

    def list(self, limit: int = 50) -> list[Job]:
        """The newest `limit` jobs, newest first."""
        return [_job(r) for r in self.state._exec("SELECT * FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,))]

    def active(self) -> list[Job]:
        """Jobs not yet succeeded, failed or stopped, oldest first."""
        marks = ", ".join("?" * len(_TERMINAL))
        rows = self.state._exec(f"SELECT * FROM jobs WHERE status NOT IN ({marks}) ORDER BY created_at", _TERMINAL)
        return [_job(r) for r in rows]


def _job(row: Any) -> Job:
    d = dict(row)
    for key in ("spec", "plan", "attempts", "outcome"):
        d[key] = json.loads(d[key]) if d[key] else None
    d["attempts"] = d["attempts"] or []
    d["outcome"] = d["outcome"] or {}
    return Job.model_validate(d)
