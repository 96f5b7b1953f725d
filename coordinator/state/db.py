"""The coordinator's state in SQLite: sites it knows and transfers it ran.

One file, opened by the coordinator process and by the CLI alike (WAL mode and a busy timeout let
both write). Artifacts are not copied here: the stores are the truth, and a store lists only
complete artifacts; transfer records say which moved where.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from raycluster import read_proc

__all__ = ["State", "now"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sites (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,          -- SiteConfig JSON
    origin TEXT NOT NULL,        -- 'config' (platform.yaml) or 'added' (adcp site add)
    added_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS transfers (
    id TEXT PRIMARY KEY,
    ref TEXT NOT NULL,
    source TEXT NOT NULL,
    destination TEXT NOT NULL,
    direction TEXT NOT NULL,     -- push | pull | relay | copy
    status TEXT NOT NULL,        -- running | succeeded | failed
    bytes_sent INTEGER DEFAULT 0,
    bytes_skipped INTEGER DEFAULT 0,
    objects_verified INTEGER DEFAULT 0,
    seconds REAL,
    error TEXT,
    detail TEXT,                 -- JSON: the engine's full result, job ids
    owner_pid INTEGER,           -- the process running it (the CLI or the coordinator)
    started_at TEXT NOT NULL,
    finished_at TEXT
);
CREATE INDEX IF NOT EXISTS transfers_started ON transfers (started_at);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,          -- train | tune
    origin TEXT NOT NULL,        -- the site the model is for
    status TEXT NOT NULL,        -- planned | shipping | running | finishing | succeeded | failed | stopped
    spec TEXT NOT NULL,          -- JSON: what was asked (dataset, resources, options)
    plan TEXT,                   -- JSON: the plan (chosen site, why, what to ship)
    attempts TEXT NOT NULL,      -- JSON list: one per site tried (site, ray job id, status, error, resumed_from)
    outcome TEXT,                -- JSON: model, metrics, ran_at
    error TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS deployments (
    id TEXT PRIMARY KEY,
    site TEXT NOT NULL,
    app TEXT NOT NULL,
    model TEXT NOT NULL,         -- kind/name@version of the model artifact
    previous TEXT,               -- what the app served before
    status TEXT NOT NULL,        -- deploying | serving | failed
    seconds REAL,                -- from the command to the new version answering
    error TEXT,
    started_at TEXT NOT NULL,
    finished_at TEXT
);
CREATE INDEX IF NOT EXISTS deployments_site ON deployments (site, started_at);
"""


def _alive(pid: int | None) -> bool:
    """Whether process `pid` still runs: a zombie (killed, not yet reaped by its parent) does not."""
    proc = read_proc(pid) if pid else None
    return proc is not None and proc.state != "Z"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class State:
    """Thread-safe access to the coordinator DB (one connection, one lock)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _exec(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # sites
    def put_site(self, name: str, spec: dict[str, Any], origin: str) -> None:
        self._exec(
            "INSERT INTO sites (name, spec, origin, added_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET spec = excluded.spec, origin = excluded.origin",
            (name, json.dumps(spec), origin, now()),
        )

    def sites(self) -> list[dict[str, Any]]:
        rows = self._exec("SELECT name, spec, origin, added_at FROM sites ORDER BY name")
        return [{"name": r["name"], "spec": json.loads(r["spec"]), "origin": r["origin"],
                 "added_at": r["added_at"]} for r in rows]

    def delete_site(self, name: str) -> bool:
        with self._lock:
            return self._db.execute("DELETE FROM sites WHERE name = ?", (name,)).rowcount > 0

    # transfers
    def start_transfer(self, ref: str, source: str, destination: str, direction: str) -> str:
        tid = uuid.uuid4().hex[:12]
        self._exec(
            "INSERT INTO transfers (id, ref, source, destination, direction, status, owner_pid, started_at) "
            "VALUES (?, ?, ?, ?, ?, 'running', ?, ?)",
            (tid, ref, source, destination, direction, os.getpid(), now()),
        )
        return tid

    def finish_transfer(self, tid: str, *, result: dict[str, Any] | None = None, error: str | None = None) -> None:
        result = result or {}
        self._exec(
            "UPDATE transfers SET status = ?, bytes_sent = ?, bytes_skipped = ?, objects_verified = ?, "
            "seconds = ?, error = ?, detail = ?, finished_at = ? WHERE id = ?",
            ("failed" if error else "succeeded", result.get("bytes_sent", 0), result.get("bytes_skipped", 0),
             result.get("objects_verified", 0), result.get("seconds"), error, json.dumps(result), now(), tid),
        )

    def fail_orphaned_transfers(self) -> int:
        """Mark transfers left 'running' by a process that has died as failed."""
        orphans = [r["id"] for r in self._exec("SELECT id, owner_pid FROM transfers WHERE status = 'running'")
                   if not _alive(r["owner_pid"])]
        for tid in orphans:
            self.finish_transfer(tid, error="interrupted: the process running it ended; push again to resume")
        return len(orphans)

    def transfers(self, limit: int = 50, transfer_id: str | None = None) -> list[dict[str, Any]]:
        if transfer_id:
            rows = self._exec("SELECT * FROM transfers WHERE id = ?", (transfer_id,))
        else:
            rows = self._exec("SELECT * FROM transfers ORDER BY started_at DESC LIMIT ?", (limit,))
        out = []
        for r in rows:
            d = dict(r)
            d["detail"] = json.loads(d["detail"]) if d["detail"] else {}
            out.append(d)
        return out

    def status_counts(self) -> dict[str, dict[str, tuple[int, int]]]:
        """`{"transfers": {status: (count, bytes_sent)}, "jobs": {status: (count, 0)}}` for the
        coordinator's /metrics (one grouped query each)."""
        transfers = {r[0]: (r[1], r[2]) for r in self._exec(
            "SELECT status, COUNT(*), COALESCE(SUM(bytes_sent), 0) FROM transfers GROUP BY status")}
        jobs = {r[0]: (r[1], 0) for r in self._exec("SELECT status, COUNT(*) FROM jobs GROUP BY status")}
        return {"transfers": transfers, "jobs": jobs}

    # jobs: coordinator.state.jobs.JobRecords

    # deployments (model rollouts to sites' Serve apps)
    def start_deployment(self, site: str, app: str, model: str, previous: str | None) -> str:
        did = uuid.uuid4().hex[:12]
        self._exec("INSERT INTO deployments (id, site, app, model, previous, status, started_at) "
                   "VALUES (?, ?, ?, ?, ?, 'deploying', ?)", (did, site, app, model, previous, now()))
        return did

    def finish_deployment(self, did: str, *, seconds: float | None = None, error: str | None = None) -> None:
        self._exec("UPDATE deployments SET status = ?, seconds = ?, error = ?, finished_at = ? WHERE id = ?",
                   ("failed" if error else "serving", seconds, error, now(), did))

    def deployments(self, site: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Newest first."""
        if site:
            rows = self._exec("SELECT * FROM deployments WHERE site = ? ORDER BY started_at DESC LIMIT ?",
                              (site, limit))
        else:
            rows = self._exec("SELECT * FROM deployments ORDER BY started_at DESC LIMIT ?", (limit,))
        return [dict(r) for r in rows]
