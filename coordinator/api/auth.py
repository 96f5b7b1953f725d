"""The coordinator's door: who is asking (bearer token -> principal), whether their role may use
the route (`ROUTE_ROLES`, the one table), and the audit log of every change.

`install_door(app, token, state)` is called by `coordinator.api.app.create_app` right after the app
is made, before any route: it adds ONE app-wide dependency (FastAPI copies an app's dependencies
into each route added after), the JSON answers for 401/403, and the audit middleware. Every route
under /api/ passes the door; a route missing from `ROUTE_ROLES` is refused to all but admin
(default deny), and a unit test checks the table covers every route of the app. /healthz,
/metrics, /docs, /openapi.json and the /dashboard pages (their own cookie session) are outside it.

The bootstrap token that `adcp up` writes to `<home>/coordinator/api_token` is the principal
`admin` (role admin); any other token is looked up by its SHA-256 in the users table
(`coordinator.state.users`).
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from configs.errors import AdcpError, ForbiddenError, UnauthorizedError
from coordinator.state.audit import Audit
from coordinator.state.db import State
from coordinator.state.users import BOOTSTRAP_ADMIN, ROLES, Users

__all__ = ["ROUTE_ROLES", "Principal", "install_door", "require_site",
           "roles_allowed", "roles_table_markdown"]

log = logging.getLogger("adcp.coordinator")

_V1 = "/api/v1"
_READ = ("operator", "engineer", "viewer")  # what the read-only big screen shows, operators and engineers read too
_SHIP = ("operator", "engineer")  # engineers ship datasets and code; operators move artifacts
_OPERATE = ("operator",)
_BUILD = ("engineer",)
_ADMIN: tuple[str, ...] = ()  # admin is always allowed, so admin-only routes list nobody else
_EVERYONE = ("operator", "engineer", "reviewer", "viewer")

# (method, route template as FastAPI has it) -> roles allowed besides admin. The README's table
# "Users, roles and the audit log" is rendered from this (`roles_table_markdown`).
ROUTE_ROLES: dict[tuple[str, str], tuple[str, ...]] = {
    ("GET", f"{_V1}/whoami"): _EVERYONE,
    # sites
    ("GET", f"{_V1}/sites"): _READ,
    ("GET", f"{_V1}/sites/{{name}}"): _READ,
    ("POST", f"{_V1}/sites"): _OPERATE,
    ("DELETE", f"{_V1}/sites/{{name}}"): _OPERATE,
    ("GET", f"{_V1}/sites/{{name}}/env"): _SHIP,  # Ray addresses and a token for the user's own Ray tools
    ("POST", f"{_V1}/sites/{{name}}/classify"): _SHIP,
    ("GET", f"{_V1}/platform"): _READ,
    ("GET", f"{_V1}/local-sites"): _READ,
    # artifacts, uploads, pushes
    ("GET", f"{_V1}/artifacts"): _READ,
    ("POST", f"{_V1}/artifacts/verify"): _OPERATE,
    ("POST", f"{_V1}/uploads"): _SHIP,
    ("POST", f"{_V1}/uploads/{{upload_id}}/files"): _SHIP,
    ("GET", f"{_V1}/uploads/{{upload_id}}"): _SHIP,
    ("PUT", f"{_V1}/uploads/{{upload_id}}/objects/{{sha256}}"): _SHIP,
    ("POST", f"{_V1}/uploads/{{upload_id}}/commit"): _SHIP,
    ("POST", f"{_V1}/transfers"): _SHIP,
    ("GET", f"{_V1}/transfers"): _READ,
    ("GET", f"{_V1}/transfers/{{transfer_id}}"): _READ,
    ("GET", f"{_V1}/tasks"): _READ,
    ("GET", f"{_V1}/tasks/{{task_id}}"): _READ,
    ("POST", f"{_V1}/datasets/import"): _SHIP,  # a factory's images into the central store
    # training and tuning
    ("POST", f"{_V1}/jobs/plan"): _BUILD,
    ("POST", f"{_V1}/jobs"): _BUILD,
    ("GET", f"{_V1}/jobs"): _READ,
    ("GET", f"{_V1}/jobs/{{job_id}}"): _READ,
    ("GET", f"{_V1}/jobs/{{job_id}}/logs"): _SHIP,
    ("POST", f"{_V1}/jobs/{{job_id}}/stop"): _BUILD,
    # models and rollouts
    ("GET", f"{_V1}/models"): _READ,
    ("POST", f"{_V1}/models/{{name}}/{{version}}/deploy"): _BUILD,
    ("POST", f"{_V1}/models/{{line}}/{{version}}/gate"): _BUILD,  # score against the champion
    ("POST", f"{_V1}/models/{{line}}/golden"): _BUILD,  # publish a line's golden set
    ("GET", f"{_V1}/models/{{line}}/history"): _READ,  # model lines: versions, aliases per site, moves
    ("PUT", f"{_V1}/models/{{line}}/aliases/{{alias}}"): _BUILD,
    ("POST", f"{_V1}/models/{{line}}/retrain"): _BUILD,  # retrain a line (when due, or now)
    ("GET", f"{_V1}/models/{{line}}/retrains"): _READ,
    ("POST", f"{_V1}/sites/{{site}}/rollback"): _BUILD,
    ("GET", f"{_V1}/deployments"): _READ,
    # staged releases (gate, shadow, canary, waves) and their approvals
    ("POST", f"{_V1}/releases"): _BUILD,
    ("GET", f"{_V1}/releases"): _READ,
    ("GET", f"{_V1}/releases/{{release_id}}"): _READ,
    ("POST", f"{_V1}/models/{{line}}/{{version}}/approve"): _BUILD,
    # monitoring
    ("GET", f"{_V1}/overview"): _READ,
    ("GET", f"{_V1}/alerts"): _READ,
    ("GET", f"{_V1}/sites/{{site}}/metrics"): _READ,
    ("GET", f"{_V1}/sites/{{site}}/logs"): _SHIP,  # logs may show data and paths: not for the wall screen
    ("GET", f"{_V1}/quality"): _READ,  # production quality per site, product and model version
    ("POST", f"{_V1}/dashboard/logins"): _READ,  # the big screen's one-time login link
    # review: station tokens, queues, verdict sync (a reviewer only for its own sites: require_site)
    ("POST", f"{_V1}/review/station-token"): ("operator", "engineer", "reviewer"),
    ("GET", f"{_V1}/review/public-key"): _EVERYONE,
    ("GET", f"{_V1}/review/queue"): ("operator", "engineer", "reviewer"),
    ("POST", f"{_V1}/review/sync"): _SHIP,
    ("GET", f"{_V1}/review/conflicts"): ("operator", "engineer", "reviewer"),
    # users and the audit log
    ("GET", f"{_V1}/users"): _ADMIN,
    ("POST", f"{_V1}/users"): _ADMIN,
    ("POST", f"{_V1}/users/{{name}}/disable"): _ADMIN,
    ("POST", f"{_V1}/users/{{name}}/token"): _ADMIN,
    ("GET", f"{_V1}/audit"): _ADMIN,
    ("POST", f"{_V1}/shutdown"): _ADMIN,
}

_HINT_401 = "Send 'Authorization: Bearer <token>'; the token is in <home>/coordinator/api_token."
_TOKEN = re.compile(r"^[\x21-\x7e]{1,512}$")  # printable ASCII, no spaces: what a token can be
_READS = ("GET", "HEAD")
_SECRET_KEY = re.compile(r"token|secret|password|passwd|key|credential|auth|once", re.IGNORECASE)
_MAX_BODY = 4096  # JSON bodies up to this many bytes go into the audit detail (secrets redacted)


@dataclass(frozen=True)
class Principal:
    """Who a request comes from: on `request.state.principal` for every /api/ route."""

    name: str
    role: str
    sites: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "sites": list(self.sites)}


def roles_allowed(method: str, route: str) -> list[str]:
    """Every role that may use `method route` (admin always), in the order of `ROLES`."""
    extra = ROUTE_ROLES.get((method.upper(), route), ())
    return [r for r in ROLES if r == "admin" or r in extra]


def require_site(principal: Principal, site: str) -> None:
    """Raise ForbiddenError unless `principal` may act on `site`: admin always; a principal with
    named sites (every reviewer) only on those; others on every site."""
    if principal.role == "admin" or not principal.sites or site in principal.sites:
        return
    raise ForbiddenError(f"{principal.name} (role {principal.role}) may not act on site {site}.",
                         allowed=f"sites {', '.join(principal.sites)}", role=principal.role,
                         sites_allowed=list(principal.sites))


def _unauthorized(what: str) -> UnauthorizedError:
    return UnauthorizedError(what, hint=_HINT_401)


class _Door:
    """The app-wide dependency: authenticate, then authorize by `ROUTE_ROLES`."""

    def __init__(self, token: str, users: Users) -> None:
        self._token = token.encode("ascii")
        self._users = users

    async def __call__(self, request: Request) -> None:
        route = getattr(request.scope.get("route"), "path", "")
        if not route.startswith("/api/"):
            return  # /healthz, /metrics, the dashboard's pages and data (their own cookie session)
        principal = await self._authenticate(request.headers.get("authorization"))
        request.state.principal = principal
        allowed = roles_allowed(request.method, route)
        if principal.role not in allowed:
            raise ForbiddenError(f"{principal.name} (role {principal.role}) may not {request.method} {route}",
                                 allowed=f"roles {', '.join(allowed)}", roles_allowed=allowed,
                                 role=principal.role)

    async def _authenticate(self, header: str | None) -> Principal:
        if not header:
            raise _unauthorized("missing bearer token")
        scheme, _, given = header.strip().partition(" ")
        given = given.strip()
        if scheme.lower() != "bearer" or not _TOKEN.match(given):  # also refuses non-ASCII, never a 500
            raise _unauthorized("missing or wrong bearer token")
        if secrets.compare_digest(given.encode("ascii"), self._token):
            return Principal(BOOTSTRAP_ADMIN, "admin")
        user = await run_in_threadpool(self._users.by_token, given)
        if user is None:
            raise _unauthorized("missing or wrong bearer token")
        if user.disabled:
            raise _unauthorized(f"the user {user.name} is disabled")
        return Principal(user.name, user.role, user.sites)


def _redacted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: "***" if _SECRET_KEY.search(str(k)) else _redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v) for v in value[:50]]
    if isinstance(value, str) and len(value) > 200:
        return value[:200] + "..."
    return value


class _AuditLog:
    """ASGI middleware: records every non-GET/HEAD request under /api/ with the status answered,
    before the answer leaves (so a client that reads the log next sees its own change)."""

    def __init__(self, app: Callable[..., Awaitable[None]], audit: Audit) -> None:
        self.app, self.audit = app, audit

    async def __call__(self, scope: MutableMapping[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["method"] in _READS or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})  # the dict behind request.state: the door puts the principal there
        headers = {k.lower(): v for k, v in scope.get("headers") or []}
        body: list[bytes] | None = [] if headers.get(b"content-type", b"").startswith(b"application/json") else None
        recorded = False

        async def receive_copy() -> MutableMapping[str, Any]:
            nonlocal body
            message = await receive()
            if body is not None and message["type"] == "http.request":
                body.append(message.get("body", b""))
                if sum(map(len, body)) > _MAX_BODY:
                    body = None
            return message

        async def record(status: int) -> None:
            nonlocal recorded
            recorded = True
            try:
                await run_in_threadpool(self._record, scope, state, status, body)
            except Exception:  # the change itself happened or was refused; a failed record must not hide that
                log.exception("audit record of %s %s failed", scope["method"], scope["path"])

        async def send_recorded(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start" and not recorded:
                await record(message["status"])
            await send(message)

        try:
            await self.app(scope, receive_copy, send_recorded)
        except Exception:  # (a cancelled request records nothing: nothing was answered)
            if not recorded:
                await record(500)
            raise

    def _record(self, scope: MutableMapping[str, Any], state: dict[str, Any], status: int,
                body: list[bytes] | None) -> None:
        principal = state.get("principal")
        route = getattr(scope.get("route"), "path", None)
        detail: dict[str, Any] = {}
        if scope.get("path_params"):
            detail["params"] = dict(scope["path_params"])
        query = scope.get("query_string", b"").decode("latin-1")
        if query:
            from urllib.parse import parse_qsl

            detail["query"] = _redacted(dict(parse_qsl(query)))
        if body:
            try:
                detail["body"] = _redacted(json.loads(b"".join(body)))
            except ValueError:
                pass
        detail.update(state.get("audit_detail") or {})
        client = scope.get("client")
        self.audit.record(user=principal.name if principal else "", role=principal.role if principal else "",
                          method=scope["method"], route=route, path=scope["path"], status=status,
                          source=client[0] if client else "", detail=detail)


async def _door_error(request: Request, exc: AdcpError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.http_status == 401 else None
    return JSONResponse(exc.to_json(), status_code=exc.http_status, headers=headers)


def install_door(app: FastAPI, token: str, state: State) -> tuple[Users, Audit]:
    """Put the door on `app` (call it before adding any route): the app-wide role check, its 401/403
    JSON answers, and the audit middleware. The users and audit repositories over `state` are
    returned and kept on `app.state.users` / `app.state.audit`."""
    users, audit = Users(state), Audit(state)
    app.router.dependencies.append(Depends(_Door(token, users)))
    app.add_exception_handler(UnauthorizedError, _door_error)
    app.add_exception_handler(ForbiddenError, _door_error)
    app.add_middleware(_AuditLog, audit=audit)
    app.state.users, app.state.audit = users, audit
    return users, audit


def roles_table_markdown() -> str:
    """The README's table of route -> roles, from `ROUTE_ROLES` (a unit test keeps them equal)."""
    lines = ["| method | route | roles |", "|---|---|---|"]
    for method, route in sorted(ROUTE_ROLES, key=lambda k: (k[1], k[0])):
        lines.append(f"| {method} | `{route}` | {', '.join(roles_allowed(method, route))} |")
    return "\n".join(lines) + "\n"
