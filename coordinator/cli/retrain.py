"""`adcp model retrain LINE [--now] [--detach] [--json]`: retrain a model line through the
coordinator (POST /api/v1/models/{line}/retrain) on its base dataset plus the reviewed images with
their verdict labels, from its champion's weights when the line fine-tunes; follow the training
job as `adcp train` does, then say where the new version is the challenger. Without `--now` the
line retrains only when its policy says it is due, and the CLI says why it is not."""

from __future__ import annotations

import time
from typing import Any

import click

from configs.errors import JobError
from coordinator.cli.context import Context, console, err_console, json_option, pass_ctx, print_json, timeout_option
from coordinator.cli.jobs import follow_job

__all__ = ["model_retrain"]


def _describe(rec: dict[str, Any]) -> str:
    req = rec.get("request") or {}
    extra = ", ".join(f"{e['dataset']} with {e['annotations']}" for e in req.get("extra") or []) or "no reviewed data"
    start = f"from {req['init_model']}" if req.get("init_model") else "from scratch"
    return (f"retrain {rec['id']} of {rec['line']} ({rec['why']}, by {rec['by']}): job {rec['job_id']}, "
            f"{req.get('dataset')} + {extra}, {start}, for {req.get('origin')}")


def _wait_retrain(ctx: Context, line: str, retrain_id: str, timeout_s: float) -> dict[str, Any]:
    """The retrain's record once it is no longer running (the coordinator sets the aliases after the
    job); JobError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    with err_console.status(f"retrain {retrain_id}"):
        while True:
            rows = ctx.client.call("GET", f"/models/{line}/retrains")["retrains"]
            rec = next((r for r in rows if r["id"] == retrain_id), None)
            if rec is None:
                raise JobError(f"Retrain {retrain_id} of {line} is not in the coordinator's list.")
            if rec["status"] != "running":
                return rec
            if time.monotonic() > deadline:
                raise JobError(f"Retrain {retrain_id} still running after {timeout_s:.0f} s; it goes on.",
                               hint=f"Follow its job with `adcp job watch {rec['job_id']}`.")
            time.sleep(1)  # poll interval of a run that takes minutes


@click.command("retrain")
@click.argument("line")
@click.option("--now", is_flag=True, help="Retrain at once (default: only when the line's policy says it is due).")
@click.option("--detach", is_flag=True, help="Print the retrain and its job id and return; follow with "
              "`adcp job watch ID`.")
@timeout_option(3600)
@json_option
@pass_ctx
def model_retrain(ctx: Context, line: str, now: bool, detach: bool, timeout_s: float, as_json: bool) -> None:
    """Retrain model line LINE: its dataset plus the reviewed images with their verdicts, from the
    champion (fine-tune) or from scratch per its policy; the new version becomes the challenger."""
    started = time.monotonic()
    out = ctx.client.call("POST", f"/models/{line}/retrain", json={"now": now})
    if not out.get("due"):
        if as_json:
            return print_json(out)
        return console.print(f"line {line} is not due for a retrain: {out['why']} (`--now` retrains anyway)",
                             highlight=False)
    if not as_json:
        console.print(_describe(out), highlight=False, soft_wrap=True)
    if detach:
        if as_json:
            return print_json(out)
        return console.print(f"follow it with `adcp job watch {out['job_id']}`", highlight=False)
    if not as_json:
        follow_job(ctx, out["job_id"], timeout_s, False)
    rec = _wait_retrain(ctx, line, out["id"], max(1.0, timeout_s - (time.monotonic() - started)))
    if as_json:
        print_json(rec)
    elif rec["status"] == "succeeded":
        sites = ", ".join((rec.get("detail") or {}).get("challenger_at") or []) or "-"
        console.print(f"challenger [cyan]{line}@{rec['version']}[/] at {sites}")
    if rec["status"] != "succeeded":
        raise JobError(f"Retrain {rec['id']} of {line} {rec['status']}: {rec.get('error')}")
