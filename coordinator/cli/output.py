"""Terminal output shared by the CLI and the demo."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

__all__ = ["progress", "transfer_progress", "follow_task"]


def progress(console: Console, *, transient: bool = False) -> Progress:
    """A bar with description, count and elapsed time, for transfers, synthesis and epochs."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=transient)


def transfer_progress(console: Console) -> Progress:
    """A bar per destination: bytes done/total, speed, and objects done/total."""
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TextColumn("{task.fields[objects]} objects"), TimeElapsedColumn(), console=console, transient=True)


def follow_task(client, task: dict, console: Console, *, timeout_s: float, quiet: bool = False) -> dict:
    """Show a coordinator task until it ends: its events as lines and, while it moves bytes, a bar
    per destination fed by the task's progress. Returns the finished task (any state)."""
    shown = 0
    bars: dict[str, int] = {}
    with transfer_progress(console) as bar:
        def update(t: dict) -> None:
            nonlocal shown
            if not quiet:
                for line in t["events"][shown:]:
                    bar.console.print(line, highlight=False, markup=False)
            shown = len(t["events"])
            for key, p in t.get("progress", {}).items():
                if key not in bars:
                    bars[key] = bar.add_task(key, total=p["bytes_total"] or 1, objects="0/0")
                bar.update(bars[key], completed=p["bytes_done"], total=p["bytes_total"] or 1,
                           objects=f"{p['objects_done']}/{p['objects_total']}")

        update(task)
        if task["state"] != "running":
            return task
        return client.wait_task(task["id"], timeout_s=timeout_s, on_update=update)
