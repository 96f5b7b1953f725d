"""`adcp top` and `adcp logs`: every site's health and load in the terminal, and a site's Ray job or
Serve replica logs, read from the coordinator's monitoring API (its monitor has the history and
rates)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import click

from configs.errors import InputError

if TYPE_CHECKING:
    from coordinator.cli.context import Context

__all__ = ["add_commands", "logs_cmd", "new_lines", "top_cmd", "top_table"]

_TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
_HEALTH_STYLE = {"ok": "green", "warn": "yellow", "down": "bold red"}


def _fmt(value: Any, unit: str = "", scale: float = 1.0, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value / scale:.{digits}f}{unit}"


def _quality_cells(q: dict[str, Any] | None, wide: bool) -> list[str]:
    """Escape rate and review backlog of a site's quality summary (`GET /api/v1/quality`), with the
    counts behind them when `wide`; "-" where the site has none."""
    from coordinator.cli.quality import age, rate

    if not q:
        return ["-", "-"]
    if wide:
        escape = rate(q["escape_rate"], q["escapes"], q["audited_false_defect"])
        backlog = f"{q['backlog']} ({age(q['oldest_age_s'])})" if q["backlog"] else "0"
    else:
        escape = _fmt(q["escape_rate"], "%", 0.01, 1)
        backlog = str(q["backlog"])
    return [escape + ("?" if q.get("stale") else ""), backlog]


def _model_cell(lines: list[dict[str, Any]] | None, wide: bool) -> str:
    """Each model line at a site as `line@champion` (only the version without `wide`),
    `→challenger` when one is set, and with `wide` the stage of the line's release ("-" where the
    site has no line's champion or challenger)."""
    parts = []
    for entry in lines or []:
        text = (f"{entry['line']}@" if wide else "") + (entry.get("champion") or "-")
        if entry.get("challenger"):
            text += f"→{entry['challenger']}"
        if wide and entry.get("stage"):
            text += f" ({entry['stage']}" + (f" · {entry['site_state']}" if entry.get("site_state") else "") + ")"
        parts.append(text)
    return ", ".join(parts) or "-"


def top_table(overview: dict[str, Any], wide: bool = False) -> Any:
    """A rich Table of every site (worst health first) with the totals in its caption; without
    `wide` only the columns that fit an 80-column terminal. `auto` is the automation rate measured
    from the review stats where the site has them, else from the ADC app's answers; `escape` and
    `backlog` come from the review stats ("?": stale, the site's last figures); `model` is each
    model line's champion there (→ its challenger; without `wide` only when a site has a line, and
    then with lighter borders, to stay within 80 columns)."""
    from rich import box
    from rich.markup import escape
    from rich.table import Column, Table

    t = overview["totals"]
    cols = [Column("site", no_wrap=True, max_width=18, overflow="ellipsis"), Column("health", no_wrap=True),
            "CPU", "mem", "jobs", "req/s", "auto", "escape", "backlog", Column("model", overflow="fold")]
    with_model = wide or any(s.get("lines") for s in overview["sites"])
    if not with_model:
        cols.pop()
    if wide:
        cols[4:4] = ["disk", "net in/out", "GPU"]
        cols.insert(-5, "serve")
    style: dict[str, Any] = {} if wide or not with_model else {"box": box.SIMPLE_HEAD, "pad_edge": False,
                                                                        "show_edge": False, "collapse_padding": True}
    table = Table(*cols, **style, title=f"ADC Platform: {t['up']}/{t['sites']} sites up, {t['alerts_active']} alerts",
                  caption=f"{t['jobs_running']} jobs running, {t['inference_rps']:.1f} req/s, "
                          f"{t['images_total']} images classified; at {overview['generated_at']}")
    order = {"down": 0, "warn": 1, "ok": 2}
    for s in sorted(overview["sites"], key=lambda s: (order.get(s["health"], 0), s["name"])):
        v = s["latest"]
        total = _fmt(v.get("mem_total"), " GiB", 2**30, 1) if wide else _fmt(v.get("mem_total"), "G", 2**30, 0)
        mem = f"{_fmt(v.get('mem_used'), '', 2**30, 1)}/{total}"
        net = f"{_fmt(v.get('net_rx_bps'), '', 1e3, 0)}/{_fmt(v.get('net_tx_bps'), ' kB/s', 1e3, 0)}"
        health = s["health"] if s["reachable"] or not wide else f"{s['health']} ({escape((s['error'] or '')[:40])})"
        q = s.get("quality")
        automation = q["automation_rate"] if q and q.get("automation_rate") is not None else s.get("automation_rate")
        title = s.get("display_name")
        name = f"{title} {s['name']}" if wide and title not in (None, s["name"]) else s["name"]
        cells = [escape(name), f"[{_HEALTH_STYLE.get(s['health'], '')}]{health}[/]",
                 _fmt(v.get("cpu_util"), " %", digits=1), mem, str(s["jobs"]["running"]),
                 _fmt(v.get("inference_rps"), digits=1), _fmt(automation, " %", 0.01, 0),
                 *(escape(c) for c in _quality_cells(q, wide))]
        if with_model:
            cells.append(escape(_model_cell(s.get("lines"), wide)))
        if wide:
            cells[4:4] = [_fmt(v.get("disk_util"), " %", digits=0), net, _fmt(v.get("gpu_util"), " %", digits=0)]
            cells.insert(-5, escape(str(s["serve"].get("status", "-"))))
        table.add_row(*cells)
    return table


@click.command("top")
@click.option("--once", is_flag=True, help="Print one frame and exit.")
@click.option("--wide", "-w", is_flag=True, help="All columns (the default fits 80 columns).")
@click.option("--interval", type=float, default=None,
              help="Seconds between frames (default: the monitor's collection interval).")
@click.pass_obj
def top_cmd(ctx: Context, once: bool, wide: bool, interval: float | None) -> None:
    """A live view of every site's health and load (Ctrl-C to quit)."""
    from rich.live import Live

    from coordinator.cli.context import console

    if interval is not None and interval <= 0:
        raise click.UsageError(f"--interval must be positive; got {interval}.")
    try:
        overview = ctx.client.call("GET", "/overview")
        if once:
            console.print(top_table(overview, wide))
            return
        every = interval or float(overview.get("interval_s") or 5)
        with Live(top_table(overview, wide), console=console, screen=False, auto_refresh=False) as live:
            while True:
                time.sleep(every)  # the refresh period of a live view, not a wait on a condition
                live.update(top_table(ctx.client.call("GET", "/overview"), wide), refresh=True)
    except KeyboardInterrupt:
        pass


def new_lines(before: list[str], now: list[str]) -> list[str]:
    """The lines of the tail `now` that follow what the tail `before` already showed."""
    for k in range(min(len(before), len(now)), 0, -1):
        if before[-k:] == now[:k]:
            return now[k:]
    return now


@click.command("logs")
@click.option("--site", "site", required=True, help="The site.")
@click.option("--job", default=None, help="A Ray job (submission) id; default: the Serve replicas' logs.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines (until Ctrl-C, or the job ends).")
@click.option("--lines", "-n", type=int, default=200, show_default=True, help="Last lines to show.")
@click.option("--interval", type=float, default=1.0, show_default=True, help="Seconds between polls with --follow.")
@click.pass_obj
def logs_cmd(ctx: Context, site: str, job: str | None, follow: bool, lines: int, interval: float) -> None:
    """A site's Ray job log or Serve replica logs, through its gateway."""
    if lines < 1:
        raise InputError(f"Got {lines} for --lines.", allowed="a positive number")
    params: dict[str, Any] = {"lines": lines, **({"job": job} if job else {})}
    try:
        shown: list[str] = []
        while True:
            body = ctx.client.call("GET", f"/sites/{site}/logs", params=params)
            for line in new_lines(shown, body["lines"]):
                click.echo(line)
            shown = body["lines"]
            if not follow or body.get("status") in _TERMINAL:
                return
            time.sleep(interval)  # the poll period of a follow, which ends on Ctrl-C or the job's end
    except KeyboardInterrupt:
        pass


def add_commands(cli: click.Group) -> None:
    """Add `top` and `logs` to `cli`."""
    cli.add_command(top_cmd)
    cli.add_command(logs_cmd)
