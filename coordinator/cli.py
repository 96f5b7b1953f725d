"""The `adcp` command line: a thin click layer over `coordinator.operations`.

Errors meant for users print as one line and exit non-zero; `--debug` shows the traceback.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from configs.errors import AdcpError
from configs.loader import Defaults, load_defaults
from configs.models import SynthConfig
from coordinator import operations
from coordinator.ui import progress
from coordinator.workspace import Workspace

console = Console()
err_console = Console(stderr=True)


class Context:
    def __init__(self, home: Path | None, config: Path | None, debug: bool) -> None:
        self.debug = debug
        self.home_given = home is not None
        self.defaults: Defaults = load_defaults(config)
        self.ws = Workspace.at(home)


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
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.pass_context
def cli(ctx: click.Context, home: Path | None, config: Path | None, debug: bool) -> None:
    """ADC Platform: automatic defect classification on Ray, from dataset to served model."""
    ctx.obj = Context(home, config, debug)


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
    rows = [{"name": n, "versions": ctx.ws.versions("datasets", n)} for n in ctx.ws.names("datasets")]
    if as_json:
        return _print_json(rows)
    for row in rows:
        console.print(f"{row['name']}: {', '.join(row['versions']) or '(incomplete)'}")


# --- sites ------------------------------------------------------------------------------------

@cli.group()
def site() -> None:
    """Local Ray sites (the embedded default)."""


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
@click.option("--dataset", "dataset_ref", required=True, help="NAME or NAME@VERSION in the local store.")
@_site_option
@click.option("--epochs", type=int, default=None)
@click.option("--batch-size", type=int, default=None, help="Per worker.")
@click.option("--lr", type=float, default=None)
@click.option("--workers", "num_workers", type=int, default=None, help="Ray Train workers.")
@click.option("--use-gpu", is_flag=True, default=None, help="One GPU per worker.")
@click.option("--model-name", default=None)
@click.option("--model-version", default=None, help="Re-using a version resumes from its checkpoints.")
@click.option("--timeout", "timeout_s", type=float, default=3600, show_default=True, help="Seconds.")
@_json_option
@pass_ctx
def train(ctx: Context, dataset_ref, site_name, timeout_s, as_json, **options) -> None:
    """Train at a site as a Ray job (python -m train_jobs.train) and export the model."""
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
    serve_url = url or operations.get_site(ctx.ws, site_name or ctx.defaults.site.name).serve_url
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
    from coordinator.demo import run_demo

    run_demo(ctx.defaults, console, home=ctx.ws.home if ctx.home_given else None, summary_json=summary_json, keep=keep)


def _progress() -> Progress:
    # On stderr, so that `--json` output on stdout stays machine-readable.
    return progress(err_console, transient=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `adcp` console script."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or os.environ.get("ADCP_DEBUG") == "1"
    try:
        cli.main(args=args, prog_name="adcp", standalone_mode=False)
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
