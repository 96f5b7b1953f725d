"""The glue between rollouts, releases and the model lines' aliases (coordinator.state.model_lines).

A successful deploy of `model/<line>@<v>` at a site makes `v` the line's champion there
(`on_deployed`); a rollback is a deploy of what the site served before, so the same move returns
champion <- previous and previous <- the rolled back version. `overview` gathers, per site, every
line's champion and challenger and the stage of the line's active release for the big screen,
`adcp top` and `adcp model list`.
"""

from __future__ import annotations

from typing import Any

from configs.errors import InputError
from coordinator.center.core import Center
from data.manifests import ArtifactRef

__all__ = ["DEFAULT_BY", "champion", "challenger", "decorate", "known_lines", "line_of", "on_deployed",
           "overview", "release_stage", "site_aliases"]

#: Who moved an alias when no caller is known (the coordinator's own loops).
DEFAULT_BY = "coordinator"


def line_of(ref: str | ArtifactRef) -> tuple[str, str | None]:
    """(line, version) of a model reference: `model/NAME@V`, `NAME@V` or an ArtifactRef."""
    if isinstance(ref, str):
        text = ref.strip()
        if "/" in text:
            ref = ArtifactRef.parse(text)
        else:
            name, at, version = text.partition("@")
            ref = ArtifactRef("model", name, version if at else None)
    if ref.kind != "model":
        raise InputError(f'"{ref}" is not a model; a model line is a model artifact name.',
                         allowed="NAME@VERSION or model/NAME@VERSION")
    return ref.name, ref.version


def champion(center: Center, line: str, site: str) -> str | None:
    """The version of `line` that is champion at `site`, or None."""
    return center.lines.aliases(line, site).get(site, {}).get("champion")


def challenger(center: Center, line: str, site: str) -> str | None:
    """The version of `line` that is challenger at `site`, or None."""
    return center.lines.aliases(line, site).get(site, {}).get("challenger")


def site_aliases(center: Center, line: str, site: str) -> dict[str, str]:
    """`{alias: version}` of `line` at `site`."""
    return center.lines.aliases(line, site).get(site, {})


def on_deployed(center: Center, ref: str | ArtifactRef, site: str, *, by: str | None = None,
                why: str | None = None) -> dict[str, str]:
    """Record that `site` serves `ref` now: its version becomes the champion of its line there
    (previous <- the old champion). Other lines' aliases at the site stay as they are."""
    line, version = line_of(ref)
    if version is None:
        raise InputError(f"{ref} names no version; a served model always has one.")
    return center.lines.promote(line, site, version, by=by or DEFAULT_BY, why=why or "deploy")


def known_lines(center: Center) -> list[str]:
    """The lines of the platform file, then every other line with aliases or reports, each once."""
    return list(dict.fromkeys([*(line.name for line in center.config.lines), *center.lines.lines()]))


def release_stage(center: Center, line: str) -> dict[str, Any] | None:
    """`{"id", "version", "stage", "status", "sites": {site: state}}` of `line`'s active release
    (state: pending | shadowing | deployed | watching | released | rolled_back), or None (also while
    the releases part is not there)."""
    try:
        from coordinator.state.releases import Releases
    except ImportError:
        return None
    try:
        active = Releases(center.state).active(line)
    except Exception:  # noqa: BLE001 - a screen shows no stage rather than fail on a release row
        return None
    if not active:
        return None
    sites = (active.get("detail") or {}).get("sites") or {}
    return {**{k: active.get(k) for k in ("id", "version", "stage", "status")},
            "sites": {name: s.get("state") for name, s in sites.items() if isinstance(s, dict)}}


def overview(center: Center) -> dict[str, Any]:
    """What each site's lines stand at: `{"lines": [{"line", "release": stage|None,
    "sites": {site: {alias: version}}}], "sites": {site: [{"line", "champion", "challenger",
    "stage", "status", "site_state"}]}}` (a site lists the lines with a champion or challenger
    there, or in whose active release it takes part)."""
    out_lines: list[dict[str, Any]] = []
    by_site: dict[str, list[dict[str, Any]]] = {}
    for line in known_lines(center):
        stage = release_stage(center, line)
        aliases = center.lines.aliases(line)
        out_lines.append({"line": line, "release": stage, "sites": aliases})
        in_release = (stage or {}).get("sites") or {}
        for site in sorted(set(aliases) | set(in_release)):
            names = aliases.get(site, {})
            if names.get("champion") or names.get("challenger") or site in in_release:
                by_site.setdefault(site, []).append({
                    "line": line, "champion": names.get("champion"), "challenger": names.get("challenger"),
                    "stage": stage["stage"] if stage else None, "status": stage["status"] if stage else None,
                    "site_state": in_release.get(site)})
    return {"lines": out_lines, "sites": by_site}


def decorate(center: Center, body: dict[str, Any]) -> dict[str, Any]:
    """A monitoring overview (`Monitor.overview()`) with `lines` on each site (`[{"line",
    "champion", "challenger", "stage", "status"}]`) and at the top (`overview(center)["lines"]`):
    what the big screen and `adcp top` show of the model lines. Returns `body`."""
    view = overview(center)
    for site in body.get("sites") or []:
        site["lines"] = view["sites"].get(site.get("name"), [])
    body["lines"] = view["lines"]
    return body
