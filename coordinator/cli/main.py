"""The `adcp` command line: a thin click layer over `coordinator.cli.operations`.

Errors meant for users print as one line and exit non-zero; `--debug` shows the traceback.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from configs.errors import AdcpError, InputError, JobError
from configs.loader import Defaults, load_defaults
from configs.models import SynthConfig
from coordinator.cli import operations
from coordinator import server
from coordinator.center.core import CENTER, Center
from coordinator.cli.output import progress, transfer_progress
from coordinator.cli.workspace import Workspace

console = Console()
err_console = Console(stderr=True)


class Context:
    def __init__(self, home: Path | None, config: Path | None, platform: Path | None, debug: bool) -> None:
        self.debug = debug
        self.home_given = home is not None
        self.defaults: Defaults = load_defaults(config)
        self.ws = Workspace.at(home)
        self.platform_file = platform
        self._center: Center | None = None

    @property
    def center(self) -> Center:
        if self._center is None:
            self._center = Center.open(self.ws.home, self.platform_file)
        return self._center

    @property
    def client(self):
        """The coordinator API client (`client.call(method, path, **httpx_kwargs)` -> JSON); paths
        are relative to /api/v1."""
        from coordinator.cli.client import CoordinatorClient

        if getattr(self, "_client", None) is None:
            self._client = CoordinatorClient(self.ws.home)
        return self._client


pass_ctx = click.make_pass_decorator(Context)


def _site_option(f):
    return click.option("--site", "site_name", default=None, help="Site name (default: the configured site).")(f)


def _json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")(f)


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", type=click.Path(path_type=Path), envvar="ADCP_HOME", default=None,
              help="Platform home: local store and site state (default ~/.adcp, env ADCP_HOME).")
@click.option("--config", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Defaults YAML (default: configs/defaults.yaml).")
@click.option("--platform", type=click.Path(path_type=Path, dir_okay=False), envvar="ADCP_PLATFORM", default=None,
              help="Platform file: center and sites (default: the one `adcp up` was given, else "
              "configs/platform.yaml).")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.pass_context
def cli(ctx: click.Context, home: Path | None, config: Path | None, platform: Path | None, debug: bool) -> None:
    """ADC Platform: automatic defect classification on Ray, from dataset to served model."""
    ctx.obj = Context(home, config, platform, debug)


# --- data -------------------------------------------------------------------------------------

@cli.group()
def data() -> None:
    """Datasets of AOI images."""


@data.command("synth")
@click.option("--name", default=None, help="Dataset name; written to the local store as NAME@<next version>.")
@click.option("--images", type=int, default=None, help="Number of images.")
@click.option("--size", type=int, default=None, help="Image side in pixels (64-256).")
@click.option("--seed", type=int, default=None, help="Random seed (same seed, same images).")
@click.option("--preview", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also write a labelled contact sheet PNG of samples per class.")
@_json_option
@pass_ctx
def data_synth(ctx: Context, name, images, size, seed, preview, as_json) -> None:
    """Generate a synthetic AOI dataset (and/or a preview contact sheet)."""
    if not name and not preview:
        raise click.UsageError("Give --name NAME to write a dataset, --preview FILE for a contact sheet, or both.")
    base = ctx.defaults.synth.model_dump()
    overrides = {k: v for k, v in {"images": images, "size": size, "seed": seed}.items() if v is not None}
    from configs.loader import validate

    cfg = validate(SynthConfig, {**base, **overrides}, "synth options")
    out: dict[str, Any] = {}
    if preview:
        from data.preview import contact_sheet

        out["preview"] = str(contact_sheet(preview, seed=cfg.seed, size=cfg.size))
        if not as_json:
            console.print(f"contact sheet written to {out['preview']}")
    if name:
        with _progress() as progress:
            task = progress.add_task(f"synthesise {name}", total=cfg.images)
            ds = operations.synth_dataset(ctx.ws, name, cfg, on_progress=lambda n: progress.advance(task, n))
        out.update(dataset=ds.dataset_id, url=ds.url, rows=ds.manifest["rows"],
                   class_counts=ds.manifest["class_counts"], sha256=ds.sha256)
        if not as_json:
            console.print(f"dataset [cyan]{ds.dataset_id}[/] written to {ds.url}")
            console.print(f"{ds.manifest['rows']} images: {ds.manifest['class_counts']}")
    if as_json:
        _print_json(out)


@data.command("list")
@_json_option
@pass_ctx
def data_list(ctx: Context, as_json: bool) -> None:
    """Datasets in the local store."""
    rows = [{"name": n, "versions": ctx.ws.versions("dataset", n)} for n in ctx.ws.names("dataset")]
    if as_json:
        return _print_json(rows)
    for row in rows:
        console.print(f"{row['name']}: {', '.join(row['versions']) or '(incomplete)'}")


# --- sites ------------------------------------------------------------------------------------

@cli.command("up")
@pass_ctx
def up(ctx: Context) -> None:
    """Start the coordinator and every local site of the platform; return once all are ready."""
    with err_console.status("starting the coordinator and local sites"):
        info = server.up(ctx.ws.home, ctx.platform_file, on_event=lambda m: err_console.print(m, highlight=False))
    console.print(f"platform up: coordinator {info['url']}, sites {', '.join(info['sites']) or '(none local)'}; "
                  f"API token in {ctx.ws.home / 'coordinator' / 'api_token'}")


@cli.command("down")
@pass_ctx
def down(ctx: Context) -> None:
    """Stop every local site and the coordinator (by process id)."""
    server.down(ctx.ws.home, on_event=lambda m: console.print(m, highlight=False))


@cli.command("status")
@_json_option
@pass_ctx
def platform_status(ctx: Context, as_json: bool) -> None:
    """Each site: reachable, Ray version, CPU/GPU/memory free of total, store, jobs, Serve apps."""
    coordinator = server.running(ctx.ws.home)
    rows = ctx.center.status()
    if as_json:
        return _print_json({"coordinator": coordinator, "sites": rows})
    console.print(f"coordinator: {coordinator['url'] + ' (pid ' + str(coordinator['pid']) + ')' if coordinator else 'not running'}")
    table = Table("site", "reachable", "ray", "CPU free/total", "GPU free/total", "memory free/total GiB",
                  "store", "running jobs", "serve apps")
    for r in rows:
        res = r.get("resources", {})
        tot, avail = res.get("total", {}), res.get("available", {})
        gib = 2**30
        apps = ", ".join(f"{k}:{v}" for k, v in r.get("serve_apps", {}).items()) or "-"
        table.add_row(
            r["name"], "yes" if r["reachable"] else f"no ({r.get('error', '')})", r.get("ray_version", "-"),
            f"{avail.get('CPU', 0):g}/{tot.get('CPU', 0):g}", f"{avail.get('GPU', 0):g}/{tot.get('GPU', 0):g}",
            f"{avail.get('memory', 0) / gib:.1f}/{tot.get('memory', 0) / gib:.1f}",
            f"{r['store']} ({r['transfer']})", str(len(r.get("jobs", {}).get("running", []))), apps)
    console.print(table)
    members = [r for r in rows if "cluster" in r]
    if members:  # KubeRay sites: what Karmada reports of their member clusters
        kt = Table("site", "Karmada cluster", "ready", "sync", "CPU free/total", "GPU free/total")
        for r in members:
            c = r["cluster"]
            ctot, cav = c.get("resources", {}).get("total", {}), c.get("resources", {}).get("available", {})
            kt.add_row(r["name"], c.get("cluster", "-"), "yes" if c.get("ready") else f"no ({c.get('ready_message', '')})",
                       c.get("sync_mode", "-"), f"{cav.get('CPU', 0):g}/{ctot.get('CPU', 0):g}",
                       f"{cav.get('GPU', 0):g}/{ctot.get('GPU', 0):g}")
        console.print(kt)


@cli.command("push")
@click.argument("artifact")
@click.option("--to", "to", required=True, help="Destination sites, comma-separated.")
@click.option("--from", "source", default=CENTER, show_default=True, help="'center' or a site name.")
@click.option("--verify-existing", is_flag=True, help="Rehash objects already at the destination too.")
@click.option("--max-mbps", type=float, default=None, help="Bandwidth cap per destination, MB/s.")
@_json_option
@pass_ctx
def push(ctx: Context, artifact: str, to: str, source: str, verify_existing: bool, max_mbps: float | None,
         as_json: bool) -> None:
    """Copy KIND/NAME[@VERSION] to sites: verified, resumable, sending only what is missing."""
    sites = [s.strip() for s in to.split(",") if s.strip()]
    with transfer_progress(err_console) as bar:
        tasks: dict[str, Any] = {}

        def plan(site: str, total_bytes: int, total_objects: int) -> None:
            tasks[site] = bar.add_task(f"{site}", total=total_bytes, objects=f"0/{total_objects}", n=0, of=total_objects)

        def advance(site: str, nbytes: int, nobjects: int) -> None:
            task = tasks[site]
            n = bar.tasks[task].fields["n"] + nobjects
            bar.update(task, advance=nbytes, n=n, objects=f"{n}/{bar.tasks[task].fields['of']}")

        outcomes = ctx.center.push(artifact, sites, source=source, verify_existing=verify_existing,
                                   max_mbps=max_mbps, on_plan=plan, on_progress=advance)
    rows = [o.to_dict() for o in outcomes]
    if as_json:
        return _print_json(rows)
    table = Table("site", "direction", "artifact", "sent", "skipped", "objects verified", "seconds")
    for r in rows:
        table.add_row(r["site"], r["direction"], r["ref"], _bytes(r["bytes_sent"]), _bytes(r["bytes_skipped"]),
                      str(r["objects_verified"]), f"{r['seconds']:.2f}")
    console.print(table)


@cli.command("artifacts")
@click.option("--site", "where", default=CENTER, show_default=True, help="'center' or a site name.")
@click.option("--kind", default=None, help="Only this kind.")
@_json_option
@pass_ctx
def artifacts(ctx: Context, where: str, kind: str | None, as_json: bool) -> None:
    """Complete artifacts held by the center or a site (half-copied ones never show)."""
    rows = ctx.center.artifacts(where, kind)
    if as_json:
        return _print_json(rows)
    table = Table("kind", "name", "version", "size", "objects", "created")
    for r in rows:
        table.add_row(r["kind"], r["name"], r["version"], _bytes(r["bytes"]), str(r["objects"]), r["created"])
    console.print(table)


@cli.command("verify")
@click.argument("artifact")
@click.option("--site", "where", required=True, help="'center' or a site name.")
@click.option("--repair", is_flag=True, help="Re-copy bad or missing objects from the center.")
@_json_option
@pass_ctx
def verify(ctx: Context, artifact: str, where: str, repair: bool, as_json: bool) -> None:
    """Rehash every object of an artifact where it is stored."""
    result = ctx.center.verify(artifact, where, repair=repair)
    if as_json:
        _print_json(result)
    elif result["ok"] or len(result.get("bad", [])) == len(result.get("repaired", [])):
        console.print(f"{result['ref']} at {where}: ok" + (f", repaired {result['repaired']}" if result.get("repaired") else ""))
    else:
        console.print(f"{result['ref']} at {where}: [red]bad objects[/] {result['bad']} (run with --repair)")
    if result.get("bad") and not repair:
        raise click.exceptions.Exit(1)


@cli.command("transfers")
@click.option("--limit", type=int, default=20, show_default=True)
@_json_option
@pass_ctx
def transfers(ctx: Context, limit: int, as_json: bool) -> None:
    """Recent transfers: status, bytes, duration, error."""
    rows = ctx.center.transfers(limit)
    if as_json:
        return _print_json(rows)
    table = Table("id", "artifact", "from", "to", "direction", "status", "sent", "skipped", "seconds", "error")
    for r in rows:
        table.add_row(r["id"], r["ref"], r["source"], r["destination"], r["direction"], r["status"],
                      _bytes(r["bytes_sent"] or 0), _bytes(r["bytes_skipped"] or 0),
                      f"{r['seconds']:.2f}" if r["seconds"] is not None else "-", r["error"] or "")
    console.print(table)


def _train_for(ctx: Context, dataset_ref, origin, on, gpus, cpus, deploy, detach, timeout_s, as_json, options) -> None:
    if options.get("resume_from") or options.get("use_gpu") or options.get("num_workers"):
        raise click.UsageError("With --for, ask for GPUs with --gpus N (one worker each); --resume-from is automatic.")
    body = {"origin": origin, "dataset": dataset_ref, "on": on, "gpus": gpus, "cpus": cpus, "deploy": deploy,
            "epochs": options.get("epochs"), "batch_size": options.get("batch_size"), "lr": options.get("lr"),
            "model_name": options.get("model_name"), "model_version": options.get("model_version")}
    _run_job(ctx, body, detach, timeout_s, as_json)


@cli.command("tune")
@click.option("--for", "origin", required=True, help="The site the model is for.")
@click.option("--dataset", "dataset_ref", required=True, help="NAME or NAME@VERSION in the central store.")
@click.option("--trials", type=int, default=None, help="Configurations to try (default: TuneConfig's).")
@click.option("--epochs", type=int, default=None, help="Most epochs per trial.")
@click.option("--on", "on", default=None, help="A site, or 'auto' (default: the site itself if it fits, else auto).")
@click.option("--cpus", type=float, default=None, help="CPUs the search needs (default: one trial's).")
@click.option("--model-name", default=None)
@click.option("--deploy", is_flag=True, help="Roll the best model out to the site's Serve app.")
@click.option("--detach", is_flag=True, help="Print the job id and return.")
@click.option("--timeout", "timeout_s", type=float, default=3600, show_default=True, help="Seconds.")
@_json_option
@pass_ctx
def tune(ctx: Context, origin, dataset_ref, trials, epochs, on, cpus, model_name, deploy, detach, timeout_s,
         as_json) -> None:
    """A Ray Tune search (learning rate, batch size, augmentation) as a Ray job where capacity is
    free; prints the best trial and exports its model like a training run."""
    body = {"kind": "tune", "origin": origin, "dataset": dataset_ref, "on": on, "cpus": cpus, "trials": trials,
            "epochs": epochs, "model_name": model_name, "deploy": deploy}
    _run_job(ctx, body, detach, timeout_s, as_json)


def _run_job(ctx: Context, body: dict[str, Any], detach: bool, timeout_s: float, as_json: bool) -> None:
    """Plan, start and follow a job the coordinator runs; print its outcome."""
    from coordinator.cli.client import CoordinatorClient
    from coordinator.jobs.runner import TERMINAL

    origin = body["origin"]
    client = CoordinatorClient(ctx.ws.home)
    plan = client.call("POST", "/jobs/plan", json=body)
    if not as_json:
        for line in plan["lines"]:
            console.print(line, highlight=False)
    job = client.call("POST", "/jobs", json=body)
    if detach:
        return _print_json({"job_id": job["id"]}) if as_json else console.print(f"job {job['id']} started")
    deadline = time.monotonic() + timeout_s
    shown: dict[int, int] = {}
    with err_console.status(f"job {job['id']}") as spinner:
        while job["status"] not in TERMINAL:
            if time.monotonic() > deadline:
                raise JobError(f"Job {job['id']} still {job['status']} after {timeout_s:.0f} s; it goes on.",
                               hint=f"Follow it with `adcp job logs {job['id']} --follow`.")
            time.sleep(1)  # poll interval of a run that takes minutes
            job = ctx.center.state.jobs(job_id=job["id"])[0]
            if job["attempts"]:
                a = job["attempts"][-1]
                spinner.update(f"job {job['id']}: {job['status']} at {a['site']} (attempt {a['n']}), "
                               f"{len(job['outcome'].get('checkpoints', []))} checkpoints home")
                if not as_json and a["n"] not in shown:
                    shown[a["n"]] = 1
                    note = f" from {a['init_checkpoint']}" if a.get("init_checkpoint") else ""
                    console.print(f"attempt {a['n']} at {a['site']}{note}: {a['reason']}", highlight=False)
                    for prev in job["attempts"][:-1]:
                        if prev.get("error") and prev["n"] + 1 == a["n"]:
                            console.print(f"  attempt {prev['n']} at {prev['site']} {prev['status']}: {prev['error']}",
                                          highlight=False)
    result = {"job_id": job["id"], "status": job["status"], "error": job["error"],
              **{k: (job["outcome"] or {}).get(k)
                 for k in ("ran_at", "model", "metrics", "checkpoints", "deployed", "seconds", "best")}}
    if as_json:
        _print_json(result)
    elif job["status"] == "succeeded":
        console.print(f"model [cyan]{result['model']}[/] for {origin}, trained at {' -> '.join(result['ran_at'])}")
        console.print("validation: " + ", ".join(f"{k} {v:.4f}" for k, v in (result["metrics"] or {}).items()
                                                 if isinstance(v, float)))
        if result.get("best"):
            console.print(f"best trial: {result['best']}", highlight=False)
    if job["status"] != "succeeded":
        raise JobError(f"Job {job['id']} {job['status']}: {job['error']}")


@cli.command("jobs")
@click.option("--limit", type=int, default=20, show_default=True)
@_json_option
@pass_ctx
def jobs_list(ctx: Context, limit: int, as_json: bool) -> None:
    """Training jobs the coordinator ran or runs: status, where, attempts, model."""
    rows = ctx.center.state.jobs(limit)
    if as_json:
        return _print_json(rows)
    table = Table("job", "for", "status", "ran at", "model", "error")
    for j in rows:
        table.add_row(j["id"], j["origin"], j["status"], " -> ".join(a["site"] for a in j["attempts"]) or "-",
                      (j["outcome"] or {}).get("model") or "-", (j["error"] or "")[:80])
    console.print(table)


@cli.group()
def job() -> None:
    """One training job: its logs, or stop it."""


@job.command("logs")
@click.argument("job_id")
@click.option("--follow", is_flag=True, help="Keep printing until the job ends.")
@click.option("--attempt", type=int, default=-1, help="1-based attempt (default: the latest).")
@pass_ctx
def job_logs(ctx: Context, job_id: str, follow: bool, attempt: int) -> None:
    """The Ray job logs of a job's attempt, read through the site gateway."""
    from coordinator.cli.client import CoordinatorClient
    from coordinator.jobs.runner import TERMINAL

    client = CoordinatorClient(ctx.ws.home)
    printed = 0
    while True:
        text = client.call("GET", f"/jobs/{job_id}/logs", params={"attempt": attempt})
        if len(text) < printed:  # a new attempt started: its logs begin afresh
            printed = 0
        click.echo(text[printed:], nl=False)
        printed = len(text)
        if not follow or client.call("GET", f"/jobs/{job_id}")["status"] in TERMINAL:
            break
        time.sleep(1)  # poll interval while following


@job.command("stop")
@click.argument("job_id")
@pass_ctx
def job_stop(ctx: Context, job_id: str) -> None:
    """Stop a job (its Ray job at the site too)."""
    from coordinator.cli.client import CoordinatorClient

    j = CoordinatorClient(ctx.ws.home).call("POST", f"/jobs/{job_id}/stop")
    console.print(f"job {job_id}: stopping ({j['status']})")


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@cli.group()
def site() -> None:
    """Sites: register remote ones, list them; run a single local one by hand."""


@site.command("add")
@click.argument("name")
@click.option("--dashboard", required=True, help="Ray dashboard base URL (jobs API).")
@click.option("--serve", default=None, help="Ray Serve HTTP base URL.")
@click.option("--store", required=True, help="fsspec URL of the site store.")
@click.option("--registry", default=None, help="HOST[:PORT] of the site's image registry.")
@click.option("--metrics", default=None, help="Ray metrics endpoint URL.")
@click.option("--transfer", type=click.Choice(["push", "pull"]), default="push", show_default=True,
              help="push: the center writes the site store; pull: a Ray job at the site reads the center's.")
@click.option("--token-file", default=None, help="File with the site's Ray auth token.")
@click.option("--store-options", default=None, help='fsspec storage options as JSON, e.g. \'{"client_kwargs": '
              '{"endpoint_url": "http://s3.fab-c:8333"}}\' (credentials come from the environment).')
@_json_option
@pass_ctx
def site_add(ctx: Context, name, dashboard, serve, store, registry, metrics, transfer, token_file, store_options,
             as_json) -> None:
    """Register a site that runs elsewhere (direct gateway)."""
    try:
        options = json.loads(store_options) if store_options else None
    except ValueError as e:
        raise InputError(f"--store-options is not JSON: {e}.", allowed='a JSON object such as {"anon": false}') from e
    s = ctx.center.add_site(name, dashboard=dashboard, serve=serve, store=store, registry=registry, metrics=metrics,
                            transfer=transfer, token_file=token_file, store_options=options)
    if as_json:
        return _print_json(s.model_dump(mode="json"))
    console.print(f"site [cyan]{s.name}[/] registered ({s.gateway.kind} gateway, store {s.store.url}, {s.transfer})")


@site.command("list")
@_json_option
@pass_ctx
def site_list(ctx: Context, as_json: bool) -> None:
    """Sites the center knows (from the platform file and `adcp site add`)."""
    rows = [{"name": s.name, "local": s.local, "gateway": s.gateway.kind, "store": s.store.url,
             "transfer": s.transfer, "registry": s.registry, "labels": s.labels} for s in ctx.center.sites()]
    if as_json:
        return _print_json(rows)
    table = Table("site", "local", "gateway", "store", "transfer", "registry")
    for r in rows:
        table.add_row(r["name"], "yes" if r["local"] else "no", r["gateway"], r["store"], r["transfer"], r["registry"] or "-")
    console.print(table)


@site.command("remove")
@click.argument("name")
@pass_ctx
def site_remove(ctx: Context, name: str) -> None:
    """Forget a site registered with `adcp site add` (its store and cluster are left alone)."""
    ctx.center.remove_site(name)
    console.print(f"site {name} removed")


@site.command("up")
@click.argument("name", required=False)
@click.option("--num-cpus", type=int, default=None, help="Logical CPUs for Ray (>= 4 for training).")
@click.option("--num-gpus", type=int, default=None)
@pass_ctx
def site_up(ctx: Context, name, num_cpus, num_gpus) -> None:
    """Start a local Ray head for a site and leave it running in the background."""
    updates = {k: v for k, v in {"name": name, "num_cpus": num_cpus, "num_gpus": num_gpus}.items() if v is not None}
    from configs.loader import validate
    from configs.models import LocalSiteConfig

    cfg = validate(LocalSiteConfig, {**ctx.defaults.site.model_dump(), **updates}, "site options")
    with err_console.status(f"starting site {cfg.name}"):
        s = operations.site_up(ctx.ws, cfg)
    console.print(f"site [cyan]{s.name}[/] up: dashboard {s.dashboard_url}, serve {s.serve_url}")


@site.command("down")
@click.argument("name", required=False)
@pass_ctx
def site_down(ctx: Context, name: str | None) -> None:
    """Stop a local site by its process ids (never the machine-wide Ray stop)."""
    name = name or ctx.defaults.site.name
    stopped = operations.site_down(ctx.ws, name)
    console.print(f"site {name} {'stopped' if stopped else 'was not running'}")


@site.command("status")
@_json_option
@pass_ctx
def site_status(ctx: Context, as_json: bool) -> None:
    """Each local site: reachable, Ray version, resources total/free."""
    rows = operations.site_status(ctx.ws)
    if as_json:
        return _print_json(rows)
    if not rows:
        console.print("no local site is running (start one with `adcp site up`)")
        return
    table = Table("site", "reachable", "ray", "CPU free/total", "GPU free/total", "dashboard", "serve")
    for r in rows:
        res = r.get("resources", {})
        tot, avail = res.get("total", {}), res.get("available", {})
        table.add_row(r["name"], "yes" if r["reachable"] else f"no ({r.get('error', '')})", r.get("ray_version", "-"),
                      f"{avail.get('CPU', 0):g}/{tot.get('CPU', 0):g}", f"{avail.get('GPU', 0):g}/{tot.get('GPU', 0):g}",
                      r["dashboard"], r["serve"])
    console.print(table)


# --- train / serve / classify -----------------------------------------------------------------

@cli.command("train")
@click.option("--dataset", "dataset_ref", required=True, help="NAME or NAME@VERSION in the central store.")
@click.option("--for", "origin", default=None,
              help="Train a model for this site through the coordinator, where capacity is free (see --on).")
@click.option("--on", "on", default=None, help="With --for: a site, or 'auto' (default: the site itself if it fits, else auto).")
@click.option("--gpus", type=int, default=0, show_default=True, help="With --for: GPUs the run needs (one Train worker each).")
@click.option("--cpus", type=float, default=None, help="With --for: CPUs the run needs (default: workers x CPUs per worker).")
@click.option("--deploy", is_flag=True, help="With --for: roll the new model out to the site's Serve app.")
@click.option("--detach", is_flag=True, help="With --for: print the job id and return; follow with `adcp job logs ID --follow`.")
@_site_option
@click.option("--epochs", type=int, default=None)
@click.option("--batch-size", type=int, default=None, help="Per worker.")
@click.option("--lr", type=float, default=None)
@click.option("--workers", "num_workers", type=int, default=None, help="Ray Train workers.")
@click.option("--use-gpu", is_flag=True, default=None, help="One GPU per worker.")
@click.option("--model-name", default=None)
@click.option("--model-version", default=None, help="Version to publish (default: a UTC timestamp).")
@click.option("--resume-from", default=None, help="Continue from the checkpoints of this earlier run (a model version).")
@click.option("--timeout", "timeout_s", type=float, default=3600, show_default=True, help="Seconds.")
@_json_option
@pass_ctx
def train(ctx: Context, dataset_ref, origin, on, gpus, cpus, deploy, detach, site_name, timeout_s, as_json,
          **options) -> None:
    """Train as a Ray job and export the model: at a local site (--site), or for a site wherever
    capacity is free (--for), with checkpoints relayed home and fail-over to another site."""
    if origin:
        if site_name:
            raise click.UsageError("Give --for (through the coordinator) or --site (a local site), not both.")
        return _train_for(ctx, dataset_ref, origin, on, gpus, cpus, deploy, detach, timeout_s, as_json, options)
    if on or gpus or cpus or deploy or detach:
        raise click.UsageError("--on, --gpus, --cpus, --deploy and --detach go with --for SITE.")
    s = operations.get_site(ctx.ws, site_name or ctx.defaults.site.name)
    with _progress() as progress:
        task = progress.add_task("train", total=options.get("epochs") or ctx.defaults.train_config(dataset="-", output="-").epochs)
        outcome = operations.train(
            ctx.ws, s, ctx.defaults, dataset_ref, options=options, timeout_s=timeout_s,
            on_submitted=lambda job_id: progress.update(task, description=f"train {job_id} at {s.name}"),
            on_epoch=lambda e, of, line: (progress.update(task, completed=e, total=of),
                                          None if as_json else progress.console.print(f"  epoch {e}/{of} {line}")),
        )
    meta = outcome.metadata
    result = {"job_id": outcome.job_id, "site": outcome.site, "model": meta.model_id, "model_uri": outcome.model_uri,
              "seconds": round(outcome.seconds, 1), "metrics": meta.metrics.get("val", {}), "thresholds": meta.thresholds}
    if as_json:
        return _print_json(result)
    console.print(f"model [cyan]{meta.model_id}[/] written to {outcome.model_uri}")
    console.print("validation: " + ", ".join(f"{k} {v:.4f}" for k, v in result["metrics"].items() if k != "images"))


@cli.group()
def serve() -> None:
    """The ADC Serve app at a site."""


@serve.command("deploy")
@click.option("--model", "model_ref", required=True, help="NAME[@VERSION] in the local store, or a model URI.")
@_site_option
@click.option("--replicas", type=int, default=None)
@pass_ctx
def serve_deploy(ctx: Context, model_ref: str, site_name, replicas) -> None:
    """Deploy the app, or swap its model in place (no request is dropped)."""
    s = operations.get_site(ctx.ws, site_name or ctx.defaults.site.name)
    cfg = ctx.defaults.serve if replicas is None else ctx.defaults.serve.model_copy(update={"num_replicas": replicas})
    with err_console.status(f"deploying {model_ref} at {s.name}"):
        meta, seconds = operations.deploy_model(ctx.ws, s, cfg, model_ref)
    console.print(f"{meta.model_id} serving at {s.serve_url} ({seconds:.1f} s)")


@cli.command("classify")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@_site_option
@click.option("--url", default=None, help="Serve endpoint base URL (instead of a local site).")
@_json_option
@pass_ctx
def classify(ctx: Context, images, site_name, url, as_json) -> None:
    """Classify image files through a site's Serve endpoint."""
    if url and site_name:
        raise click.UsageError("Give --site or --url, not both.")
    name = site_name or ctx.defaults.site.name
    # a site reached through a gateway (not a local direct one): its Serve endpoint through the gateway
    remote = set() if url else {s.name for s in ctx.center.sites() if not (s.local and s.gateway.kind == "direct")}
    if name in remote:
        client = ctx.center.gateway(name).client("serve", timeout_s=120)
        results = operations.classify_files("", list(images), client=client)
    else:
        serve_url = url or operations.get_site(ctx.ws, name).serve_url
        results = operations.classify_files(serve_url, list(images))
    if as_json:
        return _print_json(results)
    table = Table("file", "class", "confidence", "decision", "model")
    for r in results:
        table.add_row(r["file"], r["class"], f"{r['confidence']:.3f}", r["decision"], r["model_version"])
    console.print(table)


@cli.command("demo")
@click.option("--summary-json", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also write the figures as JSON.")
@click.option("--keep", is_flag=True, help="Leave the site running and the demo home in place.")
@pass_ctx
def demo(ctx: Context, summary_json: Path | None, keep: bool) -> None:
    """Synthesise, train, serve and classify on a local site; print the figures."""
    from coordinator.cli.demo import run_demo

    run_demo(ctx.defaults, console, home=ctx.ws.home if ctx.home_given else None, summary_json=summary_json, keep=keep)


def _progress() -> Progress:
    # On stderr, so that `--json` output on stdout stays machine-readable.
    return progress(err_console, transient=True)


from coordinator.cli.models import model as _model_group  # noqa: E402  (it needs Context defined above)

cli.add_command(_model_group)

from coordinator.cli.kube import add_commands as _add_kube_commands  # noqa: E402

_add_kube_commands(cli)  # render, apply, rebalance, site register, site discover

from coordinator.cli.monitoring import add_commands as _add_monitoring_commands  # noqa: E402

_add_monitoring_commands(cli)  # top, logs

from coordinator.cli.dashboard import add_commands as _add_dashboard_commands  # noqa: E402

_add_dashboard_commands(cli)  # dashboard --url


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `adcp` console script."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or os.environ.get("ADCP_DEBUG") == "1"
    try:
        rv = cli.main(args=args, prog_name="adcp", standalone_mode=False)
        if isinstance(rv, int):  # click returns a command's Exit code in non-standalone mode
            return rv
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.exceptions.Abort:
        err_console.print("aborted")
        return 130
    except AdcpError as e:
        if debug:
            raise
        err_console.print(f"[red]error:[/] {e}", highlight=False, soft_wrap=True)
        return 1
    except Exception as e:  # anything else is our bug: still one line unless --debug
        if debug:
            raise
        err_console.print(f"[red]error:[/] unexpected {type(e).__name__}: {e} (run with --debug for the traceback)",
                          highlight=False, soft_wrap=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
