"""Logins to the big screen without the API token: one-time login tokens and browser sessions.

`adcp dashboard --url` asks the coordinator for a login token; the wall screen opens
`/dashboard/login?once=<token>`, which trades it (once, before it expires) for a session cookie.
Both are random 256-bit strings stored only as their SHA-256 in two tables of the coordinator's
SQLite DB, so a copy of the DB logs nobody in. A plain hash is enough: the secrets are random,
not passwords, so there is nothing to guess.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from configs.errors import AdcpError, InputError
from configs.monitoring import LOGIN_TTL_S, MAX_LOGIN_TTL_S

__all__ = ["LOGIN_TTL_S", "MAX_LOGIN_TTL_S", "SESSION_TTL_S", "DashboardAuth", "Issued", "LoginRefusedError"]

SESSION_TTL_S = 12 * 3600.0  # one shift on a wall screen; then `adcp dashboard --url` again

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dashboard_logins (
    token_sha256 TEXT PRIMARY KEY,
    created_at REAL NOT NULL,    -- unix seconds
    expires_at REAL NOT NULL,
    used_at REAL                 -- set when traded for a session; a used token never works again
);
CREATE TABLE IF NOT EXISTS dashboard_sessions (
    token_sha256 TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
"""


_HINT = "Run `adcp dashboard --url` for a new one."


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class LoginRefusedError(AdcpError):
    """A login link that is unknown, already used or expired."""

    http_status = 401


@dataclass(frozen=True)
class Issued:
    """A secret handed out once: the token itself and when it stops working (unix seconds)."""

    token: str
    expires_at: float


class DashboardAuth:
    """One-time login tokens and sessions in the coordinator DB at `db_path` (its own connection;
    WAL and a busy timeout let it share the file with `coordinator.state.State`)."""

    def __init__(self, db_path: str | Path, *, clock: Callable[[], float] = time.time,
                 session_ttl_s: float = SESSION_TTL_S) -> None:
        self._clock = clock
        self.session_ttl_s = session_ttl_s
        self._lock = threading.Lock()
        self._db = sqlite3.connect(Path(db_path), timeout=30, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _exec(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, args)

    def issue_login(self, ttl_s: float = LOGIN_TTL_S) -> Issued:
        """A new one-time login token valid for `ttl_s` seconds. Raises InputError for a ttl out of range."""
        if not 0 < ttl_s <= MAX_LOGIN_TTL_S:
            raise InputError(f"Got {ttl_s:g} s for the login token's lifetime.",
                             allowed=f"more than 0 and at most {MAX_LOGIN_TTL_S:g} s")
        now = self._clock()
        self._prune(now)
        token = secrets.token_urlsafe(32)
        self._exec("INSERT INTO dashboard_logins (token_sha256, created_at, expires_at) VALUES (?, ?, ?)",
                   (_digest(token), now, now + ttl_s))
        return Issued(token, now + ttl_s)

    def redeem(self, login_token: str) -> Issued:
        """Trade a login token for a new session. Raises LoginRefusedError when the token is unknown,
        already used or expired. The check and the marking are one UPDATE, so two browsers racing
        with one token get one session."""
        now = self._clock()
        digest = _digest(login_token)
        used = self._exec("UPDATE dashboard_logins SET used_at = ? WHERE token_sha256 = ? AND used_at IS NULL "
                          "AND expires_at > ?", (now, digest, now)).rowcount
        if used != 1:
            raise LoginRefusedError(self._why_refused(digest, now), hint=_HINT)
        session = secrets.token_urlsafe(32)
        self._exec("INSERT INTO dashboard_sessions (token_sha256, created_at, expires_at) VALUES (?, ?, ?)",
                   (_digest(session), now, now + self.session_ttl_s))
        return Issued(session, now + self.session_ttl_s)

    def _why_refused(self, digest: str, now: float) -> str:
        row = self._exec("SELECT used_at, expires_at FROM dashboard_logins WHERE token_sha256 = ?",
                         (digest,)).fetchone()
        if row is None:
            return "This login link is not known (or expired long ago)."
        if row[0] is not None:
            return "This login link was already used; each works once."
        return "This login link has expired."

    def session_valid(self, session_token: str | None) -> bool:
        if not session_token:
            return False
        row = self._exec("SELECT expires_at FROM dashboard_sessions WHERE token_sha256 = ?",
                         (_digest(session_token),)).fetchone()
        return row is not None and row[0] > self._clock()

    def end_session(self, session_token: str) -> None:
        self._exec("DELETE FROM dashboard_sessions WHERE token_sha256 = ?", (_digest(session_token),))

    def _prune(self, now: float) -> None:
        # Expired rows are useless; used logins are kept until they expire so a reuse reads as "used".
        self._exec("DELETE FROM dashboard_logins WHERE expires_at <= ?", (now,))
        self._exec("DELETE FROM dashboard_sessions WHERE expires_at <= ?", (now,))
