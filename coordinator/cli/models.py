"""`adcp model ...`: list models and what each site serves, roll a model out to sites, roll back.

A thin click layer over `coordinator.jobs.rollout`. `coordinator.cli.main` adds this group at its end, so
this module takes nothing from it at import time: the shared console and JSON printer are looked
up when a command runs, and the CLI's `Context` arrives as the click context's object.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from configs.errors import SiteError
from coordinator.jobs import rollout

if TYPE_CHECKING:
    from coordinator.cli.main import Context

__all__ = ["model"]


def _json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")(f)


def _replicas_option(f):
    return click.option("--replicas", type=click.IntRange(1, 1000), default=None,
                        help="Serve replicas per site (default: the serve defaults).")(f)


def _timeout_option(f):
    return click.option("--timeout", "timeout_s", type=click.FloatRange(min=1), default=240, show_default=True,
                        help="Seconds to wait per site for the new version to answer.")(f)


def _serve_cfg(ctx: Context, replicas: int | None):
    cfg = ctx.defaults.serve
    return cfg if replicas is None else cfg.model_copy(update={"num_replicas": replicas})


@click.group("model")
def model() -> None:
    """Models: what each site serves, rollouts to sites' Serve apps, rollbacks."""


@model.command("list")
@_json_option
@click.pass_obj
def model_list(ctx: Context, as_json: bool) -> None:
    """Models in the central store, and which sites serve each now."""
    from rich.table import Table

    from coordinator.cli.main import _bytes, _print_json, console

    rows = rollout.list_models(ctx.center)
    served = rollout.served_models(ctx.center)
    if as_json:
        return _print_json(rows)
    table = Table("model", "size", "created", "metrics", "serving at")
    for r in rows:
        metrics = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in r["metrics"].items())
        table.add_row(r["ref"], _bytes(r["bytes"]), r["created"], metrics or "-", ", ".join(r["serving_at"]) or "-")
    console.print(table)
    console.print("sites: " + (", ".join(f"{s} {m or '(nothing rolled out)'}" for s, m in served.items()) or "none"))


def _print_rows(rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    from coordinator.cli.main import console

    table = Table("site", "model", "previous", "status", "seconds to serving")
    for r in rows:
        table.add_row(r["site"], r["model"], r["previous"] or "-",
                      r["status"] if r["status"] == "serving" else f"[red]{r['status']}[/]",
                      f"{r['seconds']:.2f}" if r["seconds"] is not None else "-")
    console.print(table)


def _run(as_json: bool, call, *, single: bool = False) -> None:
    """Run a rollout; print every site's row (also when some failed), then fail with one line.
    With `single`, JSON is the one site's object rather than a list."""
    from coordinator.cli.main import _print_json, err_console

    def event(site: str, message: str) -> None:
        if not as_json:
            err_console.print(f"{site}: {message}", highlight=False)

    try:
        rows = call(event)
    except SiteError as e:
        rows = e.details.get("results")
        if rows:
            _print_json(rows[0] if single else rows) if as_json else _print_rows(rows)
        raise
    _print_json(rows[0] if single else rows) if as_json else _print_rows(rows)


@model.command("deploy")
@click.argument("model_ref", metavar="NAME@VERSION")
@click.option("--to", "to", required=True, help="Sites, comma-separated.")
@_replicas_option
@_timeout_option
@_json_option
@click.pass_obj
def model_deploy(ctx: Context, model_ref: str, to: str, replicas: int | None, timeout_s: float, as_json: bool) -> None:
    """Roll NAME@VERSION (or model/NAME@VERSION) out to sites' Serve apps, all at once; print per
    site the seconds from this command to the new version answering."""
    sites = [s.strip() for s in to.split(",") if s.strip()]
    if not sites:
        raise click.UsageError("--to needs at least one site name.")
    cfg = _serve_cfg(ctx, replicas)
    _run(as_json, lambda event: rollout.deploy(ctx.center, model_ref, sites, cfg, timeout_s=timeout_s,
                                               on_event=event))


@model.command("rollback")
@click.option("--site", "site", required=True, help="The site whose Serve app goes back to its previous model.")
@_replicas_option
@_timeout_option
@_json_option
@click.pass_obj
def model_rollback(ctx: Context, site: str, replicas: int | None, timeout_s: float, as_json: bool) -> None:
    """Redeploy the model a site served before its current one."""
    cfg = _serve_cfg(ctx, replicas)
    _run(as_json, lambda event: [rollout.rollback(ctx.center, site, cfg, timeout_s=timeout_s, on_event=event)],
         single=True)
