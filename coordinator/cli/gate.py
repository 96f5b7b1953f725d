"""`adcp model gate LINE@V` and `adcp model golden LINE --from NAME@V`: score a challenger against
its line's champion on the golden set and the held-out recent verdicts (run by the coordinator as
a job at a site), and make a line's golden set.

A gate that ran exits 0 whether the challenger passed or not (the answer says which figures
failed; `--json` has `passed` false); a gate that could not run exits 1.
"""

from __future__ import annotations

from typing import Any

import click
from rich.markup import escape
from rich.table import Column, Table

from configs.errors import AdcpError, InputError
from coordinator.cli.context import Context, console, err_console, json_option, pass_ctx, print_json, timeout_option
from coordinator.cli.models import model
from coordinator.cli.output import follow_task

__all__ = ["add_commands", "figure_rows", "model_gate", "model_golden"]

_FIGURES = ("escape_rate", "auto_precision", "automation_rate", "accuracy", "images")


def _num(value: Any) -> str:
    if value is None:
        return "-"
    return str(value) if isinstance(value, int) else f"{value:.4f}"


def figure_rows(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(figure, champion, challenger) for every figure of the report, per-class ones after the rest."""
    ch = report["figures"]["challenger"]
    champ = report["figures"].get("champion") or {}
    rows = [(f, _num(champ.get(f)), _num(ch.get(f))) for f in _FIGURES]
    classes = sorted(set(ch.get("per_class", {})) | set(champ.get("per_class", {})))
    for c in classes:
        a, b = champ.get("per_class", {}).get(c, {}), ch["per_class"].get(c, {})
        for key in ("recall", "precision", "n"):
            rows.append((f"{c} {key}", _num(a.get(key)), _num(b.get(key))))
    return rows


def _print_report(report: dict[str, Any]) -> None:
    word = "[green]PASSED[/]" if report["passed"] else "[red]FAILED[/]"
    champion = report.get("champion")
    console.print(f"{escape(report['challenger'])} {word} the gate at {escape(str(report.get('site')))} "
                  f"against {escape(champion) if champion else 'no champion (limits only)'}", highlight=False)
    for reason in report.get("reasons", []):
        console.print(f"  [red]fail[/] {escape(reason)}", highlight=False)
    table = Table(Column("figure", no_wrap=True), Column(f"champion {champion or '-'}", justify="right"),
                  Column(f"challenger {report['challenger']}", justify="right"), "")
    failed = set(report.get("failed", []))
    for figure, a, b in figure_rows(report):
        table.add_row(escape(figure), a, b, "[red]FAIL[/]" if figure in failed else "")
    console.print(table)
    data = report.get("data", {})
    console.print(f"data: golden {escape(str(data.get('golden')))}, recent {escape(str(data.get('recent') or '-'))}; "
                  f"{data.get('calibration_images')} calibration / {data.get('test_images')} test images; "
                  "thresholds recalibrated: " + ", ".join(f"{escape(c)} {t:.4f}"
                                                          for c, t in sorted(report.get("thresholds", {}).items())),
                  highlight=False, soft_wrap=True)


def _line_version(text: str) -> tuple[str, str]:
    body = text.removeprefix("model/")
    line, _, version = body.partition("@")
    if not line or not version or "/" in body:
        raise InputError(f'"{text}" does not name a model version.', allowed="LINE@VERSION or model/LINE@VERSION",
                         hint="See `adcp model list`.")
    return line, version


@click.command("gate")
@click.argument("model_ref", metavar="LINE@VERSION")
@click.option("--site", default=None, help="Site that runs the gate (default: the line's first site).")
@timeout_option(900, "Seconds the gate job may take")
@json_option
@pass_ctx
def model_gate(ctx: Context, model_ref: str, site: str | None, timeout_s: float, as_json: bool) -> None:
    """Score LINE@VERSION against the line's champion on the golden set and the held-out recent
    verdicts; print pass/fail and every figure of both models side by side."""
    line, version = _line_version(model_ref)
    body = {"timeout_s": timeout_s, **({"site": site} if site else {})}
    task = ctx.client.call("POST", f"/models/{line}/{version}/gate", params={"wait": "false"}, json=body)
    task = follow_task(ctx.client, task, err_console, timeout_s=timeout_s + 60, quiet=as_json)
    if task["state"] != "succeeded" or not task.get("result"):
        raise AdcpError(task.get("error") or f"task {task['id']} {task['state']}")
    report = task["result"]
    print_json(report) if as_json else _print_report(report)


@click.command("golden")
@click.argument("line")
@click.option("--from", "source", required=True, metavar="NAME@VERSION",
              help="Dataset whose test-split images (never trained on) become the golden set.")
@click.option("--name", default=None, help="Artifact name of the golden set (default: golden-LINE).")
@json_option
@pass_ctx
def model_golden(ctx: Context, line: str, source: str, name: str | None, as_json: bool) -> None:
    """Publish a dataset's labelled test-split images as the line's golden set (a new version only
    when they changed)."""
    result = ctx.client.call("POST", f"/models/{line}/golden", json={"dataset": source, "name": name})
    if as_json:
        return print_json(result)
    console.print(escape(result["message"]), highlight=False, soft_wrap=True)
    console.print(f"The gate takes the latest {escape(result['golden'].split('@')[0])} unless the line names one "
                  f"in the platform file (golden: {escape(result['golden'])} freezes this one).", highlight=False,
                  soft_wrap=True)


def add_commands(cli: click.Group) -> None:
    """`gate` and `golden` join the `model` group (which `coordinator.cli.models` registers)."""
    model.add_command(model_gate)
    model.add_command(model_golden)
