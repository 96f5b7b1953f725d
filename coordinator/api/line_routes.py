"""The model-line routes: a line's versions with their lineage, aliases and reports, the moves of
its aliases, and setting an alias by hand.

`GET /api/v1/models/{line}/history?site=S` and `PUT /api/v1/models/{line}/aliases/{alias}`, over
`center.lines` (coordinator.state.model_lines) and the central store. `coordinator.api.create_app`
adds them with `add_line_routes(app, center)`, behind the app-wide door (history: read roles; the
alias PUT: engineer; `coordinator.api.auth.ROUTE_ROLES`).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from configs.errors import AdcpError, NotFoundError
from coordinator.api.platform_routes import principal_name
from coordinator.center.core import Center
from coordinator.jobs import aliases
from data.artifacts import ArtifactRef
from data.model_format import read_metadata

__all__ = ["AliasIn", "add_line_routes", "line_history"]

_PREFIX = "/api/v1"


class AliasIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    site: str = Field(..., description="The site whose alias moves", examples=["fab-a"])
    version: str | None = Field(..., description="The version the alias names; null removes the alias",
                                examples=["3"])
    why: str = Field("set by hand", min_length=1, max_length=500, description="Recorded with the move")


def _version_row(center: Center, line: str, version: str, reports: list[dict[str, Any]],
                 site_aliases: dict[str, dict[str, str]]) -> dict[str, Any]:
    row: dict[str, Any] = {"version": version, "model_id": f"{line}@{version}", "created": None,
                           "lineage": {}, "metrics": {}}
    try:
        meta = read_metadata(center.central.manifest_url(ArtifactRef("model", line, version)))
        row.update(model_id=meta.model_id, created=meta.created_at, lineage=meta.lineage,
                   metrics=meta.metrics)
    except AdcpError as e:  # a version whose metadata cannot be read still has its aliases and reports
        row["error"] = str(e)
    newest: dict[str, Any] = {"gate": None, "shadow": None, "watch": None}
    for r in reports:  # newest first: the first of a kind wins
        if r["version"] == version and newest.get(r["kind"]) is None:
            newest[r["kind"]] = {**r["report"], "at": r["at"]} if isinstance(r["report"], dict) else r["report"]
    row["reports"] = newest
    row["aliases"] = {site: sorted(a for a, v in names.items() if v == version)
                      for site, names in site_aliases.items() if version in names.values()}
    return row


def line_history(center: Center, line: str, site: str | None = None, limit: int = 100) -> dict[str, Any]:
    """`{"line", "aliases": {site: {alias: version}}, "versions": [...], "moves": [...],
    "release": stage|None}`; versions newest first, each with its lineage, aliases and newest report of
    each kind. NotFoundError for a line that has no version, alias or report."""
    if site is not None:
        center.site(site)  # NotFoundError naming the known sites
    versions = center.central.versions("model", line)
    site_aliases = center.lines.aliases(line, site)
    reports = center.lines.reports(line)
    moves = center.lines.moves(line, site, limit)
    if not versions and not site_aliases and not reports and not moves:
        raise NotFoundError(f"No model line {line}: no model/{line} in the central store and no aliases.",
                            hint="`adcp model list` shows the models.")
    known = list(dict.fromkeys([*versions, *(r["version"] for r in reports)]))
    return {"line": line, "aliases": site_aliases,
            "versions": [_version_row(center, line, v, reports, site_aliases) for v in reversed(known)],
            "moves": moves, "release": aliases.release_stage(center, line)}


def add_line_routes(app: FastAPI, center: Center) -> None:
    """Add GET /models/{line}/history and PUT /models/{line}/aliases/{alias} under /api/v1."""

    @app.get(f"{_PREFIX}/models/{{line}}/history", tags=["models"])
    def history(line: str, site: str | None = Query(None, description="Only this site's aliases and moves"),
                limit: int = Query(100, ge=1, le=1000, description="Moves, newest first")) -> dict[str, Any]:
        """The line's versions (newest first) with lineage, aliases per site and the newest gate,
        shadow and watch report of each; the moves of its aliases (when, site, alias, from, to,
        who, why), newest first; its active release's stage."""
        return line_history(center, line, site, limit)

    @app.put(f"{_PREFIX}/models/{{line}}/aliases/{{alias}}", tags=["models"])
    def set_alias(line: str, alias: str, body: AliasIn, request: Request) -> dict[str, Any]:
        """Point `alias` (champion | challenger | previous) of the line at `site` to `version`
        (null removes it); recorded as a move with the caller and `why`. Only the alias moves:
        nothing is deployed (`POST /models/{name}/{version}/deploy` does that and moves champion)."""
        center.site(body.site)
        if body.version is not None:
            center.central.resolve(ArtifactRef("model", line, body.version))  # NotFoundError: no such version
        after = center.lines.set_alias(line, body.site, alias, body.version,
                                       by=principal_name(request) or aliases.DEFAULT_BY, why=body.why)
        return {"line": line, "site": body.site, "aliases": after}
