"""Long work the coordinator runs for a client (pushes, rollouts, rollbacks, verifies), each in a
thread of the coordinator process, so that it outlives the CLI that asked for it.

A task has an id, a kind, its state, a list of events (what a user reads as it goes), live
progress per destination (bytes and objects done of total) and, at the end, a result or an error.
Clients poll `GET /api/v1/tasks/{id}` to show bars, and can leave and come back (re-attach) while
the coordinator runs; the durable record of what happened is each kind's own table (transfers,
deployments), so a task list is kept in memory, the newest `KEEP` of them.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from configs.errors import AdcpError, NotFoundError
from configs.tasks import TaskRecord, TaskState

__all__ = ["KEEP", "Reporter", "TaskRunner"]

log = logging.getLogger("adcp.tasks")

#: Finished tasks kept for clients to read (the durable record is each kind's own table).
KEEP = 500


class Reporter:
    """What a task's work calls to say how it goes: `event(msg)`, `plan(key, bytes, objects)`,
    `advance(key, bytes, objects)`."""

    def __init__(self, task: TaskRecord, lock: threading.Lock) -> None:
        self._task = task
        self._lock = lock

    def event(self, message: str) -> None:
        with self._lock:
            self._task.events.append(f"{time.strftime('%H:%M:%S')} {message}")

    def plan(self, key: str, total_bytes: int, total_objects: int) -> None:
        with self._lock:
            self._task.progress[key] = {"bytes_done": 0, "bytes_total": total_bytes,
                                        "objects_done": 0, "objects_total": total_objects}

    def advance(self, key: str, nbytes: int, nobjects: int) -> None:
        with self._lock:
            p = self._task.progress.setdefault(key, {"bytes_done": 0, "bytes_total": 0,
                                                     "objects_done": 0, "objects_total": 0})
            p["bytes_done"] += nbytes
            p["objects_done"] += nobjects


class TaskRunner:
    """Starts tasks in threads and keeps their records."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tasks: OrderedDict[str, TaskRecord] = OrderedDict()
        self._threads: dict[str, threading.Thread] = {}

    def start(self, kind: str, target: str, work: Callable[[Reporter], Any], *, user: str | None = None,
              detail: dict[str, Any] | None = None) -> TaskRecord:
        """Run `work(reporter)` in a thread; its return value (JSON-able) becomes the result. An
        AdcpError it raises is the task's error; with `details["results"]` those become the result."""
        task = TaskRecord(id=uuid.uuid4().hex[:12], kind=kind, target=target, state=TaskState.running,
                          user=user, detail=detail or {}, started_at=time.time())
        with self._lock:
            self._tasks[task.id] = task
            while len(self._tasks) > KEEP:
                oldest = next(iter(self._tasks))
                if self._tasks[oldest].state == TaskState.running:
                    break
                self._tasks.pop(oldest)
                self._threads.pop(oldest, None)
        reporter = Reporter(task, self._lock)

        def run() -> None:
            try:
                result = work(reporter)
                state, error = TaskState.succeeded, None
            except AdcpError as e:
                result, state, error = e.details.get("results"), TaskState.failed, str(e)
            except Exception as e:  # our bug: keep it on the task and in the log
                log.exception("task %s (%s %s)", task.id, kind, target)
                result, state, error = None, TaskState.failed, f"{type(e).__name__}: {e}"
            with self._lock:
                task.result, task.state, task.error, task.finished_at = result, state, error, time.time()

        t = threading.Thread(target=run, daemon=True, name=f"task-{kind}-{task.id}")
        self._threads[task.id] = t
        t.start()
        return self.get(task.id)

    def get(self, task_id: str) -> TaskRecord:
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None:
                raise NotFoundError(f"No task {task_id}.",
                                    hint="Tasks are kept while the coordinator runs; see `adcp tasks`.")
            return task.model_copy(deep=True)

    def list(self, limit: int = 50) -> list[TaskRecord]:
        with self._lock:
            return [t.model_copy(deep=True) for t in reversed(self._tasks.values())][:limit]

    def wait(self, task_id: str, timeout_s: float | None = None) -> TaskRecord:
        t = self._threads.get(task_id)
        if t is not None:
            t.join(timeout_s)
        return self.get(task_id)
