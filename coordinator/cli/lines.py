"""`adcp model history LINE [--site S]`: a model line's versions with their aliases per site, the
gate, shadow and watch verdicts of each (one word, plus the figure that failed), and every move of
its aliases (when, site, alias, from -> to, who, why). A client of `GET /models/{line}/history`."""

from __future__ import annotations

from typing import Any

import click
from rich.markup import escape
from rich.table import Column, Table

from coordinator.cli.context import Context, console, json_option, pass_ctx, print_json

__all__ = ["aliases_text", "model_history", "verdict"]


def _figure(report: dict[str, Any], name: str) -> Any:
    """The value of figure `name` in a report: the challenger's figures, the figures, or the report."""
    figures = report.get("figures") or {}
    if isinstance(figures.get("challenger"), dict) and name in figures["challenger"]:
        return figures["challenger"][name]
    if name in figures and not isinstance(figures[name], dict):
        return figures[name]
    return report.get(name)


def _num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def verdict(report: dict[str, Any] | None) -> str:
    """One word for a gate, shadow or watch report (pass | fail | ?; - without one), plus the first
    figure that failed and its value (and limit, when the report gives them)."""
    if not report:
        return "-"
    passed = report.get("passed")
    if passed is None and isinstance(report.get("verdict"), str):
        passed = {"pass": True, "passed": True, "fail": False, "failed": False}.get(report["verdict"].lower())
    failed = report.get("failed") or report.get("crossed") or []
    if passed is None and failed:
        passed = False
    word = "pass" if passed else ("fail" if passed is False else "?")
    if passed is not False:
        return word
    if failed:
        first = failed[0]
        if isinstance(first, dict):  # {"figure", "value", "limit"}
            name = str(first.get("figure", "?"))
            value, limit = first.get("value"), first.get("limit")
            text = name + (f" {_num(value)}" if value is not None else "")
            text += f" > {_num(limit)}" if limit is not None else ""
        else:
            value = _figure(report, str(first))
            text = str(first) + (f" {_num(value)}" if value is not None else "")
        return f"{word}: {text}" + (f" (+{len(failed) - 1})" if len(failed) > 1 else "")
    reasons = report.get("reasons") or ([report["why"]] if report.get("why") else [])
    return f"{word}: {str(reasons[0])[:60]}" if reasons else word


def aliases_text(per_site: dict[str, list[str]]) -> str:
    """`{"fab-a": ["champion"], "fab-b": ["previous"]}` as `fab-a champion, fab-b previous`."""
    return ", ".join(f"{site} {'/'.join(names)}" for site, names in sorted(per_site.items()) if names)


def _lineage(lineage: dict[str, Any]) -> str:
    keys = ("dataset", "annotations", "parent", "init_model", "trained_at", "site")
    return ", ".join(f"{k} {lineage[k]}" for k in keys if lineage.get(k)) or "-"


@click.command("history")
@click.argument("line")
@click.option("--site", "site", default=None, help="Only this site's aliases and moves.")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True, help="Moves, newest first.")
@json_option
@pass_ctx
def model_history(ctx: Context, line: str, site: str | None, limit: int, as_json: bool) -> None:
    """A model line: its versions (newest first) with their aliases per site, lineage and gate /
    shadow / watch verdicts, then every move of its aliases with who and why."""
    params: dict[str, Any] = {"limit": limit, **({"site": site} if site else {})}
    body = ctx.client.call("GET", f"/models/{line}/history", params=params)
    if as_json:
        return print_json(body)
    release = body.get("release")
    title = f"model line {line}" + (f" (release {release['version']}: {release['stage']}, {release['status']})"
                                    if release else "")
    versions = Table(Column("version", no_wrap=True), Column("aliases", overflow="fold"),
                     *(Column(k, no_wrap=True) for k in ("gate", "shadow", "watch")),
                     Column("lineage", overflow="fold"), title=escape(title))
    for v in body["versions"]:
        reports = v.get("reports") or {}
        versions.add_row(escape(v["version"]), escape(aliases_text(v.get("aliases") or {}) or "-"),
                         *(escape(verdict(reports.get(k))) for k in ("gate", "shadow", "watch")),
                         escape(_lineage(v.get("lineage") or {})))
    console.print(versions)
    moves = Table(Column("when", no_wrap=True), Column("site", no_wrap=True), "alias", "from -> to", "who",
                  Column("why", overflow="fold"), title="moves")
    for m in body["moves"]:
        moves.add_row(escape(m["at"][:19].replace("T", " ")), escape(m["site"]), escape(m["alias"]),
                      escape(f"{m['from_version'] or '-'} -> {m['to_version'] or '-'}"), escape(m["by"]),
                      escape(m["why"]))
    console.print(moves if body["moves"] else "no moves yet")
