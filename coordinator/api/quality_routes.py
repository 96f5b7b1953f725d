"""The production-quality route: `GET /api/v1/quality?site=S`, the figures the coordinator's
`QualityCollector` (on the monitor, `coordinator.monitoring.quality`) keeps from every site's review
stats. `coordinator.api.create_app` adds it with `add_quality_routes(app, center, monitor)`, behind
the app-wide door (read roles, `coordinator.api.auth.ROUTE_ROLES`).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from fastapi import FastAPI, Query, Response

if TYPE_CHECKING:
    from coordinator.center.core import Center
    from coordinator.monitoring.monitor import Monitor

__all__ = ["add_quality_routes"]


def add_quality_routes(app: FastAPI, center: Center, monitor: Monitor) -> None:
    """Add `GET /api/v1/quality`."""

    @app.get("/api/v1/quality", tags=["monitoring"])
    def quality(site: str | None = Query(None, description="Only this site (default: every site)")) -> Response:
        """Per site: automation rate, escape and overkill rates (from the audit sample), review
        backlog and its oldest age, each with the counts behind it (a rate is null when its count
        is 0); `stale` when the site's last read failed (the figures are then its last read's);
        `by`: the same figures per product and model version. An unknown site is a 404."""
        if site is not None:
            center.site(site)  # NotFoundError naming the known sites
        body = monitor.quality.report(site)
        return Response(json.dumps(body, separators=(",", ":"), ensure_ascii=False),
                        media_type="application/json")
