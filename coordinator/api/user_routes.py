"""The coordinator's routes for who is asking, user accounts and the audit log.

`coordinator.api.create_app` adds them with `add_user_routes(app, users, audit)`: GET
/api/v1/whoami (every role), and, for admin only (see `coordinator.api.auth.ROUTE_ROLES`), POST/GET
/api/v1/users, POST /api/v1/users/{name}/disable, POST /api/v1/users/{name}/token and GET
/api/v1/audit. A token is in an answer exactly once: when the user is made or given a new one.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from configs.errors import InputError
from coordinator.monitoring.monitor import parse_since
from coordinator.state.audit import Audit
from coordinator.state.users import ROLES, User, Users

__all__ = ["UserIn", "add_user_routes"]

_PREFIX = "/api/v1"


class QueryValueError(InputError):
    """A query parameter has a value the route cannot use."""

    http_status = 422


class UserIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., description="A DNS label: lowercase letters, digits and '-'", examples=["ann"])
    role: str = Field(..., description=f"One of {', '.join(ROLES)}", examples=["engineer"])
    sites: list[str] = Field(default_factory=list, max_length=1000,
                             description="Sites the user works on (required for a reviewer: its review queues)")


def _with_token(user: User, token: str) -> dict[str, Any]:
    return {"name": user.name, "role": user.role, "sites": list(user.sites), "token": token}


def add_user_routes(app: FastAPI, users: Users, audit: Audit) -> None:
    """Add /whoami, /users and /audit under /api/v1 (the door checks roles; see the module doc)."""

    @app.get(f"{_PREFIX}/whoami", tags=["users"])
    def whoami(request: Request) -> dict[str, Any]:
        """The principal of this request's token: name, role, sites."""
        return request.state.principal.to_dict()

    @app.post(f"{_PREFIX}/users", status_code=201, tags=["users"])
    def add_user(body: UserIn, request: Request) -> dict[str, Any]:
        """A new user and its token. The token is shown once, here; keep it (`adcp user token`
        makes a new one). 400 for a bad name, role or sites; 409 when the name is taken."""
        request.state.audit_detail = {"user": body.name, "role": body.role, "sites": body.sites}
        user, token = users.add(body.name, body.role, body.sites, by=request.state.principal.name)
        return _with_token(user, token)

    @app.get(f"{_PREFIX}/users", tags=["users"])
    def list_users() -> list[dict[str, Any]]:
        """Every user (never their tokens), by name."""
        return [u.to_dict() for u in users.list()]

    @app.post(f"{_PREFIX}/users/{{name}}/disable", tags=["users"])
    def disable_user(name: str, request: Request) -> dict[str, Any]:
        """Disable a user: its token stops working at once (401). 404 for an unknown user."""
        user = users.disable(name).to_dict()
        for hook in getattr(request.app.state, "on_user_disabled", ()):  # e.g. review stations' disabled list
            hook(name)
        return user

    @app.post(f"{_PREFIX}/users/{{name}}/token", tags=["users"])
    def new_token(name: str) -> dict[str, Any]:
        """A new token for the user, shown once; the old one stops working at once."""
        user, token = users.new_token(name)
        return _with_token(user, token)

    @app.get(f"{_PREFIX}/audit", tags=["users"])
    def audit_log(user: str | None = Query(None, description="Only this user's changes"),
                  since: str | None = Query(None, description="Unix seconds, ISO 8601, or relative: -1h, -30m"),
                  limit: int = Query(100, ge=1, le=10000)) -> list[dict[str, Any]]:
        """Changes asked of the API (every request but GET/HEAD, refused ones too), newest first."""
        try:
            t0 = parse_since(since)
        except InputError as e:
            raise QueryValueError(e.what, allowed=e.allowed, hint=e.hint) from e
        return [e.to_dict() for e in audit.query(user=user, since=t0, limit=limit)]
