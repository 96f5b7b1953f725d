"""Retrains of model lines in the coordinator DB: one row per retrain (who asked, why, the run it
started, what came of it), and the count of new verdicts a line's trigger reads.

A retrain's `status` is running | succeeded | failed. At most one retrain of a line runs at a
time: `create` checks and inserts in one transaction, so two callers racing for the same line get
one row and one `ConflictError` naming it. The verdict count reads the review-sync tables
(`coordinator.state.review`): the verdicts of a dataset line pulled after a time and not undone.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from configs.errors import ConflictError, InputError, NotFoundError
from coordinator.state.db import State, now
from coordinator.state.review import ReviewRecords

__all__ = ["STATUSES", "Retrains"]

STATUSES = ("running", "succeeded", "failed")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS retrains (
    id TEXT PRIMARY KEY,
    line TEXT NOT NULL,
    status TEXT NOT NULL,            -- running | succeeded | failed
    by TEXT NOT NULL,                -- who asked (a user, or the coordinator's loop)
    why TEXT NOT NULL,               -- retrain: <n> verdicts | schedule | by hand
    request TEXT NOT NULL,           -- JSON: the RunRequest it started
    job_id TEXT,                     -- the training job (coordinator.jobs.runner), once started
    version TEXT,                    -- the model version it made, on success
    detail TEXT NOT NULL DEFAULT '{}',  -- JSON: where the challenger alias went, what the hook said
    error TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS retrains_line ON retrains (line, created_at)",
)


def _row(r: Any) -> dict[str, Any]:
    d = dict(r)
    d["request"] = json.loads(d["request"])
    d["detail"] = json.loads(d["detail"] or "{}")
    return d


class Retrains:
    """The retrains table over one `State` (its connection and lock)."""

    def __init__(self, state: State) -> None:
        self.state = state
        ReviewRecords(state)  # the verdict tables `verdicts_since` reads exist from the start
        for statement in _SCHEMA:
            state._exec(statement)

    def create(self, line: str, *, by: str, why: str, request: dict[str, Any]) -> dict[str, Any]:
        """A running retrain of `line`; ConflictError naming the one already running."""
        rid = uuid.uuid4().hex[:10]
        stamp = now()
        with self.state._lock:
            db = self.state._db
            db.execute("BEGIN IMMEDIATE")
            try:
                busy = db.execute("SELECT * FROM retrains WHERE line = ? AND status = 'running' "
                                  "ORDER BY created_at LIMIT 1", (line,)).fetchone()
                if busy is None:
                    db.execute("INSERT INTO retrains (id, line, status, by, why, request, created_at, updated_at) "
                               "VALUES (?, ?, 'running', ?, ?, ?, ?, ?)",
                               (rid, line, by, why, json.dumps(request, sort_keys=True), stamp, stamp))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        if busy is not None:
            b = _row(busy)
            job = f", job {b['job_id']}" if b["job_id"] else ""
            raise ConflictError(f"Line {line} is already retraining: retrain {b['id']}{job}, started {b['created_at']} "
                                f"by {b['by']} ({b['why']}).", hint="Wait for it to end (`adcp model retrain` "
                                "shows it), or stop its job.", retrain=b["id"], job=b["job_id"])
        return self.get(rid)

    def get(self, retrain_id: str) -> dict[str, Any]:
        rows = self.state._exec("SELECT * FROM retrains WHERE id = ?", (retrain_id,))
        if not rows:
            raise NotFoundError(f"No retrain {retrain_id}.")
        return _row(rows[0])

    def running(self, line: str | None = None) -> list[dict[str, Any]]:
        """Running retrains (of one line), oldest first."""
        sql, args = "SELECT * FROM retrains WHERE status = 'running'", ()
        if line is not None:
            sql, args = sql + " AND line = ?", (line,)
        return [_row(r) for r in self.state._exec(sql + " ORDER BY created_at", args)]

    def list(self, line: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Retrains (of one line), newest first."""
        if line is None:
            rows = self.state._exec("SELECT * FROM retrains ORDER BY created_at DESC LIMIT ?", (limit,))
        else:
            rows = self.state._exec("SELECT * FROM retrains WHERE line = ? ORDER BY created_at DESC LIMIT ?",
                                    (line, limit))
        return [_row(r) for r in rows]

    def by_version(self, line: str, version: str) -> dict[str, Any] | None:
        """The retrain that made `line@version`, if one did."""
        rows = self.state._exec("SELECT * FROM retrains WHERE line = ? AND version = ? LIMIT 1", (line, version))
        return _row(rows[0]) if rows else None

    def set_job(self, retrain_id: str, job_id: str) -> dict[str, Any]:
        self.state._exec("UPDATE retrains SET job_id = ?, updated_at = ? WHERE id = ?", (job_id, now(), retrain_id))
        return self.get(retrain_id)

    def finish(self, retrain_id: str, status: str, *, version: str | None = None, error: str | None = None,
               detail: dict[str, Any] | None = None) -> dict[str, Any]:
        """End a retrain (`succeeded` or `failed`), merging `detail` into its detail."""
        if status not in STATUSES[1:]:
            raise InputError(f'Got "{status}" to end a retrain with.', allowed=", ".join(STATUSES[1:]))
        merged = {**self.get(retrain_id)["detail"], **(detail or {})}
        self.state._exec("UPDATE retrains SET status = ?, version = COALESCE(?, version), error = ?, detail = ?, "
                         "updated_at = ? WHERE id = ?",
                         (status, version, error, json.dumps(merged, sort_keys=True, default=str), now(), retrain_id))
        return self.get(retrain_id)

    def verdicts_since(self, dataset_line: str, since: str | None) -> int:
        """Verdicts of `dataset_line` pulled after `since` (an ISO time in `db.now()`'s form; None:
        all of them) that no undo names."""
        sql = ("SELECT COUNT(*) FROM review_events e WHERE e.kind = 'verdict' AND e.dataset = ? "
               "AND NOT EXISTS (SELECT 1 FROM review_events u WHERE u.kind = 'undo' "
               "AND u.verdict_id IN (e.verdict_id, e.event_id))")
        args: tuple[Any, ...] = (dataset_line,)
        if since is not None:
            sql, args = sql + " AND e.pulled_at > ?", (*args, since)
        return int(self.state._exec(sql, args)[0][0])
