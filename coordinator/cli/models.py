"""`adcp model list|deploy|rollback` and `adcp classify`: what each site serves, rollouts and
rollbacks (run by the coordinator, one at a time per site), and classification through a site's
gateway."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Column, Table

from configs.errors import AdcpError, InputError, NotFoundError
from coordinator.cli.context import (
    Context,
    console,
    err_console,
    fmt_bytes,
    json_option,
    pass_ctx,
    print_json,
    split_names,
    timeout_option,
)
from coordinator.cli.lines import aliases_text, model_history
from coordinator.cli.output import follow_task
from coordinator.cli.release import model_approve
from coordinator.cli.retrain import model_retrain

__all__ = ["add_commands", "model"]


def _replicas_option(f):
    return click.option("--replicas", type=click.IntRange(1, 1000), default=None,
                        help="Serve replicas per site (default: the serve defaults).")(f)


@click.group("model")
def model() -> None:
    """Models: what each site serves, rollouts to sites' Serve apps, rollbacks."""


@model.command("list")
@json_option
@pass_ctx
def model_list(ctx: Context, as_json: bool) -> None:
    """Models in the central store, which sites serve each now, and its aliases per site."""
    rows = ctx.client.call("GET", "/models")
    if as_json:
        return print_json(rows)
    table = Table(Column("model", overflow="fold"), "size", Column("metrics", overflow="fold"), "serving at",
                  Column("aliases", overflow="fold"))
    for r in rows:
        metrics = ", ".join(f"{k} {v:.3f}" for k, v in r["metrics"].items() if isinstance(v, float) and k in
                            ("accuracy", "automation_rate", "auto_precision", "escape_rate"))
        table.add_row(escape(r["ref"]), fmt_bytes(r["bytes"]), metrics or "-",
                      escape(", ".join(r["serving_at"]) or "-"), escape(aliases_text(r.get("aliases") or {}) or "-"))
    console.print(table)


def _print_rows(rows: list[dict[str, Any]]) -> None:
    table = Table(Column("site", no_wrap=True), Column("model", overflow="fold"), Column("previous", overflow="fold"),
                  "status", "s to serve")
    for r in rows:
        table.add_row(escape(r["site"]), escape(r["model"]), escape(r["previous"] or "-"),
                      r["status"] if r["status"] == "serving" else f"[red]{r['status']}[/]",
                      f"{r['seconds']:.2f}" if r["seconds"] is not None else "-")
    console.print(table)
    for r in rows:
        if r.get("error"):
            console.print(f"{escape(r['site'])}: {escape(r['error'])}", soft_wrap=True)


def _run(ctx: Context, path: str, body: dict[str, Any], as_json: bool, timeout_s: float, *,
         single: bool = False) -> None:
    """Start a rollout task; follow it; print every site's row (also when some failed)."""
    task = ctx.client.call("POST", path, params={"wait": "false"}, json=body)
    task = follow_task(ctx.client, task, err_console, timeout_s=timeout_s + 30, quiet=as_json)
    rows = task.get("result") or []
    if rows:
        print_json(rows[0] if single else rows) if as_json else _print_rows(rows)
    if task["state"] != "succeeded":
        raise AdcpError(task.get("error") or f"task {task['id']} {task['state']}")


@model.command("deploy")
@click.argument("model_ref", metavar="NAME@VERSION")
@click.option("--to", "to", required=True, help="Sites, comma-separated.")
@_replicas_option
@click.option("--shadow", "shadow", metavar="NAME@VERSION", default=None,
              help="A challenger run beside the model on a share of the images; callers get the model's answers.")
@click.option("--shadow-rate", "shadow_rate", type=click.FloatRange(0, 1), default=None,
              help="Share of images the shadow also classifies (default 0.1).")
@timeout_option(240, "Seconds to wait per site for the new version to answer")
@json_option
@pass_ctx
def model_deploy(ctx: Context, model_ref: str, to: str, replicas: int | None, shadow: str | None,
                 shadow_rate: float | None, timeout_s: float, as_json: bool) -> None:
    """Roll NAME@VERSION (or model/NAME@VERSION) out to sites' Serve apps, all at once; print per
    site the seconds from this command to the new version answering."""
    if shadow_rate is not None and not shadow:
        raise click.UsageError("--shadow-rate needs --shadow NAME@VERSION.")
    sites = split_names(to)
    if not sites:
        raise click.UsageError("--to needs at least one site name.")
    kind, slash, ref = model_ref.rpartition("/")
    if slash and kind != "model":
        raise InputError(f'Got "{model_ref}"; only models are rolled out to Serve apps.',
                         allowed="NAME@VERSION or model/NAME@VERSION")
    name, _, version = ref.partition("@")
    if not name or not version:
        raise InputError(f'"{model_ref}" does not name a model version.', allowed="NAME@VERSION or model/NAME@VERSION",
                         hint="See `adcp model list`.")
    body = {"to": sites, "timeout_s": timeout_s, **({"replicas": replicas} if replicas else {})}
    if shadow:
        body.update(shadow=shadow, **({"shadow_rate": shadow_rate} if shadow_rate is not None else {}))
    _run(ctx, f"/models/{name}/{version}/deploy", body, as_json, timeout_s)


@model.command("rollback")
@click.option("--site", "site", required=True, help="The site whose Serve app goes back to its previous model.")
@_replicas_option
@timeout_option(240, "Seconds to wait for the previous version to answer")
@click.option("--why", "why", default=None, help="The reason, recorded with the alias moves.")
@json_option
@pass_ctx
def model_rollback(ctx: Context, site: str, replicas: int | None, timeout_s: float, why: str | None,
                   as_json: bool) -> None:
    """Redeploy the model a site served before its current one (its line's champion goes back to previous)."""
    body = {"timeout_s": timeout_s, **({"replicas": replicas} if replicas else {}), **({"why": why} if why else {})}
    _run(ctx, f"/sites/{site}/rollback", body, as_json, timeout_s, single=True)


@click.command("classify")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--site", "site", required=True, help="The site whose ADC app classifies them.")
@json_option
@pass_ctx
def classify(ctx: Context, images: tuple[Path, ...], site: str, as_json: bool) -> None:
    """Classify image files at a site's ADC app, through the coordinator and the site gateway."""
    missing = [str(p) for p in images if not Path(p).is_file()]
    if missing:
        raise NotFoundError(f"No such image file: {', '.join(missing[:5])}.")
    results: list[dict[str, Any]] = []
    paths = list(images)
    for i in range(0, len(paths), 64):
        part = paths[i:i + 64]
        files = [("files", (p.name, p.read_bytes(), "application/octet-stream")) for p in part]
        answer = ctx.client.call("POST", f"/sites/{site}/classify", files=files)
        results += [{"file": str(p), **r} for p, r in zip(part, answer["results"])]
    if as_json:
        return print_json(results)
    table = Table(Column("file", overflow="fold"), "class", "conf", "decision", Column("model", overflow="fold"))
    for r in results:
        table.add_row(escape(r["file"]), r["class"], f"{r['confidence']:.3f}", r["decision"],
                      escape(r["model_version"]))
    console.print(table)


model.add_command(model_history)
model.add_command(model_retrain)
model.add_command(model_approve)


def add_commands(cli: click.Group) -> None:
    cli.add_command(model)
    cli.add_command(classify)
