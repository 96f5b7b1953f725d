"""The big screen: `/dashboard`, its one-time login, and the cookie-authenticated data it polls.

`coordinator.api.create_app` calls `add_dashboard_routes(app, center)`. The page is static
(`coordinator/dashboard/index.html`, `app.js`, `app.css`) and draws with uPlot, which `make`
installs from the npm registry into `coordinator/dashboard/node_modules` and which the coordinator
serves itself (factory networks are closed: never a CDN). The API's bearer token never reaches the
browser: `adcp dashboard --url` gets a one-time login link through `POST /api/v1/dashboard/logins`
(behind the app-wide door, `coordinator.api.auth`), and the page then reads `/dashboard/data/...`,
which answer the same bodies as the API's monitoring routes from `app.state.monitor` (the
`coordinator.monitoring.Monitor`) behind a session cookie; `/dashboard/data/quality` is the body of
`GET /api/v1/quality` (the monitor's `quality` collector).
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from configs.errors import AdcpError, InputError, NotFoundError, SiteError
from configs.monitoring import LOGIN_TTL_S, MAX_LOGIN_TTL_S
from coordinator.jobs import aliases
from coordinator.state.dashboard_sessions import DashboardAuth, LoginRefusedError
from coordinator.state.jobs import JobRecords

if TYPE_CHECKING:
    from coordinator.center.core import Center

__all__ = ["COOKIE", "LoginIn", "add_dashboard_routes"]

COOKIE = "adcp_dashboard"
STATIC = Path(__file__).resolve().parent
_VENDOR = STATIC / "node_modules" / "uplot" / "dist"
_FILES = {  # URL path under /dashboard -> (file, media type); nothing else is served from disk
    "static/app.js": (STATIC / "app.js", "text/javascript"),
    "static/quality.js": (STATIC / "quality.js", "text/javascript"),
    "static/lines.js": (STATIC / "lines.js", "text/javascript"),
    "static/app.css": (STATIC / "app.css", "text/css"),
    "vendor/uPlot.iife.min.js": (_VENDOR / "uPlot.iife.min.js", "text/javascript"),
    "vendor/uPlot.min.css": (_VENDOR / "uPlot.min.css", "text/css"),
}
_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",  # the login link carries a secret; never send the URL onwards
    "X-Content-Type-Options": "nosniff",
    # Everything comes from the coordinator; uPlot sets element styles from JS.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
}
_RELOGIN = "Run `adcp dashboard --url` on the coordinator's host and open the link it prints."


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    valid_for_s: float = Field(LOGIN_TTL_S, gt=0, le=MAX_LOGIN_TTL_S,
                               description="Seconds the one-time login link works (it works once)")


class SessionRequiredError(AdcpError):
    """The dashboard's data was asked for without a valid session cookie."""

    http_status = 401


def add_dashboard_routes(app: FastAPI, center: Center, *,
                         clock: Callable[[], float] = time.time) -> DashboardAuth:
    """Add `/dashboard` (page, login, static files, data) and `POST /api/v1/dashboard/logins`
    (behind the app's door: put it on with `coordinator.api.auth.install_door` first). Returns the
    login/session store, kept on `app.state.dashboard_auth`."""
    auth = DashboardAuth(center.state.path, clock=clock)
    app.state.dashboard_auth = auth
    _page_routes(app, auth)
    _login_api(app, auth)
    _data_routes(app, auth, center)
    return auth


def _page_routes(app: FastAPI, auth: DashboardAuth) -> None:
    @app.get("/dashboard", include_in_schema=False)
    def page(request: Request) -> Response:
        if not auth.session_valid(request.cookies.get(COOKIE)):
            return _message_page("Log in to the dashboard", "This screen has no session (or it has expired). "
                                 + _RELOGIN, 401)
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"), headers=_HEADERS)

    @app.get("/dashboard/login", include_in_schema=False)
    def login(request: Request, once: str = "") -> Response:
        try:
            session = auth.redeem(once)
        except LoginRefusedError as e:
            return _message_page("Login link refused", f"{e.what} {_RELOGIN}", 401)
        response = RedirectResponse("/dashboard", status_code=303, headers=_HEADERS)
        response.set_cookie(COOKIE, session.token, max_age=int(auth.session_ttl_s), path="/dashboard",
                            httponly=True, samesite="strict", secure=request.url.scheme == "https")
        return response

    @app.post("/dashboard/logout", include_in_schema=False)
    def logout(request: Request) -> Response:
        if request.cookies.get(COOKIE):
            auth.end_session(request.cookies[COOKIE])
        response = RedirectResponse("/dashboard", status_code=303, headers=_HEADERS)
        response.delete_cookie(COOKIE, path="/dashboard")
        return response

    @app.get("/dashboard/static/{name}", include_in_schema=False)
    def static_file(name: str) -> Response:
        return _file("static", name)

    @app.get("/dashboard/vendor/{name}", include_in_schema=False)
    def vendor_file(name: str) -> Response:
        return _file("vendor", name)

    def _file(kind: str, name: str) -> Response:
        path, media = _FILES.get(f"{kind}/{name}", (None, None))
        if path is None:
            return _error(NotFoundError(f"No dashboard file {kind}/{name}."))
        if not path.is_file():
            return _error(NotFoundError(f"The dashboard's {name} is not installed.",
                                        hint="Run `make` (it runs `npm ci` in coordinator/dashboard)."))
        return FileResponse(path, media_type=media, headers={"Cache-Control": "no-cache"})


def _login_api(app: FastAPI, auth: DashboardAuth) -> None:
    @app.post("/api/v1/dashboard/logins", status_code=201, tags=["dashboard"])
    def create_login(request: Request, body: LoginIn | None = None) -> Response:
        """A one-time login link for the big screen: `url` works once, until `expires_at` (unix s)."""
        issued = auth.issue_login((body or LoginIn()).valid_for_s)
        url = str(request.url_for("login").include_query_params(once=issued.token))
        return JSONResponse({"url": url, "expires_at": issued.expires_at}, status_code=201, headers=_HEADERS)


def _data_routes(app: FastAPI, auth: DashboardAuth, center: Center) -> None:
    base = "/dashboard/data"

    def guarded(request: Request, read: Callable[[Any], Any]) -> Response:
        if not auth.session_valid(request.cookies.get(COOKIE)):
            return _error(SessionRequiredError("The dashboard session is missing or has expired.", hint=_RELOGIN))
        monitor = getattr(request.app.state, "monitor", None)
        if monitor is None:
            return _error(SiteError("Monitoring is not running in this coordinator."))
        try:
            body = read(monitor)
        except AdcpError as e:
            return _error(e)
        # Serialised like the API's monitoring routes, so the page reads exactly the API's body.
        return Response(json.dumps(body, separators=(",", ":")), media_type="application/json", headers=_HEADERS)

    @app.get(f"{base}/overview", include_in_schema=False)
    def overview(request: Request) -> Response:
        return guarded(request, lambda m: aliases.decorate(center, m.overview()))

    @app.get(f"{base}/alerts", include_in_schema=False)
    def alerts(request: Request, active: bool = True) -> Response:
        return guarded(request, lambda m: m.alerts(active_only=active))

    @app.get(f"{base}/sites/{{site}}/metrics", include_in_schema=False)
    def metrics(request: Request, site: str, names: str | None = None, since: float | None = None,
                window_s: float | None = Query(None, gt=0, le=31 * 86400), step: float | None = Query(None, gt=0)
                ) -> Response:
        def read(m: Any) -> Any:
            if since is not None and window_s is not None:
                raise InputError("Give either since or window_s, not both.")
            start = time.time() - window_s if window_s is not None else since
            wanted = [n.strip() for n in names.split(",") if n.strip()] if names else None
            return m.series(site, names=wanted, since=start, step=step)
        return guarded(request, read)

    @app.get(f"{base}/sites/{{site}}/logs", include_in_schema=False)
    def logs(request: Request, site: str, job: str | None = None,
             lines: int = Query(200, ge=1, le=5000)) -> Response:
        return guarded(request, lambda m: m.logs(site, job=job or None, lines=lines))

    @app.get(f"{base}/quality", include_in_schema=False)
    def quality(request: Request, site: str | None = None) -> Response:
        def read(m: Any) -> Any:
            if site is not None:
                center.site(site)  # NotFoundError for an unknown site
            return m.quality.report(site)
        return guarded(request, read)

    @app.get(f"{base}/sites/{{site}}/jobs", include_in_schema=False)
    def jobs(request: Request, site: str, limit: int = Query(50, ge=1, le=500)) -> Response:
        return guarded(request, lambda _: _site_jobs(center, site, limit))


def _site_jobs(center: Center, site: str, limit: int) -> list[dict[str, Any]]:
    """The coordinator's train/tune jobs for or at `site`, newest first, with the attempts run there."""
    center.site(site)  # NotFoundError for an unknown site
    out = []
    for job in (j.model_dump(mode="json") for j in JobRecords(center.state).list(500)):
        attempts = [a for a in job.get("attempts") or [] if a.get("site") == site]
        if job["origin"] != site and not attempts:
            continue
        out.append({"id": job["id"], "kind": job["kind"], "origin": job["origin"], "status": job["status"],
                    "created_at": job["created_at"], "updated_at": job["updated_at"], "error": job.get("error"),
                    "attempts": [{"site": a.get("site"), "submission_id": a.get("submission_id"),
                                  "status": a.get("status")} for a in attempts]})
        if len(out) >= limit:
            break
    return out


def _error(e: AdcpError) -> JSONResponse:
    return JSONResponse(e.to_json(), status_code=e.http_status, headers=_HEADERS)


def _message_page(title: str, text: str, status: int) -> HTMLResponse:
    """A small page without scripts for a screen that is not logged in."""
    body = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<link rel="icon" href="data:,"><link rel="stylesheet" href="/dashboard/static/app.css"></head>'
            f'<body class="message"><main><h1>{html.escape(title)}</h1><p>{html.escape(text)}</p></main></body></html>')
    return HTMLResponse(body, status_code=status, headers=_HEADERS)
