"""`adcp data import SRC --name N`: a factory's images into the central store, through the
coordinator (which reads SRC itself and runs the import as a task this command follows with a
progress bar of files checked)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from configs.errors import AdcpError, InputError
from coordinator.cli.context import (
    Context,
    console,
    err_console,
    fmt_bytes,
    json_option,
    pass_ctx,
    print_json,
    timeout_option,
)

__all__ = ["data_import"]

#: Refused files listed in the human output (all of them are in --json).
_SHOW_REJECTED = 10


def _where(text: str) -> str:
    """A URL as given; a path that exists here made absolute (the coordinator on this host then
    finds it; on another host give a path there or an s3:// URL)."""
    if "://" in text:
        return text
    path = Path(text).expanduser()
    return str(path.resolve()) if path.exists() else text


def _options(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise InputError(f"Got {text!r} for --storage-options.", allowed='a JSON object, e.g. {"anon": true}')
    return value


@click.command("import")
@click.argument("src")
@click.option("--name", required=True, help="Dataset name; published as NAME@<next version> (and annotations/NAME).")
@click.option("--labels", default=None,
              help="CSV or Parquet manifest (path,label[,product,lot,panel_id,aoi_machine,captured_at]); default: "
              "manifest.csv, labels.csv or *.parquet at SRC's root, else a folder per class, else unlabelled.")
@click.option("--storage-options", "storage_options", default=None,
              help='fsspec options for SRC as JSON (e.g. {"endpoint_url": "http://minio:9000"}).')
@click.option("--detach", is_flag=True, help="Print the task id and return; re-attach with `adcp attach ID`.")
@timeout_option(6 * 3600)
@json_option
@pass_ctx
def data_import(ctx: Context, src: str, name: str, labels: str | None, storage_options: str | None, detach: bool,
                timeout_s: float, as_json: bool) -> None:
    """Import a factory's images (PNG, JPEG, BMP, TIFF; 8 or 16 bit) from SRC as a dataset plus
    annotations. SRC is read BY THE COORDINATOR: a folder on the coordinator's host (a path that
    exists here is sent as an absolute path) or any fsspec URL such as s3://bucket/prefix.
    Files that cannot be used are listed with the reason; the rest are published."""
    body = {"source": _where(src), "name": name, "labels": _where(labels) if labels else None,
            "storage_options": _options(storage_options), "wait": False}
    task = ctx.client.call("POST", "/datasets/import", json=body)
    if detach:
        return print_json(task) if as_json else console.print(f"import {escape(name)}: task {task['id']}")
    task = _follow(ctx, task, name, timeout_s)
    if task["state"] != "succeeded":
        raise AdcpError(task.get("error") or f"import task {task['id']} {task['state']}")
    report = task["result"]
    if as_json:
        return print_json(report)
    _print(report)


def _follow(ctx: Context, task: dict[str, Any], name: str, timeout_s: float) -> dict[str, Any]:
    key = f"import {name}"
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("files"),
                  TimeElapsedColumn(), console=err_console, transient=True) as bar:
        shown = bar.add_task(f"import {name}", total=None)

        def update(t: dict[str, Any]) -> None:
            p = t.get("progress", {}).get(key)
            if p:
                bar.update(shown, completed=p["objects_done"], total=p["objects_total"] or None)

        update(task)
        if task["state"] != "running":
            return task
        return ctx.client.wait_task(task["id"], timeout_s=timeout_s, on_update=update)


def _print(report: dict[str, Any]) -> None:
    if report["changed"]:
        console.print(f"dataset [cyan]{escape(report['dataset'])}[/]: {report['images']} images "
                      f"({report['new']} new, {report['unchanged']} unchanged), {fmt_bytes(report['bytes'])}"
                      + (f", annotations {escape(report['annotations'])}" if report.get("annotations") else ""))
    else:
        console.print(f"nothing changed: dataset [cyan]{escape(report['dataset'])}[/] already holds these "
                      f"{report['images']} images")
    rejected = report["rejected"]
    if rejected:
        err_console.print(f"[yellow]{len(rejected)} files refused[/]:")
        for r in rejected[:_SHOW_REJECTED]:
            err_console.print(f"  {escape(r['path'])}: {escape(r['reason'])}", highlight=False)
        if len(rejected) > _SHOW_REJECTED:
            err_console.print(f"  ... and {len(rejected) - _SHOW_REJECTED} more (see --json)")
