"""The coordinator's user accounts: name, role, sites, and a personal API token kept only as its
SHA-256.

A table in the coordinator's state DB, over the `State` connection and lock. Tokens are random
256-bit strings, not passwords, so a plain hash is enough: a copy of the DB logs nobody in. The
bootstrap admin token that `adcp up` writes to `<home>/coordinator/api_token` is not a row here;
`coordinator.api.auth` checks it first.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from configs.errors import AdcpError, InputError, NotFoundError
from coordinator.state.db import State, now

__all__ = ["BOOTSTRAP_ADMIN", "ROLES", "DuplicateUserError", "User", "Users", "check_name", "check_role",
           "token_digest"]

ROLES = ("admin", "operator", "engineer", "reviewer", "viewer")
BOOTSTRAP_ADMIN = "admin"  # the principal of the token in <home>/coordinator/api_token; no row may take it
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")  # a DNS label, as site names are
_SITE = _NAME

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    sites TEXT NOT NULL,             -- JSON list of site names ([] = not limited to sites)
    token_sha256 TEXT NOT NULL UNIQUE,
    disabled INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    token_created_at TEXT NOT NULL
)""",
)


class DuplicateUserError(AdcpError):
    """A user of that name exists already."""

    http_status = 409


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class User:
    """One account, as the API shows it (never with its token)."""

    name: str
    role: str
    sites: tuple[str, ...] = field(default_factory=tuple)
    disabled: bool = False
    created_at: str = ""
    created_by: str = ""
    token_created_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "sites": list(self.sites), "disabled": self.disabled,
                "created_at": self.created_at, "created_by": self.created_by,
                "token_created_at": self.token_created_at}


def _user(row: sqlite3.Row) -> User:
    return User(row["name"], row["role"], tuple(json.loads(row["sites"])), bool(row["disabled"]),
                row["created_at"], row["created_by"], row["token_created_at"])


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InputError(f'Got "{name}" for a user name.',
                         allowed="1-40 lowercase letters, digits and '-', starting and ending with a letter or digit")
    if name == BOOTSTRAP_ADMIN:
        raise InputError(f'The name "{name}" belongs to the bootstrap admin token.', allowed="any other name")
    return name


def check_role(role: str, sites: list[str] | tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    """The role and the sites (deduplicated, in order) when they fit together; InputError otherwise."""
    if role not in ROLES:
        raise InputError(f'Got "{role}" for a role.', allowed=", ".join(ROLES))
    bad = [s for s in sites if not isinstance(s, str) or not _SITE.match(s)]
    if bad:
        raise InputError(f'Got "{bad[0]}" for a site name.', allowed="site names (lowercase DNS labels)")
    unique = tuple(dict.fromkeys(sites))
    if role == "reviewer" and not unique:
        raise InputError("A reviewer needs the sites whose review queue it works.", hint="Give --sites a,b.")
    return role, unique


class Users:
    """The `users` table of the coordinator DB behind `state` (its one connection and lock)."""

    def __init__(self, state: State) -> None:
        self._state = state
        for statement in _SCHEMA:
            state._exec(statement)

    def add(self, name: str, role: str, sites: list[str] | tuple[str, ...] = (), *, by: str) -> tuple[User, str]:
        """A new user and its token (the only time the token is seen). Raises InputError for a bad
        name, role or sites, DuplicateUserError when the name is taken."""
        check_name(name)
        role, sites = check_role(role, sites)
        token = secrets.token_urlsafe(32)
        stamp = now()
        try:
            self._state._exec(
                "INSERT INTO users (name, role, sites, token_sha256, disabled, created_at, created_by, "
                "token_created_at) VALUES (?, ?, ?, ?, 0, ?, ?, ?)",
                (name, role, json.dumps(list(sites)), token_digest(token), stamp, by, stamp))
        except sqlite3.IntegrityError:
            raise DuplicateUserError(f"A user {name} exists already.",
                                     hint=f"Pick another name, or `adcp user token {name}` for a new token.") from None
        return self.get(name), token

    def get(self, name: str) -> User:
        rows = self._state._exec("SELECT * FROM users WHERE name = ?", (name,))
        if not rows:
            raise NotFoundError(f"No user {name}.", hint="`adcp user list` shows the users.")
        return _user(rows[0])

    def list(self) -> list[User]:
        return [_user(r) for r in self._state._exec("SELECT * FROM users ORDER BY name")]

    def by_token(self, token: str) -> User | None:
        """The user holding `token`, disabled or not; None for a token nobody holds."""
        rows = self._state._exec("SELECT * FROM users WHERE token_sha256 = ?", (token_digest(token),))
        return _user(rows[0]) if rows else None

    def disable(self, name: str) -> User:
        """Disable `name` (its token stops working at once; the row stays for the audit log)."""
        self.get(name)
        self._state._exec("UPDATE users SET disabled = 1 WHERE name = ?", (name,))
        return self.get(name)

    def new_token(self, name: str) -> tuple[User, str]:
        """A new token for `name`; the old one stops working at once. A disabled user stays disabled."""
        self.get(name)
        token = secrets.token_urlsafe(32)
        self._state._exec("UPDATE users SET token_sha256 = ?, token_created_at = ? WHERE name = ?",
                          (token_digest(token), now(), name))
        return self.get(name), token
