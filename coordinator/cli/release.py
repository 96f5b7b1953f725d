"""`adcp release start LINE@V`, `adcp release status LINE` and `adcp model approve LINE@V`: staged
releases of a model line (gate, shadow, canary and its watch window, then the waves), run by the
coordinator (`/api/v1/releases`). `status` shows where each site stands: its stage, what it serves,
its champion and challenger, the watch figures against the line's limits, and why a release stopped.
`coordinator.cli.main` calls `add_commands(cli)`; `coordinator.cli.models` adds `model_approve`.
"""

from __future__ import annotations

from typing import Any

import click
from rich.markup import escape
from rich.table import Column, Table

from configs.errors import InputError
from coordinator.cli.context import Context, console, json_option, pass_ctx, print_json

__all__ = ["add_commands", "model_approve", "release", "release_table"]

#: figure -> (limit field, how to show a value)
_FIGURES = {"review_share": ("max_review_share", "{:.1%}"), "error_rate": ("max_error_rate", "{:.2%}"),
            "latency_p99_ms": ("max_p99_ms", "{:.0f} ms"), "escape_rate": ("max_escape_rate", "{:.2%}")}


def _line_version(text: str) -> tuple[str, str]:
    line, at, version = (text or "").strip().partition("@")
    if not line or not at or not version:
        raise InputError(f'"{text}" does not name a version of a model line.', allowed="LINE@VERSION",
                         hint="For example adc-aoi@4.")
    return line, version


def _watch_cell(watch: dict[str, Any] | None) -> str:
    """`review_share 12.0% ≤ 50.0%, ...` with crossed figures in red; `-` before any figures."""
    if not watch:
        return "-"
    limits, crossed = watch.get("limits") or {}, {c["figure"] for c in watch.get("crossed") or []}
    parts = [f"{watch.get('requests', 0)} req"]
    for figure, (key, fmt) in _FIGURES.items():
        value, limit = watch.get(figure), limits.get(key)
        if value is None:
            continue
        shown = f"{figure} {fmt.format(value)}" + (f" / {fmt.format(limit)}" if limit is not None else "")
        parts.append(f"[red]{shown}[/]" if figure in crossed else shown)
    return ", ".join(parts)


def release_table(body: dict[str, Any]) -> Table:
    """A rich Table of a release (GET /releases/{id}): a row per site."""
    title = (f"{body['line']}@{body['version']}  {body['stage']}  {body['status']}  "
             f"(release {body['id']}, by {body['by']})")
    table = Table("site", "stage", "state", Column("serving", overflow="fold"), "champion", "challenger",
                  Column("watch (figure / limit)", overflow="fold"), Column("why", overflow="fold"),
                  title=escape(title), caption=escape(str(body["detail"].get("why") or "")))
    for s in body["sites"]:
        table.add_row(escape(s["site"]), s["stage"], s["state"], escape(s["serving"] or "-"), s["champion"] or "-",
                      s["challenger"] or "-", _watch_cell(s.get("watch")), escape(s.get("why") or ""))
    return table


@click.group("release")
def release() -> None:
    """Staged releases of a model line: gate, shadow, canary, waves, with automatic rollback."""


@release.command("start")
@click.argument("line_version", metavar="LINE@VERSION")
@json_option
@pass_ctx
def release_start(ctx: Context, line_version: str, as_json: bool) -> None:
    """Start releasing LINE@VERSION by the line's plan in the platform file."""
    line, version = _line_version(line_version)
    body = ctx.client.call("POST", "/releases", json={"line": line, "version": version})
    if as_json:
        return print_json(body)
    console.print(f"release {body['id']} of {escape(line)}@{escape(version)} started at stage {body['stage']}; "
                  f"follow it with `adcp release status {escape(line)}`")
    return None


@release.command("status")
@click.argument("line")
@json_option
@pass_ctx
def release_status(ctx: Context, line: str, as_json: bool) -> None:
    """Where the line's newest release stands, site by site."""
    rows = ctx.client.call("GET", "/releases", params={"line": line, "limit": 1})
    if not rows:
        if as_json:
            return print_json(None)
        console.print(f"Line {escape(line)} has no release.")
        return None
    body = ctx.client.call("GET", f"/releases/{rows[0]['id']}")
    if as_json:
        return print_json(body)
    console.print(release_table(body))
    return None


@click.command("approve")
@click.argument("line_version", metavar="LINE@VERSION")
@json_option
@pass_ctx
def model_approve(ctx: Context, line_version: str, as_json: bool) -> None:
    """Let the release of LINE@VERSION through the approval it waits at (engineer)."""
    line, version = _line_version(line_version)
    body = ctx.client.call("POST", f"/models/{line}/{version}/approve")
    if as_json:
        return print_json(body)
    console.print(f"approved: release {body['id']} of {escape(line)}@{escape(version)} goes on "
                  f"({body['stage']}, {body['status']})")
    return None


def add_commands(cli: click.Group) -> None:
    """Add `release` to `cli`."""
    cli.add_command(release)
