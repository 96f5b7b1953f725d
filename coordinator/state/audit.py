"""The coordinator's audit log: one row per change asked of its API (who, what, when, from where,
and how it ended), refused ones included.

A table in the coordinator's state DB, over the `State` connection and lock. Rows are only ever
added. `detail` is a small JSON object (path parameters, query values, what a handler chose to
add); callers never put tokens, secrets or uploaded bodies in it, and it is cut at
`MAX_DETAIL_CHARS` so a row stays small.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from configs.errors import InputError
from coordinator.state.db import State, now

__all__ = ["MAX_DETAIL_CHARS", "Audit", "AuditEntry"]

MAX_DETAIL_CHARS = 2000

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,                -- ISO 8601 UTC, milliseconds: sorts as it reads
    user TEXT NOT NULL,              -- the principal's name; '' when the request carried no valid token
    role TEXT NOT NULL,              -- its role then ('' likewise)
    action TEXT NOT NULL,            -- METHOD and route template: 'POST /api/v1/transfers'
    route TEXT,                      -- the route template, NULL when no route matched
    path TEXT NOT NULL,              -- the path asked for: '/api/v1/users/ann/disable'
    status INTEGER NOT NULL,         -- the HTTP status answered
    source TEXT NOT NULL,            -- the client's address
    detail TEXT NOT NULL             -- small JSON object, never secrets
)""",
    "CREATE INDEX IF NOT EXISTS audit_at ON audit (at)",
    "CREATE INDEX IF NOT EXISTS audit_user_at ON audit (user, at)",
)


@dataclass(frozen=True)
class AuditEntry:
    """One recorded change."""

    id: int
    at: str
    user: str
    role: str
    action: str
    route: str | None
    path: str
    status: int
    source: str
    detail: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "at": self.at, "user": self.user, "role": self.role, "action": self.action,
                "route": self.route, "path": self.path, "status": self.status, "source": self.source,
                "detail": self.detail}


def _detail_json(detail: dict[str, Any] | None) -> str:
    text = json.dumps(detail or {}, separators=(",", ":"), default=str)
    if len(text) > MAX_DETAIL_CHARS:
        text = json.dumps({"truncated": True, "keys": sorted(detail or {})[:20]}, separators=(",", ":"))
    return text


class Audit:
    """The `audit` table of the coordinator DB behind `state` (its one connection and lock)."""

    def __init__(self, state: State) -> None:
        self._state = state
        for statement in _SCHEMA:
            state._exec(statement)

    def record(self, *, user: str, role: str, method: str, route: str | None, path: str, status: int,
               source: str, detail: dict[str, Any] | None = None) -> None:
        self._state._exec(
            "INSERT INTO audit (at, user, role, action, route, path, status, source, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (now(), user, role, f"{method} {route or path}", route, path, int(status), source,
             _detail_json(detail)))

    def query(self, *, user: str | None = None, since: float | None = None, limit: int = 100) -> list[AuditEntry]:
        """Rows newest first: of `user` only when given, at or after `since` (unix seconds) when given."""
        where, args = [], []
        if user is not None:
            where.append("user = ?")
            args.append(user)
        if since is not None:
            try:
                stamp = datetime.fromtimestamp(since, timezone.utc).isoformat(timespec="milliseconds")
            except (OverflowError, OSError, ValueError):
                raise InputError(f"Got {since!r} for since.", allowed="a time between 1970 and 9999") from None
            where.append("at >= ?")
            args.append(stamp)
        sql = "SELECT * FROM audit" + (f" WHERE {' AND '.join(where)}" if where else "")
        rows = self._state._exec(sql + " ORDER BY id DESC LIMIT ?", (*args, int(limit)))
        return [AuditEntry(r["id"], r["at"], r["user"], r["role"], r["action"], r["route"], r["path"],
                           r["status"], r["source"], json.loads(r["detail"])) for r in rows]
