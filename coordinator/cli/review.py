"""`adcp review queue|sync|conflicts|token`: a site's review queue, pulling verdicts back to the
center, the images reviewers disagree on, and a station token to log in with.

A thin click layer over the coordinator's /api/v1/review routes (`ctx.client`); readable tables
by default, `--json` for scripts. `coordinator.cli.main` calls `add_commands(cli)`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click
from rich.table import Column, Table

from coordinator.cli.context import console, err_console, json_option, print_json, timeout_option, wide_option
from coordinator.cli.output import follow_task

if TYPE_CHECKING:
    from coordinator.cli.context import Context

__all__ = ["add_commands", "review"]


@click.group("review")
def review() -> None:
    """The review queues at the sites and the verdicts their reviewers give."""


@review.command("queue")
@click.option("--site", required=True, help="The site whose review queue to show.")
@click.option("--state", type=click.Choice(["queued", "claimed", "done"]), default=None,
              help="Only items in this state (default: all).")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True, help="Items to show.")
@wide_option
@json_option
@click.pass_obj
def review_queue(ctx: Context, site: str, state: str | None, limit: int, wide: bool, as_json: bool) -> None:
    """The items of SITE's review queue: what the model said, why it was queued, its state."""
    params: dict[str, Any] = {"site": site, "limit": limit}
    if state:
        params["state"] = state
    items = ctx.client.call("GET", "/review/queue", params=params)["items"]
    if as_json:
        return print_json(items)
    columns = [Column("id", no_wrap=True), "state", "decision", "why", Column("model", overflow="fold"),
               Column("class", overflow="fold"), "conf"]
    if wide:
        columns += [Column("product", overflow="fold"), Column("AOI", overflow="fold"), Column("queued (UTC)")]
    table = Table(*columns, title=f"review queue at {site}: {len(items)} items")
    for it in items:
        row = [str(it.get("id", ""))[:8], str(it.get("state", "")), str(it.get("decision", "")),
               str(it.get("why", "")), str(it.get("model_version", "")), str(it.get("predicted", "")),
               f"{float(it.get('confidence') or 0):.2f}"]
        if wide:
            row += [str(it.get("product") or "-"), str(it.get("aoi_machine") or "-"),
                    str(it.get("created_at", ""))[:19].replace("T", " ")]
        table.add_row(*row)
    console.print(table)


@review.command("sync")
@click.option("--site", "sites", multiple=True, help="Pull from this site only (repeatable; default: every site).")
@timeout_option(600, "Seconds to wait for the sync")
@json_option
@click.pass_obj
def review_sync(ctx: Context, sites: tuple[str, ...], timeout_s: float, as_json: bool) -> None:
    """Pull new verdicts from the sites now and publish them per dataset line (annotations and
    reviewed images)."""
    body = {"sites": list(sites)} if sites else None
    task = ctx.client.call("POST", "/review/sync", json=body)
    task = follow_task(ctx.client, task, err_console, timeout_s=timeout_s, quiet=as_json)
    if task["state"] != "succeeded":
        raise click.ClickException(f"review sync failed: {task.get('error')}")
    result = task["result"]
    if as_json:
        return print_json(result)
    console.print(f"{result['verdicts_new']} new verdicts, {result.get('undos_new', 0)} undos; "
                  f"annotations {result.get('annotations') or '-'}, dataset {result.get('dataset') or '-'}; "
                  f"{result.get('conflicts', 0)} images with disagreeing verdicts", highlight=False, markup=False)
    table = Table("site", "synced", "new verdicts", "undos", "cursor", Column("error", overflow="fold"))
    for r in result["sites"]:
        table.add_row(r["site"], "yes" if r["ok"] else "NO", str(r["verdicts_new"]), str(r["undos_new"]),
                      str(r["last_seq"]), r.get("error") or "")
    console.print(table)
    for line in result.get("lines") or []:
        if line.get("error"):
            err_console.print(f"line {line['dataset_line'] or '(none)'} not published: {line['error']}",
                              highlight=False, markup=False)


@review.command("conflicts")
@json_option
@click.pass_obj
def review_conflicts(ctx: Context, as_json: bool) -> None:
    """Images whose reviewers disagree: every verdict, the label the rule resolved, the rule used."""
    rows = ctx.client.call("GET", "/review/conflicts")["conflicts"]
    if as_json:
        return print_json(rows)
    table = Table(Column("image", no_wrap=True), Column("line", overflow="fold"), "label", "rule",
                  Column("verdicts", overflow="fold"), title=f"{len(rows)} images with disagreeing verdicts")
    for c in rows:
        verdicts = "; ".join(f"{v['label']} by {v['reviewer']} ({v['role']}, {v['site']})" for v in c["verdicts"])
        table.add_row(c["image"][:12], c["dataset"] or "-", c["label"] or "-", c["rule"] or "-", verdicts)
    console.print(table)


@review.command("token")
@click.option("--site", required=True, help="The site whose review station the token is for.")
@json_option
@click.pass_obj
def review_token(ctx: Context, site: str, as_json: bool) -> None:
    """A station token to log in at SITE's review station (valid 12 hours)."""
    data = ctx.client.call("POST", "/review/station-token", json={"site": site})
    if as_json:
        return print_json(data)
    err_console.print(f"station token for {data['user']} ({data['role']}, sites {', '.join(data['sites'])}), "
                      f"valid until {data['expires_at']}:", highlight=False, markup=False)
    click.echo(data["token"])


def add_commands(cli: click.Group) -> None:
    cli.add_command(review)
