"""The coordinator's HTTP routes for staged releases, over `coordinator.jobs.release.Releaser`.

`coordinator.api.create_app` adds them with `add_release_routes(app, releaser)`: POST /releases
{"line", "version"} starts one (409 while the line has one under way), GET /releases?line= lists
them newest first, GET /releases/{id} says where each site stands, POST
/models/{line}/{version}/approve lets a held release through. The door checks each caller's role.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from coordinator.api.platform_routes import principal_name
from coordinator.jobs.release import Releaser

__all__ = ["ReleaseIn", "add_release_routes"]

_PREFIX = "/api/v1"
_BUSY = {409: {"description": "The line has a release under way (ConflictError: `release`)."}}


class ReleaseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    line: str = Field(..., min_length=1, max_length=200, description="The model line (a model artifact name)")
    version: str = Field(..., min_length=1, max_length=200, description="The challenger's version")


def add_release_routes(app: FastAPI, releaser: Releaser) -> None:
    """Add the release routes under /api/v1 (behind the app-wide door)."""

    @app.post(f"{_PREFIX}/releases", tags=["releases"], status_code=201, responses=_BUSY)
    def start_release(body: ReleaseIn, request: Request) -> dict[str, Any]:
        """Start releasing `line@version`: gate, shadow, canary and its watch, then the waves.
        The release steps in the background; follow it at GET /releases/{id}."""
        return releaser.view(releaser.start(body.line, body.version, principal_name(request) or "admin"))

    @app.get(f"{_PREFIX}/releases", tags=["releases"])
    def list_releases(line: str | None = Query(None, description="Only this line's"),
                      limit: int = Query(50, ge=1, le=1000)) -> list[dict[str, Any]]:
        """Releases, newest first (stage, status, plan, detail)."""
        return releaser.releases.list(line, limit)

    @app.get(f"{_PREFIX}/releases/{{release_id}}", tags=["releases"])
    def get_release(release_id: str) -> dict[str, Any]:
        """One release: its stages, every change of stage or status, approvals, and per site its
        stage, state, what it serves, its aliases, the watch figures against the limits and why."""
        return releaser.view(releaser.releases.get(release_id))

    @app.post(f"{_PREFIX}/models/{{line}}/{{version}}/approve", tags=["releases"], responses=_BUSY)
    def approve(line: str, version: str, request: Request) -> dict[str, Any]:
        """Let the line's release of `version` through the approval it waits at (409 when it waits
        for none)."""
        return releaser.view(releaser.approve(line, version, principal_name(request) or "admin"))
