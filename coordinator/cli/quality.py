"""`adcp quality [--site S] [--json]`: production quality per site, product and model version,
measured from the human verdicts at the sites (`GET /api/v1/quality`). `--json` prints exactly the
API's answer; the table shows each rate with the counts behind it ("0.37 % (3/812)").
`coordinator.cli.main` calls `add_commands(cli)` at its end.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from coordinator.cli.context import console, json_option, print_json

if TYPE_CHECKING:
    from coordinator.cli.context import Context

__all__ = ["add_commands", "age", "quality_cmd", "quality_table", "rate"]


def rate(value: float | None, part: int, whole: int) -> str:
    """A rate with its counts, "0.37 % (3/812)" (two decimals under 10 %, one above); "- (0/0)"
    when nothing is behind it."""
    shown = "-" if value is None else f"{100 * value:.{2 if value < 0.1 else 1}f} %"
    return f"{shown} ({part}/{whole})"


def age(seconds: float | None) -> str:
    """An age for people: 45 s, 12 min, 3.5 h, 2.0 d."""
    if not seconds:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _cells(f: dict[str, Any]) -> list[str]:
    backlog = f"{f['backlog']} ({age(f['oldest_age_s'])})" if f["backlog"] else "0"
    return [rate(f["automation_rate"], f["automatic"], f["classified"]),
            rate(f["escape_rate"], f["escapes"], f["audited_false_defect"]),
            rate(f["overkill_rate"], f["overkill"], f["audited_defect"]), backlog]


def quality_table(body: dict[str, Any]) -> Any:
    """A rich Table: a row per site (its display name, stale ones marked), then a row per product
    and model version under it; the rate columns never wrap, so an 80-column terminal folds only
    the names."""
    from rich import box
    from rich.markup import escape
    from rich.table import Column, Table

    figures = [Column(h, no_wrap=True) for h in ("automation", "escape", "overkill", "backlog")]
    table = Table(Column("site / product · model", overflow="fold", min_width=10), *figures, box=box.SIMPLE_HEAD,
                  pad_edge=False,
                  title="Production quality (from the review verdicts)",
                  caption="escape: audited automatic false_defect calls a human called a defect; overkill: "
                          "audited automatic defect calls a human called false; backlog: waiting (oldest)"
                          + "".join(f"\nSTALE {s['site']}: {s.get('error') or 'not read'} (its last figures)"
                                    for s in body["sites"] if s["stale"]))
    for s in body["sites"]:
        name = s["site"] if s["display_name"] == s["site"] else f"{s['display_name']} ({s['site']})"
        state = " [yellow]STALE[/]" if s["stale"] else ""
        table.add_row(f"[bold]{escape(name)}[/]{state}", *_cells(s))
        for g in s.get("by", []):
            product = g.get("product_display_name") or g["product"] or "(no product)"
            table.add_row(f"  {escape(product)} · {escape(g['model_version'] or '-')}", *_cells(g))
    return table


@click.command("quality")
@click.option("--site", default=None, help="Only this site.")
@json_option
@click.pass_obj
def quality_cmd(ctx: Context, site: str | None, as_json: bool) -> None:
    """Automation, escape and overkill rates and the review backlog, per site, product and model
    version, with the counts behind each rate."""
    body = ctx.client.call("GET", "/quality", params={"site": site} if site else None)
    if as_json:
        return print_json(body)
    if not body["sites"]:
        console.print("No sites.")
        return None
    console.print(quality_table(body))
    return None


def add_commands(cli: click.Group) -> None:
    """Add `quality` to `cli`."""
    cli.add_command(quality_cmd)
