"""Imports of a factory's images into the central store, run by the coordinator (it reads the
source itself: a folder on its host or an object-store URL) as a task a client can follow.

Progress goes on the task the way a push's does: one progress entry (`import NAME`) whose
objects are the files checked so far of all files; events say when the listing, the publish and
the end happen. Imports of one dataset name run one at a time (each makes the next version).
"""

from __future__ import annotations

import threading
from typing import Any

from coordinator.center.core import Center
from coordinator.jobs.tasks import Reporter
from data.importer import check_source, import_source

__all__ = ["check", "progress_key", "run_import"]

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def progress_key(name: str) -> str:
    """The task progress entry of an import of dataset `name`."""
    return f"import {name}"


def _lock(name: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(name, threading.Lock())


def check(source: str, name: str, labels: str | None = None, storage_options: dict | None = None) -> None:
    """Refuse a bad import before it starts (bad name, no such source or labels file, no image
    files): InputError / NotFoundError, which the API answers as 4xx."""
    check_source(source, name, labels_url=labels, storage_options=storage_options)


def run_import(center: Center, source: str, name: str, *, labels: str | None = None,
               storage_options: dict | None = None, user: str | None = None,
               report: Reporter | None = None) -> dict[str, Any]:
    """Import `source` into the central store as dataset/annotations `name` (next versions);
    returns the import report (see `data.importer.import_source`)."""
    key = progress_key(name)
    shown = {"done": 0, "planned": False}

    def on_progress(done: int, total: int) -> None:
        if report is None:
            return
        if not shown["planned"]:
            report.plan(key, total, total)
            report.event(f"checking {total} files from {source}")
            shown["planned"] = True
        report.advance(key, done - shown["done"], done - shown["done"])
        shown["done"] = done

    with _lock(name):
        result = import_source(center.central, source, name, labels_url=labels, storage_options=storage_options,
                               on_progress=on_progress, annotator=user or "import")
    if report is not None:
        if result["changed"]:
            report.event(f"published dataset/{result['dataset']} ({result['new']} new, {result['unchanged']} "
                         f"unchanged, {len(result['rejected'])} refused)")
        else:
            report.event(f"nothing changed: dataset/{result['dataset']} already holds these images")
    return result
