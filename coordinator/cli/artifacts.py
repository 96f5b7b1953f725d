"""`adcp data synth|list`, `adcp upload`, `adcp push`, `adcp artifacts`, `adcp verify`,
`adcp transfers`, `adcp tasks`, `adcp attach`: artifacts in and between stores, all through the
coordinator (uploads stream to it; pushes and verifies run inside it as tasks)."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Column, Table

from configs.errors import AdcpError, InputError
from configs.loader import validate
from configs.models import SynthConfig
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
from coordinator.cli.output import follow_task, progress, transfer_progress
from coordinator.cli.upload import Upload

__all__ = ["add_commands", "parse_as"]

CENTER = "center"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_AS = re.compile(r"^(?P<kind>[a-z]+)/(?P<name>[a-z0-9][a-z0-9._-]{0,62})(@(?P<version>[A-Za-z0-9._-]{1,64}))?$")


def parse_as(text: str) -> tuple[str, str, str | None]:
    m = _AS.match(text or "")
    if not m:
        raise InputError(f'Got "{text}" for the artifact to create.', allowed="KIND/NAME[@VERSION], e.g. code/myjob@1")
    return m["kind"], m["name"], m["version"]


def _send(up: Upload, source: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Send `source` on upload `up` with a progress bar (on stderr); the committed artifact."""
    with transfer_progress(err_console) as bar:
        task = bar.add_task(f"upload {up.ref}", total=1, objects="0")

        def plan(nbytes: int, nobjects: int) -> None:
            bar.update(task, total=max(nbytes, 1), objects=f"0/{nobjects}", n=0, of=nobjects)

        def advance(nbytes: int, nobjects: int) -> None:
            t = bar.tasks[task]
            n = t.fields.get("n", 0) + nobjects
            bar.update(task, advance=nbytes, n=n, objects=f"{n}/{t.fields.get('of', '?')}")

        return up.send(source, on_plan=plan, on_progress=advance, meta=meta)


def _upload_as(ctx: Context, source: Path, as_ref: str) -> dict[str, Any]:
    """Upload a local file or folder as KIND/NAME[@VERSION]."""
    kind, name, version = parse_as(as_ref)
    return _send(Upload(ctx.client, kind, name, version), source, _meta_of(kind, source))


# --- data ---------------------------------------------------------------------------------------

@click.group("data")
def data() -> None:
    """Datasets of AOI images."""


@data.command("synth")
@click.option("--name", default=None, help="Dataset name; uploaded to the central store as NAME@<next version>.")
@click.option("--images", type=int, default=None, help="Number of images.")
@click.option("--size", type=int, default=None, help="Image side in pixels (64-256).")
@click.option("--seed", type=int, default=None, help="Random seed (same seed, same images).")
@click.option("--preview", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also write a labelled contact sheet PNG of samples per class.")
@json_option
@pass_ctx
def data_synth(ctx: Context, name, images, size, seed, preview, as_json) -> None:
    """Generate a synthetic AOI dataset here and upload it to the central store (and/or write a
    preview contact sheet)."""
    if not name and not preview:
        raise click.UsageError("Give --name NAME to make a dataset, --preview FILE for a contact sheet, or both.")
    if name and not _NAME.match(name):
        raise InputError(f'Got "{name}" for a new dataset name.',
                         allowed="a NAME of lower-case letters, digits, '.', '_' and '-'; "
                         "versions are numbered for you")
    overrides = {k: v for k, v in {"images": images, "size": size, "seed": seed}.items() if v is not None}
    cfg = validate(SynthConfig, {**ctx.defaults.synth.model_dump(), **overrides}, "synth options")
    out: dict[str, Any] = {}
    if preview:
        from data.preview import contact_sheet

        out["preview"] = str(contact_sheet(preview, seed=cfg.seed, size=cfg.size))
        if not as_json:
            console.print(f"contact sheet written to {out['preview']}")
    if name:
        from data.dataset import write_synthetic

        up = Upload(ctx.client, "dataset", name)
        with tempfile.TemporaryDirectory(prefix="adcp-synth-") as tmp:
            with progress(err_console, transient=True) as bar:
                task = bar.add_task(f"synthesise {name}@{up.version}", total=cfg.images)
                ds = write_synthetic(Path(tmp).as_uri(), cfg, name=name, version=up.version,
                                     on_progress=lambda n: bar.advance(task, n))
            m = ds.manifest
            meta = {"rows": m["rows"], "class_counts": m["class_counts"], "dataset_sha256": m["sha256"]}
            done = _send(up, Path(tmp), meta)
        out.update(dataset=ds.dataset_id, artifact=done["artifact"], rows=m["rows"], class_counts=m["class_counts"],
                   sha256=ds.sha256, bytes=done["bytes"], bytes_sent=done["bytes_sent"])
        if not as_json:
            console.print(f"dataset [cyan]{ds.dataset_id}[/] uploaded to the central store "
                          f"({fmt_bytes(done['bytes'])}, {fmt_bytes(done['bytes_sent'])} sent)")
            console.print(f"{m['rows']} images: {m['class_counts']}", highlight=False)
    if as_json:
        print_json(out)


@data.command("list")
@json_option
@pass_ctx
def data_list(ctx: Context, as_json: bool) -> None:
    """Datasets in the central store."""
    found: dict[str, list[str]] = {}
    for a in ctx.client.call("GET", "/artifacts", params={"kind": "dataset"}):
        found.setdefault(a["name"], []).append(a["version"])
    rows = [{"name": n, "versions": v} for n, v in sorted(found.items())]
    if as_json:
        return print_json(rows)
    for row in rows:
        console.print(f"{row['name']}: {', '.join(row['versions'])}", highlight=False)


# --- upload, push -------------------------------------------------------------------------------

def _meta_of(kind: str, source: Path) -> dict[str, Any]:
    """The manifest meta of an upload: where it came from, and for an exported model folder what
    `adcp model list` shows (model id, validation metrics, lineage) from its metadata.json."""
    meta: dict[str, Any] = {"uploaded_from": source.name}
    if kind == "model" and (source / "metadata.json").is_file():
        from data.model_format import read_metadata

        m = read_metadata(str(source))
        meta.update(model_id=m.model_id, metrics=m.metrics.get("val", {}), lineage=m.lineage)
    return meta


@click.command("upload")
@click.argument("source", type=click.Path(path_type=Path, exists=True))
@click.option("--as", "as_ref", required=True,
              help="KIND/NAME[@VERSION] to publish it as (default version: next number).")
@json_option
@pass_ctx
def upload(ctx: Context, source: Path, as_ref: str, as_json: bool) -> None:
    """Upload a local file or folder to the central store as an artifact (resumable, verified)."""
    done = _upload_as(ctx, source, as_ref)
    if as_json:
        return print_json(done)
    console.print(f"{done['artifact']}: {done['objects']} objects, {fmt_bytes(done['bytes'])} "
                  f"({fmt_bytes(done['bytes_sent'])} sent)", highlight=False)


@click.command("push")
@click.argument("artifact")
@click.option("--to", "to", required=True, help="Destination sites, comma-separated.")
@click.option("--as", "as_ref", default=None,
              help="ARTIFACT is a local file or folder: upload it first as KIND/NAME[@VERSION].")
@click.option("--from", "source", default=CENTER, show_default=True, help="'center' or a site name.")
@click.option("--verify-existing", is_flag=True, help="Rehash objects already at the destination too.")
@click.option("--max-mbps", type=float, default=None, help="Bandwidth cap per destination, MB/s.")
@click.option("--detach", is_flag=True, help="Print the task id and return; re-attach with `adcp attach ID`.")
@timeout_option(3600)
@json_option
@pass_ctx
def push(ctx: Context, artifact: str, to: str, as_ref: str | None, source: str, verify_existing: bool,
         max_mbps: float | None, detach: bool, timeout_s: float, as_json: bool) -> None:
    """Copy KIND/NAME[@VERSION] to sites: verified, resumable, sending only what is missing.
    The coordinator does the work; this command shows its progress."""
    if as_ref:
        path = Path(artifact)
        if not path.exists():
            raise InputError(f"No such file or folder: {artifact}.", hint="--as uploads a local file or folder first.")
        artifact = _upload_as(ctx, path, as_ref)["artifact"]
    body = {"artifact": artifact, "to": split_names(to), "source": source, "verify_existing": verify_existing,
            **({"max_mbps": max_mbps} if max_mbps else {})}
    started = ctx.client.call("POST", "/transfers", json=body)
    if detach:
        return print_json(started) if as_json else console.print(f"push {started['ref']}: task {started['task_id']}")
    task = follow_task(ctx.client, ctx.client.call("GET", f"/tasks/{started['task_id']}"), err_console,
                       timeout_s=timeout_s, quiet=True)
    _push_result(task, as_json)


def _push_result(task: dict[str, Any], as_json: bool) -> None:
    rows = task.get("result") or []
    if as_json:
        print_json(rows)
    elif rows:
        table = Table(Column("site", no_wrap=True), "how", "sent", "skipped", "verified", "s")
        for r in rows:
            table.add_row(escape(r["site"]), r["direction"], fmt_bytes(r["bytes_sent"]), fmt_bytes(r["bytes_skipped"]),
                          str(r["objects_verified"]), f"{r['seconds']:.1f}")
        console.print(table)
    if task["state"] != "succeeded":
        raise AdcpError(task.get("error") or f"task {task['id']} {task['state']}")


@click.command("artifacts")
@click.option("--site", "where", default=CENTER, show_default=True, help="'center' or a site name.")
@click.option("--kind", default=None, help="Only this kind.")
@json_option
@pass_ctx
def artifacts(ctx: Context, where: str, kind: str | None, as_json: bool) -> None:
    """Complete artifacts held by the center or a site (half-copied ones never show)."""
    rows = ctx.client.call("GET", "/artifacts", params={"site": where, **({"kind": kind} if kind else {})})
    if as_json:
        return print_json(rows)
    table = Table("kind", Column("name", overflow="fold"), Column("version", overflow="fold"), "size", "objects")
    for r in rows:
        table.add_row(r["kind"], escape(r["name"]), escape(r["version"]), fmt_bytes(r["bytes"]), str(r["objects"]))
    console.print(table)


@click.command("verify")
@click.argument("artifact")
@click.option("--site", "where", required=True, help="'center' or a site name.")
@click.option("--repair", is_flag=True, help="Re-copy bad or missing objects from the center.")
@timeout_option(3600)
@json_option
@pass_ctx
def verify(ctx: Context, artifact: str, where: str, repair: bool, timeout_s: float, as_json: bool) -> None:
    """Rehash every object of an artifact where it is stored (the coordinator does it)."""
    task = ctx.client.call("POST", "/artifacts/verify", json={"artifact": artifact, "site": where, "repair": repair})
    task = follow_task(ctx.client, task, err_console, timeout_s=timeout_s, quiet=True)
    if task["state"] != "succeeded":
        raise AdcpError(task["error"])
    result = task["result"]
    if as_json:
        print_json(result)
    elif result["ok"] or len(result.get("bad", [])) == len(result.get("repaired", [])):
        repaired = f", repaired {result['repaired']}" if result.get("repaired") else ""
        console.print(f"{result['ref']} at {where}: ok{repaired}", highlight=False)
    else:
        console.print(f"{result['ref']} at {where}: [red]bad objects[/] {result['bad']} (run with --repair)")
    if result.get("bad") and not repair:
        raise click.exceptions.Exit(1)


@click.command("transfers")
@click.option("--limit", type=int, default=20, show_default=True)
@json_option
@pass_ctx
def transfers(ctx: Context, limit: int, as_json: bool) -> None:
    """Recent transfers: status, bytes, duration, error."""
    rows = ctx.client.call("GET", "/transfers", params={"limit": limit})
    if as_json:
        return print_json(rows)
    table = Table(Column("id", no_wrap=True), Column("artifact", overflow="fold"), "to", "status", "sent", "s")
    for r in rows:
        status = r["status"] if not r["error"] else f"{r['status']}: {escape(r['error'][:60])}"
        table.add_row(r["id"], escape(r["ref"]), escape(r["destination"]), status, fmt_bytes(r["bytes_sent"] or 0),
                      f"{r['seconds']:.1f}" if r["seconds"] is not None else "-")
    console.print(table)


@click.command("tasks")
@click.option("--limit", type=int, default=20, show_default=True)
@json_option
@pass_ctx
def tasks(ctx: Context, limit: int, as_json: bool) -> None:
    """Long work the coordinator runs or ran (pushes, rollouts, verifies)."""
    rows = ctx.client.call("GET", "/tasks", params={"limit": limit})
    if as_json:
        return print_json(rows)
    table = Table(Column("task", no_wrap=True), "kind", Column("what", overflow="fold"), "state", "user")
    for t in rows:
        table.add_row(t["id"], t["kind"], escape(t["target"]), t["state"], escape(t.get("user") or "-"))
    console.print(table)


@click.command("attach")
@click.argument("task_id")
@timeout_option(3600)
@json_option
@pass_ctx
def attach(ctx: Context, task_id: str, timeout_s: float, as_json: bool) -> None:
    """Follow a task the coordinator runs (started with --detach, or by a CLI that was killed)."""
    task = follow_task(ctx.client, ctx.client.call("GET", f"/tasks/{task_id}"), err_console, timeout_s=timeout_s,
                       quiet=as_json)
    if as_json:
        return print_json(task)
    console.print(f"task {task['id']} ({task['kind']} {escape(task['target'])}): {task['state']}"
                  + (f": {escape(task['error'])}" if task.get("error") else ""))
    if task["state"] != "succeeded":
        raise click.exceptions.Exit(1)


def add_commands(cli: click.Group) -> None:
    from coordinator.cli.imports import data_import

    data.add_command(data_import)
    for cmd in (data, upload, push, artifacts, verify, transfers, tasks, attach):
        cli.add_command(cmd)
