"""The coordinator's review routes: station tokens for reviewers, the center's public key, a site's
review queue, the verdict sync and its conflicts (over `coordinator.jobs.review_sync`).

`create_app` adds them with `add_review_routes(app, center, tasks)`; the door
(`coordinator.api.auth.ROUTE_ROLES`) checks roles, and a principal limited to sites (every
reviewer) is further held to its own sites here (`require_site`). The routes also hook the verdict
sync's helpers into the center: an annotations artifact pushed to a site is loaded into the site's
review DB, and a user disabled by an admin reaches every station's disabled list at once (best
effort: a site that does not answer gets it on the next sync).
"""

from __future__ import annotations

import functools
import threading
from typing import Any

from fastapi import FastAPI, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from configs.tasks import TaskRecord
from coordinator.api.auth import Principal, require_site
from coordinator.api.platform_routes import principal_name
from coordinator.center.core import Center
from coordinator.jobs import review_sync
from coordinator.jobs.tasks import Reporter, TaskRunner

__all__ = ["StationTokenIn", "SyncIn", "add_review_routes"]

_PREFIX = "/api/v1/review"


class StationTokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    site: str = Field(..., description="The site whose review station the token is for", examples=["fab-a"])


class SyncIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sites: list[str] | None = Field(None, description="Sites to pull from (default: every site)")


def _principal(request: Request) -> Principal:
    return request.state.principal


def add_review_routes(app: FastAPI, center: Center, tasks: TaskRunner) -> None:
    """Add the /api/v1/review routes and the center hooks (see the module docstring)."""
    if not any(getattr(h, "func", None) is review_sync.load_site_db for h in center.push_hooks):
        center.push_hooks.append(functools.partial(review_sync.load_site_db, center))
    hooks = getattr(app.state, "on_user_disabled", None)
    if hooks is None:
        hooks = app.state.on_user_disabled = []
    hooks.append(lambda name: threading.Thread(target=review_sync.push_disabled, args=(center,), daemon=True,
                                               name="review-disabled").start())

    @app.post(f"{_PREFIX}/station-token", tags=["review"])
    def station_token(body: StationTokenIn, request: Request) -> dict[str, Any]:
        """A station token (12 h) for the caller to log in at `site`'s review station, valid at
        the caller's sites (every site for a principal not limited to sites). 403 for a reviewer
        of other sites, 404 for an unknown site."""
        principal = _principal(request)
        site = center.site(body.site).name
        require_site(principal, site)
        return center.station_keys.issue(principal)

    @app.get(f"{_PREFIX}/public-key", tags=["review"])
    def public_key() -> dict[str, str]:
        """The public key (PEM) stations verify station tokens with."""
        return {"public_key_pem": center.station_keys.public_pem()}

    @app.get(f"{_PREFIX}/queue", tags=["review"])
    def queue(request: Request, site: str = Query(..., description="The site whose review queue to read"),
              state: str | None = Query(None, description="queued, claimed or done (default: all)"),
              limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
        """The site's review items, read from its station through the site gateway. 503 when the
        station does not answer."""
        site = center.site(site).name
        require_site(_principal(request), site)
        with review_sync.Station(center, site) as st:
            return {"site": site, "items": st.items(state=state, limit=limit)}

    @app.post(f"{_PREFIX}/sync", tags=["review"], response_model=None)
    def sync(request: Request, response: Response, body: SyncIn | None = None,
             wait: bool = Query(False, description="true: answer with the result; false: 202 with a task")
             ) -> dict[str, Any] | TaskRecord:
        """Pull new verdicts from every site (or `sites`), publish them per dataset line, push the
        disabled-accounts list. With wait=true the result: {"verdicts_new", "annotations",
        "dataset", "lines", "sites", "conflicts"}; else 202 with the task that runs it."""
        sites = body.sites if body else None
        for name in sites or ():
            center.site(name)  # 404 before any work
        if wait:
            return review_sync.sync(center, sites)
        response.status_code = 202

        def work(report: Reporter) -> dict[str, Any]:
            return review_sync.sync(center, sites, on_event=report.event)

        return tasks.start("review-sync", ",".join(sites or ["every site"]), work, user=principal_name(request))

    @app.get(f"{_PREFIX}/conflicts", tags=["review"])
    def list_conflicts(request: Request) -> dict[str, Any]:
        """Images whose verdicts disagree, with every live verdict, the label the rule resolved and
        the rule used (a reviewer sees those with verdicts from its sites)."""
        principal = _principal(request)
        limited = principal.role != "admin" and bool(principal.sites)
        return {"conflicts": review_sync.conflicts(center, tuple(principal.sites) if limited else None)}
