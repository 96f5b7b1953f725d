"""Staged releases of a model line in the coordinator DB: where each release stands, every change of
its stage or status with its time, and every approval with who gave it.

Three tables over the `State` connection and lock:

- `releases`: one row per release (`line@version`), its current `stage` and `status`, the `plan` it
  started with (the line's policy then: later edits of the platform file do not move a release that
  is under way) and its `detail` (JSON object, see below);
- `release_events`: one row per change of stage or status (at, stage, status, by, why), only added;
- `release_approvals`: one row per approval (release, the stage it let through, by, at).

A release's `stage` is one of `gate`, `shadow`, `canary`, `watch:canary`, `wave-N`, `watch:wave-N`,
`done` (`stage_names(plan)` gives a plan's list). Its `status` is running | waiting_approval (held
before the stage named, until `approve`) | done | refused (the gate or the shadow said no) |
rolled_back (a site crossed its watch limits and was rolled back) | failed (an error stopped it).
`detail` holds `why` (a sentence: what the release waits for, or why it stopped) and `sites`
(per site: `stage` (canary | wave-N | shadow), `state` (pending | shadowing | deployed | watching |
released | rolled_back), `serving` (the version the release put there), `watch` (the last watch
figures with their limits), `why`), plus what the release keeps for itself (`watch_from`, ...).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from configs.errors import ConflictError, NotFoundError
from coordinator.state.db import State, now

__all__ = ["ACTIVE", "STATUSES", "TERMINAL", "Releases", "stage_names"]

STATUSES = ("running", "waiting_approval", "done", "refused", "rolled_back", "failed")
ACTIVE = ("running", "waiting_approval")
TERMINAL = ("done", "refused", "rolled_back", "failed")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS releases (
    id TEXT PRIMARY KEY,
    line TEXT NOT NULL,
    version TEXT NOT NULL,
    stage TEXT NOT NULL,             -- gate | shadow | canary | watch:canary | wave-N | watch:wave-N | done
    status TEXT NOT NULL,            -- running | waiting_approval | done | refused | rolled_back | failed
    plan TEXT NOT NULL,              -- JSON: the line's policy when the release started
    detail TEXT NOT NULL,            -- JSON: why, per-site state, watch figures
    by TEXT NOT NULL,                -- who started it
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS releases_line ON releases (line, created_at)",
    """CREATE TABLE IF NOT EXISTS release_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    release_id TEXT NOT NULL,
    at TEXT NOT NULL,
    stage TEXT NOT NULL,
    status TEXT NOT NULL,
    by TEXT NOT NULL DEFAULT '',
    why TEXT NOT NULL DEFAULT ''
)""",
    "CREATE INDEX IF NOT EXISTS release_events_release ON release_events (release_id, id)",
    """CREATE TABLE IF NOT EXISTS release_approvals (
    release_id TEXT NOT NULL,
    stage TEXT NOT NULL,             -- the stage the approval let through (canary | wave-1)
    by TEXT NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (release_id, stage)
)""",
)


def stage_names(plan: dict[str, Any]) -> list[str]:
    """The stages of a release with `plan` (its `stages`: the canary's sites, then each wave's), in
    order: gate, shadow, canary, watch:canary, wave-1, watch:wave-1, ..., done."""
    names = ["gate", "shadow"]
    for i, _sites in enumerate(plan.get("stages") or []):
        name = "canary" if i == 0 else f"wave-{i}"
        names += [name, f"watch:{name}"]
    return [*names, "done"]


class Releases:
    """create / get / active / list / update / approve over one `State`."""

    def __init__(self, state: State) -> None:
        self.state = state
        for statement in _SCHEMA:
            state._exec(statement)

    def create(self, line: str, version: str, plan: dict[str, Any], by: str) -> dict[str, Any]:
        """A new running release of `line@version` at stage `gate`. Raises ConflictError when the
        line has an active release (running or waiting for approval)."""
        rid, stamp = uuid.uuid4().hex[:12], now()
        detail = {"why": "started", "sites": {}}
        with self.state._lock:
            db = self.state._db
            db.execute("BEGIN IMMEDIATE")
            try:
                busy = db.execute(
                    f"SELECT id, version, stage, status FROM releases WHERE line = ? AND status IN "
                    f"({', '.join('?' * len(ACTIVE))})", (line, *ACTIVE)).fetchone()
                if busy:
                    raise ConflictError(
                        f"Line {line} has a release under way: {line}@{busy['version']} ({busy['id']}, "
                        f"{busy['stage']}, {busy['status']}).",
                        hint=f"See it with `adcp release status {line}`; start another when it has ended.",
                        release=busy["id"])
                db.execute(
                    "INSERT INTO releases (id, line, version, stage, status, plan, detail, by, created_at, updated_at) "
                    "VALUES (?, ?, ?, 'gate', 'running', ?, ?, ?, ?, ?)",
                    (rid, line, version, json.dumps(plan), json.dumps(detail), by, stamp, stamp))
                db.execute("INSERT INTO release_events (release_id, at, stage, status, by, why) "
                           "VALUES (?, ?, 'gate', 'running', ?, 'started')", (rid, stamp, by))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return self.get(rid)

    def get(self, release_id: str) -> dict[str, Any]:
        rows = self.state._exec("SELECT * FROM releases WHERE id = ?", (release_id,))
        if not rows:
            raise NotFoundError(f"No release {release_id}.", hint="List releases with `adcp release status LINE`.")
        return _row(rows[0])

    def active(self, line: str) -> dict[str, Any] | None:
        """The line's release that is running or waiting for approval, if any."""
        rows = self.state._exec(
            f"SELECT * FROM releases WHERE line = ? AND status IN ({', '.join('?' * len(ACTIVE))}) "
            "ORDER BY created_at DESC LIMIT 1", (line, *ACTIVE))
        return _row(rows[0]) if rows else None

    def running(self) -> list[dict[str, Any]]:
        """Every active release (running or waiting for approval), oldest first."""
        rows = self.state._exec(
            f"SELECT * FROM releases WHERE status IN ({', '.join('?' * len(ACTIVE))}) ORDER BY created_at", ACTIVE)
        return [_row(r) for r in rows]

    def list(self, line: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Releases (of one line), newest first."""
        if line is None:
            rows = self.state._exec("SELECT * FROM releases ORDER BY created_at DESC LIMIT ?", (limit,))
        else:
            rows = self.state._exec("SELECT * FROM releases WHERE line = ? ORDER BY created_at DESC LIMIT ?",
                                    (line, limit))
        return [_row(r) for r in rows]

    def update(self, release_id: str, *, stage: str | None = None, status: str | None = None,
               detail: dict[str, Any] | None = None, by: str = "") -> dict[str, Any]:
        """Set the stage and/or status (a change of either is recorded in `release_events` with the
        time, `by` and `detail["why"]`), and merge `detail`'s keys into the stored detail (a key
        given as None is removed). Returns the updated release."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"release status {status!r}: one of {', '.join(STATUSES)}")
        with self.state._lock:
            db = self.state._db
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT * FROM releases WHERE id = ?", (release_id,)).fetchone()
                if row is None:
                    raise NotFoundError(f"No release {release_id}.")
                merged = json.loads(row["detail"])
                for key, value in (detail or {}).items():
                    if value is None:
                        merged.pop(key, None)
                    else:
                        merged[key] = value
                new_stage, new_status, stamp = stage or row["stage"], status or row["status"], now()
                db.execute("UPDATE releases SET stage = ?, status = ?, detail = ?, updated_at = ? WHERE id = ?",
                           (new_stage, new_status, json.dumps(merged), stamp, release_id))
                if (new_stage, new_status) != (row["stage"], row["status"]):
                    db.execute("INSERT INTO release_events (release_id, at, stage, status, by, why) "
                               "VALUES (?, ?, ?, ?, ?, ?)",
                               (release_id, stamp, new_stage, new_status, by, str(merged.get("why") or "")))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return self.get(release_id)

    def approve(self, release_id: str, by: str) -> dict[str, Any]:
        """Record `by`'s approval of the stage the release waits before, and set it running again.
        Raises ConflictError when the release is not waiting for approval."""
        release = self.get(release_id)
        if release["status"] != "waiting_approval":
            raise ConflictError(
                f"Release {release['line']}@{release['version']} is not waiting for approval "
                f"({release['stage']}, {release['status']}).", release=release_id)
        self.state._exec("INSERT OR IGNORE INTO release_approvals (release_id, stage, by, at) VALUES (?, ?, ?, ?)",
                         (release_id, release["stage"], by, now()))
        return self.update(release_id, status="running", by=by,
                           detail={"why": f"{release['stage']} approved by {by}"})

    def approved(self, release_id: str, stage: str) -> dict[str, Any] | None:
        """The approval of `stage` ({"stage", "by", "at"}), if given."""
        rows = self.state._exec("SELECT stage, by, at FROM release_approvals WHERE release_id = ? AND stage = ?",
                                (release_id, stage))
        return dict(rows[0]) if rows else None

    def approvals(self, release_id: str) -> list[dict[str, Any]]:
        rows = self.state._exec("SELECT stage, by, at FROM release_approvals WHERE release_id = ? ORDER BY at",
                                (release_id,))
        return [dict(r) for r in rows]

    def events(self, release_id: str) -> list[dict[str, Any]]:
        """Every change of stage or status, oldest first: {at, stage, status, by, why}."""
        rows = self.state._exec("SELECT at, stage, status, by, why FROM release_events WHERE release_id = ? "
                                "ORDER BY id", (release_id,))
        return [dict(r) for r in rows]


def _row(row: Any) -> dict[str, Any]:
    d = dict(row)
    d["plan"] = json.loads(d["plan"])
    d["detail"] = json.loads(d["detail"])
    return d
