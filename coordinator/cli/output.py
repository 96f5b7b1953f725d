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


def progress(console: Console, *, transient: bool = False) -> Progress:
    """A bar with description, count and elapsed time, for transfers, synthesis and epochs."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=transient)


def transfer_progress(console: Console) -> Progress:
    """A bar per destination: bytes done/total, speed, and objects done/total."""
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TextColumn("{task.fields[objects]} objects"), TimeElapsedColumn(), console=console, transient=True)
