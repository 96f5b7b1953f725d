"""The retrain routes of a model line, over `coordinator.jobs.retrain.Retrainer`.

`POST /api/v1/models/{line}/retrain` {"now": bool}: with `now` the line retrains at once (202, the
retrain's record with its job id; 409 when the line is retraining already); without it only when
its policy says it is due, else 200 with `{"due": false, "why": ...}`. `GET
/api/v1/models/{line}/retrains`: whether it is due now and its retrains, newest first.
`coordinator.api.create_app` adds them with `add_retrain_routes(app, retrainer)`, behind the
app-wide door (POST: engineer; GET: read roles; `coordinator.api.auth.ROUTE_ROLES`).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from coordinator.api.platform_routes import principal_name
from coordinator.jobs.retrain import Retrainer

__all__ = ["RetrainIn", "add_retrain_routes"]

_PREFIX = "/api/v1/models"


class RetrainIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    now: bool = Field(False, description="Retrain at once; without it only when the line's policy says it is due")


def add_retrain_routes(app: FastAPI, retrainer: Retrainer) -> None:
    """Add POST /models/{line}/retrain and GET /models/{line}/retrains under /api/v1."""

    @app.post(f"{_PREFIX}/{{line}}/retrain", status_code=202, tags=["models"])
    def retrain(line: str, request: Request, response: Response, body: RetrainIn | None = None) -> dict[str, Any]:
        """Start a retrain of the line (202 with its record), or say why it is not due (200)."""
        now = bool(body and body.now)
        out = retrainer.retrain(line, by=principal_name(request) or "unknown", why="by hand" if now else None,
                                now=now)
        if not out.get("due"):
            response.status_code = 200
        return out

    @app.get(f"{_PREFIX}/{{line}}/retrains", tags=["models"])
    def retrains(line: str, limit: int = Query(50, ge=1, le=1000)) -> dict[str, Any]:
        """Whether the line is due now (and why), and its retrains, newest first."""
        return {"line": line, "due": retrainer.due(line), "retrains": retrainer.retrains(line, limit)}
