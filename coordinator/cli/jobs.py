"""`adcp train`, `adcp tune`, `adcp jobs`, `adcp job logs|stop|watch`: training and tuning runs the
coordinator plans, ships, runs at a site (its own, or one with free capacity), fails over and
brings home. The CLI starts a run and follows it; killing the CLI never stops the run."""

from __future__ import annotations

import time
from typing import Any

import click
from rich.markup import escape
from rich.table import Column, Table

from configs.errors import JobError
from configs.loader import validate
from configs.runs import TERMINAL, RunRequest
from coordinator.cli.context import Context, console, err_console, json_option, pass_ctx, print_json, timeout_option

__all__ = ["add_commands", "follow_job"]


def _start(ctx: Context, body: dict[str, Any], detach: bool, timeout_s: float, as_json: bool) -> None:
    """Plan, start and follow a run the coordinator owns; print its outcome."""
    body = {k: v for k, v in body.items() if v is not None}
    validate(RunRequest, body, "the run request")  # the coordinator checks it too; fail here before any call
    client = ctx.client
    plan = client.call("POST", "/jobs/plan", json=body)
    if not as_json:
        for line in plan["lines"]:
            console.print(line, highlight=False)
    job = client.call("POST", "/jobs", json=body)
    if detach:
        return print_json({"job_id": job["id"]}) if as_json else console.print(
            f"job {job['id']} started; follow it with `adcp job watch {job['id']}`", highlight=False)
    follow_job(ctx, job["id"], timeout_s, as_json)


def follow_job(ctx: Context, job_id: str, timeout_s: float, as_json: bool) -> dict[str, Any]:
    """Poll a run until it ends, printing each attempt; raise JobError unless it succeeded."""
    client = ctx.client
    job = client.call("GET", f"/jobs/{job_id}")
    deadline = time.monotonic() + timeout_s
    shown: set[int] = set()
    with err_console.status(f"job {job_id}") as spinner:
        while True:
            for a in job["attempts"]:
                if a["n"] not in shown:
                    shown.add(a["n"])
                    if not as_json:
                        note = f" from {a['init_checkpoint']}" if a.get("init_checkpoint") else ""
                        console.print(f"attempt {a['n']} at {a['site']}{note}: {a['reason']}", highlight=False)
            if job["attempts"]:
                a = job["attempts"][-1]
                home = len((job.get("outcome") or {}).get("checkpoints") or [])
                spinner.update(f"job {job_id}: {job['status']} at {a['site']} (attempt {a['n']}), "
                               f"{home} checkpoints home")
            if job["status"] in TERMINAL:
                break
            if time.monotonic() > deadline:
                raise JobError(f"Job {job_id} still {job['status']} after {timeout_s:.0f} s; it goes on.",
                               hint=f"Follow it with `adcp job watch {job_id}`.")
            time.sleep(1)  # poll interval of a run that takes minutes
            job = client.call("GET", f"/jobs/{job_id}")
    for a in job["attempts"][:-1]:
        if a.get("error") and not as_json:
            console.print(f"  attempt {a['n']} at {a['site']} {a['status']}: {escape(a['error'])}", soft_wrap=True)
    outcome = job.get("outcome") or {}
    result = {"job_id": job["id"], "status": job["status"], "error": job["error"],
              **{k: outcome.get(k)
                 for k in ("ran_at", "model", "metrics", "checkpoints", "deployed", "seconds", "best")}}
    if as_json:
        print_json(result)
    elif job["status"] == "succeeded":
        console.print(f"model [cyan]{result['model']}[/] for {job['origin']}, "
                      f"trained at {' -> '.join(result['ran_at'])}")
        console.print("validation: " + ", ".join(f"{k} {v:.4f}" for k, v in (result["metrics"] or {}).items()
                                                 if isinstance(v, float)), highlight=False)
        if result.get("best"):
            console.print(f"best trial: {result['best']}", highlight=False)
    if job["status"] != "succeeded":
        raise JobError(f"Job {job['id']} {job['status']}: {job['error']}")
    return job


@click.command("train")
@click.option("--for", "origin", required=True, help="The site the model is for.")
@click.option("--dataset", "dataset_ref", required=True, help="NAME or NAME@VERSION in the central store.")
@click.option("--annotations", "annotations_ref", default=None,
              help="NAME[@VERSION] of annotations whose labels replace the dataset's (unlabelled images are skipped).")
@click.option("--on", "on", default=None, help="A site, or 'auto' (default: the site itself if it fits, else auto).")
@click.option("--gpus", type=int, default=0, show_default=True, help="GPUs the run needs (one Train worker each).")
@click.option("--cpus", type=float, default=None, help="CPUs the run needs (default: workers x CPUs per worker).")
@click.option("--epochs", type=int, default=None)
@click.option("--batch-size", type=int, default=None, help="Per worker.")
@click.option("--lr", type=float, default=None)
@click.option("--model-name", default=None)
@click.option("--model-version", default=None, help="Version to publish (default: a UTC timestamp).")
@click.option("--deploy", is_flag=True, help="Roll the new model out to the site's Serve app.")
@click.option("--detach", is_flag=True, help="Print the job id and return; follow with `adcp job watch ID`.")
@click.option("--site", "old_site", default=None, hidden=True)
@timeout_option(3600)
@json_option
@pass_ctx
def train(ctx: Context, origin, dataset_ref, annotations_ref, on, gpus, cpus, epochs, batch_size, lr, model_name,
          model_version, deploy, detach, old_site, timeout_s, as_json) -> None:
    """Train a model for a site as a Ray job where capacity is free, through the coordinator:
    checkpoints relayed home, fail-over to another site, the model brought home."""
    if old_site:
        raise click.UsageError(f"--site is gone: run at a site with `--for {old_site} --on {old_site}`.")
    _start(ctx, {"origin": origin, "dataset": dataset_ref, "annotations": annotations_ref, "on": on, "gpus": gpus,
                 "cpus": cpus, "deploy": deploy,
                 "epochs": epochs, "batch_size": batch_size, "lr": lr, "model_name": model_name,
                 "model_version": model_version}, detach, timeout_s, as_json)


@click.command("tune")
@click.option("--for", "origin", required=True, help="The site the model is for.")
@click.option("--dataset", "dataset_ref", required=True, help="NAME or NAME@VERSION in the central store.")
@click.option("--trials", type=int, default=None, help="Configurations to try (default: TuneConfig's).")
@click.option("--epochs", type=int, default=None, help="Most epochs per trial.")
@click.option("--on", "on", default=None, help="A site, or 'auto' (default: the site itself if it fits, else auto).")
@click.option("--cpus", type=float, default=None, help="CPUs the search needs (default: one trial's).")
@click.option("--model-name", default=None)
@click.option("--deploy", is_flag=True, help="Roll the best model out to the site's Serve app.")
@click.option("--detach", is_flag=True, help="Print the job id and return.")
@timeout_option(3600)
@json_option
@pass_ctx
def tune(ctx: Context, origin, dataset_ref, trials, epochs, on, cpus, model_name, deploy, detach, timeout_s,
         as_json) -> None:
    """A Ray Tune search (learning rate, batch size, augmentation) as a Ray job where capacity is
    free; prints the best trial and exports its model like a training run."""
    _start(ctx, {"kind": "tune", "origin": origin, "dataset": dataset_ref, "on": on, "cpus": cpus,
                 "trials": trials, "epochs": epochs, "model_name": model_name, "deploy": deploy},
           detach, timeout_s, as_json)


@click.command("jobs")
@click.option("--limit", type=int, default=20, show_default=True)
@json_option
@pass_ctx
def jobs_list(ctx: Context, limit: int, as_json: bool) -> None:
    """Training and tuning runs: status, where they ran, model, error."""
    rows = ctx.client.call("GET", "/jobs", params={"limit": limit})
    if as_json:
        return print_json(rows)
    table = Table(Column("job", no_wrap=True), "for", "status", "ran at", Column("model", overflow="fold"))
    for j in rows:
        table.add_row(j["id"], escape(j["origin"]), j["status"], " -> ".join(a["site"] for a in j["attempts"]) or "-",
                      escape((j["outcome"] or {}).get("model") or "-"))
    console.print(table)
    for j in rows:
        if j.get("error"):
            console.print(f"{j['id']}: {escape(j['error'][:200])}", soft_wrap=True)


@click.group("job")
def job() -> None:
    """One run: watch it, its logs, or stop it."""


@job.command("watch")
@click.argument("job_id")
@timeout_option(3600)
@json_option
@pass_ctx
def job_watch(ctx: Context, job_id: str, timeout_s: float, as_json: bool) -> None:
    """Follow a run to its end (re-attach after --detach or a killed CLI)."""
    follow_job(ctx, job_id, timeout_s, as_json)


@job.command("logs")
@click.argument("job_id")
@click.option("--follow", is_flag=True, help="Keep printing until the job ends.")
@click.option("--attempt", type=int, default=-1, help="1-based attempt (default: the latest).")
@pass_ctx
def job_logs(ctx: Context, job_id: str, follow: bool, attempt: int) -> None:
    """The Ray job logs of a run's attempt, read through the site gateway."""
    client = ctx.client
    printed = 0
    while True:
        text = client.call("GET", f"/jobs/{job_id}/logs", params={"attempt": attempt}) or ""
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
    """Stop a run (its Ray job at the site too)."""
    j = ctx.client.call("POST", f"/jobs/{job_id}/stop")
    console.print(f"job {job_id}: stopping ({j['status']})", highlight=False)


def add_commands(cli: click.Group) -> None:
    for cmd in (train, tune, jobs_list, job):
        cli.add_command(cmd)
