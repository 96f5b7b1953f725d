"""Retraining a model line: when it is due, what it trains on, and the challenger it makes.

A line (`configs.lines.LineConfig`) retrains on `retrain.min_verdicts` new verdicts since its last
model, every `retrain.every_s` seconds, or by hand. "New" verdicts are those of the line's dataset
line (the base dataset's name: the station records the dataset of the model that asked) that the
review sync pulled after the last model's data was taken (the start of the retrain that made it,
else its export time) and that no undo names; after a failed retrain the count starts again from
that retrain's start, so a broken run is not retried every minute.

A retrain is one training run through the job runner (`coordinator.jobs.runner.Trainer`: it may
borrow another site's capacity and fails over): the line's base dataset plus the latest
`dataset/reviewed-<dataset line>` with `annotations/reviewed-<dataset line>` (the reviewed images
with their verdict labels), from the weights of the line's champion at its first site when the
mode is `finetune` (the champion's width and image size kept), for the first site, at
`retrain.on`. On success the new version becomes `challenger` at each of the line's sites and
`on_challenger(line, version)` is called (the server hands it to the staged release). Never two
retrains of one line at once (`coordinator.state.retrains`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from configs.errors import AdcpError, ConflictError, InputError, NotFoundError
from configs.lines import LineConfig
from configs.runs import TERMINAL, ExtraData, JobState, RunRequest
from coordinator.center.core import Center
from coordinator.jobs.review_sync import line_name
from coordinator.state.retrains import Retrains
from data.artifacts import ArtifactRef
from data.model_format import read_metadata

__all__ = ["CHECK_ENV", "LOOP_BY", "Retrainer", "dataset_line"]

log = logging.getLogger("adcp.retrain")

#: Seconds between the loop's checks of every line (0: no loop); 60 by default.
CHECK_ENV = "ADCP_RETRAIN_CHECK_S"
#: Who the loop's retrains are recorded as.
LOOP_BY = "retrain-loop"


def dataset_line(dataset: str) -> str:
    """The dataset line of a dataset reference (NAME, NAME@V, dataset/NAME@V): its name."""
    return dataset.split("@", 1)[0].removeprefix("dataset/")


def _iso(text: str) -> str:
    """An ISO time in `coordinator.state.db.now()`'s form (UTC, milliseconds), so texts compare as times."""
    t = datetime.fromisoformat(text)
    t = t if t.tzinfo else t.replace(tzinfo=timezone.utc)
    return t.astimezone(timezone.utc).isoformat(timespec="milliseconds")


def _message(e: Exception) -> str:
    return str(e) if isinstance(e, AdcpError) else f"{type(e).__name__}: {e}"


class Retrainer:
    """Retrains the center's model lines with `trainer` (a `Trainer`: `start(RunRequest) -> Job`,
    `job(id) -> Job`); `on_challenger(line, version)` is called for each new challenger."""

    def __init__(self, center: Center, trainer: Any, *,
                 on_challenger: Callable[[str, str], Any] | None = None, poll_s: float = 2.0) -> None:
        self.center = center
        self.trainer = trainer
        self.on_challenger = on_challenger
        self.poll_s = poll_s
        self.records = Retrains(center.state)
        self._created: dict[tuple[str, str], str] = {}  # (line, version) -> created_at: models never change

    # --- policy --------------------------------------------------------------------------------

    def line(self, name: str) -> LineConfig:
        cfg = self.center.config.line(name)
        if cfg is None:
            known = ", ".join(line.name for line in self.center.config.lines) or "none"
            raise NotFoundError(f"No model line {name} in the platform file.", allowed=known,
                                hint="Add it under `lines:` in the platform file.")
        return cfg

    def due(self, name: str, at: float | None = None) -> dict[str, Any]:
        """Whether line `name` should retrain now, and why: `{"line", "due", "why", "trigger"
        (verdicts | schedule | None), "verdicts_new", "min_verdicts", "every_s", "last_model", "since",
        "running"}`."""
        cfg = self.line(name)
        at = time.time() if at is None else at
        last = self._last_model(name)
        since = last["since"] if last else None
        history = self.records.list(name, limit=1)
        failed = history[0] if history and history[0]["status"] == "failed" else None
        if failed is not None and (since is None or failed["created_at"] > since):
            since = failed["created_at"]
        dl = dataset_line(cfg.dataset)
        n = self.records.verdicts_since(dl, since)
        policy = cfg.retrain
        out: dict[str, Any] = {"line": name, "due": False, "why": "", "trigger": None, "verdicts_new": n,
                               "dataset_line": dl, "min_verdicts": policy.min_verdicts, "every_s": policy.every_s,
                               "last_model": last["model"] if last else None, "since": since,
                               "last_failed": failed["id"] if failed else None, "running": None}
        running = self.records.running(name)
        age = at - datetime.fromisoformat(since).timestamp() if since else None
        if running:
            out.update(running=running[0]["id"], why=f"retraining now (retrain {running[0]['id']})")
        elif policy.min_verdicts is not None and n >= policy.min_verdicts:
            out.update(due=True, trigger="verdicts", why=f"retrain: {n} verdicts")
        elif policy.every_s is not None and (age is None or age >= policy.every_s):
            out.update(due=True, trigger="schedule", why="schedule")
        else:
            parts = []
            if policy.min_verdicts is not None:
                parts.append(f"{n} of {policy.min_verdicts} new verdicts")
            if policy.every_s is not None:
                parts.append(f"next scheduled in {max(0, int(policy.every_s - (age or 0)))} s")
            out["why"] = ("; ".join(parts) or "retrains by hand only (retrain.min_verdicts and every_s are null)") + (
                f" since {since}" if since else "")
        return out

    def request(self, name: str) -> RunRequest:
        """The training run a retrain of line `name` starts now."""
        cfg = self.line(name)
        if not cfg.sites:
            raise InputError(f"Line {name} has no sites, so a retrain has no site to train for.",
                             hint="Give the line `sites:` in the platform file.")
        origin = cfg.sites[0]
        reviewed = line_name(dataset_line(cfg.dataset))
        extra = []
        datasets, annotations = (self.center.central.versions(k, reviewed) for k in ("dataset", "annotations"))
        if datasets and annotations:
            extra = [ExtraData(dataset=f"{reviewed}@{datasets[-1]}", annotations=f"{reviewed}@{annotations[-1]}")]
        init_model, options = None, {}
        champion = self.center.lines.aliases(name, origin).get(origin, {}).get("champion")
        if cfg.retrain.mode == "finetune" and champion:
            init_model = f"model/{name}@{champion}"
            options = self._shape_of(name, champion)
        return RunRequest(origin=origin, dataset=cfg.dataset, on=cfg.retrain.on, epochs=cfg.retrain.epochs,
                          model_name=name, init_model=init_model, extra=extra, options=options)

    # --- retraining ----------------------------------------------------------------------------

    def retrain(self, name: str, *, by: str, why: str | None = None, now: bool = False) -> dict[str, Any]:
        """Start a retrain of line `name` (when due, or at once with `now`): its record with `"due":
        True`; when not due (and not `now`) the `due` answer (`"due": False` and why). ConflictError
        when the line is retraining already."""
        if not now:
            due = self.due(name)
            if not due["due"]:
                return due
            why = why or due["why"]
        why = why or "by hand"
        req = self.request(name)
        row = self.records.create(name, by=by, why=why, request=req.model_dump(mode="json"))
        try:
            job = self.trainer.start(req)
        except Exception as e:
            self.records.finish(row["id"], "failed", error=_message(e))
            raise
        row = self.records.set_job(row["id"], job.id)
        self._follow(row["id"])
        return {**row, "due": True}

    def retrains(self, name: str, limit: int = 50) -> list[dict[str, Any]]:
        return self.records.list(name, limit)

    def resume(self) -> list[str]:
        """Follow every retrain a previous coordinator left running (their jobs are resumed by the
        Trainer); one whose job never started is failed."""
        ids = []
        for row in self.records.running():
            if row["job_id"]:
                self._follow(row["id"])
                ids.append(row["id"])
            else:
                self.records.finish(row["id"], "failed", error="the coordinator stopped before its job started")
        return ids

    def check(self) -> list[dict[str, Any]]:
        """One pass of the loop: retrain every line of the platform file that is due."""
        started = []
        for cfg in self.center.config.lines:
            try:
                due = self.due(cfg.name)
                if due["due"]:
                    started.append(self.retrain(cfg.name, by=LOOP_BY, why=due["why"], now=True))
            except ConflictError:
                continue  # started by hand since the check: that one goes on
            except AdcpError as e:
                log.warning("line %s: retrain not started: %s", cfg.name, e)
        return started

    def start_loop(self, interval_s: float | None = None) -> threading.Event | None:
        """Check every line every `interval_s` seconds (default: $ADCP_RETRAIN_CHECK_S, else 60; 0: no
        loop) in a daemon thread until the returned event is set."""
        interval_s = float(os.environ.get(CHECK_ENV, "60")) if interval_s is None else interval_s
        if interval_s <= 0:
            return None
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(interval_s):
                try:
                    self.check()
                except Exception:  # the loop must outlive one bad check; the next one retries
                    log.exception("retrain check failed")

        threading.Thread(target=loop, name="retrain-loop", daemon=True).start()
        return stop

    # --- following a run -------------------------------------------------------------------------

    def _follow(self, retrain_id: str) -> None:
        threading.Thread(target=self._follow_logged, args=(retrain_id,), daemon=True,
                         name=f"retrain-{retrain_id}").start()

    def _follow_logged(self, retrain_id: str) -> None:
        try:
            self._wait_and_finish(retrain_id)
        except Exception as e:  # never lose a failure in a thread: record it on the retrain
            log.exception("retrain %s", retrain_id)
            self.records.finish(retrain_id, "failed", error=_message(e))

    def _wait_and_finish(self, retrain_id: str) -> None:
        row = self.records.get(retrain_id)
        job = self.trainer.job(row["job_id"])
        while job.status not in TERMINAL:
            time.sleep(self.poll_s)
            job = self.trainer.job(row["job_id"])
        if job.status != JobState.succeeded:
            error = f"job {job.id} {job.status.value}" + (f": {job.error}" if job.error else "")
            self.records.finish(retrain_id, "failed", error=error)
            return
        version = ArtifactRef.parse(job.spec.model).version
        cfg = self.center.config.line(row["line"])
        sites = cfg.sites if cfg is not None else [row["request"]["origin"]]
        for site in sites:
            self.center.lines.set_alias(row["line"], site, "challenger", version, by=row["by"], why=row["why"])
        self.records.finish(retrain_id, "succeeded", version=version,
                            detail={"challenger_at": sites, "model": f"{row['line']}@{version}"})
        if self.on_challenger is not None:
            try:
                self.on_challenger(row["line"], version)
            except Exception as e:  # the challenger stands; say why what follows it did not start
                log.warning("line %s: on_challenger(%s): %s", row["line"], version, e)
                self.records.finish(retrain_id, "succeeded", detail={"on_challenger_error": f"{type(e).__name__}: {e}"})

    # --- the line's models -----------------------------------------------------------------------

    def _last_model(self, name: str) -> dict[str, Any] | None:
        """The line's newest model (by export time) and since when its data is old: the start of the
        retrain that made it, else its export time."""
        newest: tuple[str, str] | None = None
        for version in self.center.central.versions("model", name):
            created = self._created_at(name, version)
            if created is not None and (newest is None or created > newest[1]):
                newest = (version, created)
        if newest is None:
            return None
        version, created = newest
        made_by = self.records.by_version(name, version)
        since = min(created, made_by["created_at"]) if made_by else created
        return {"model": f"{name}@{version}", "created_at": created, "since": since}

    def _created_at(self, name: str, version: str) -> str | None:
        key = (name, version)
        if key not in self._created:
            try:
                meta = read_metadata(self.center.central.manifest_url(ArtifactRef("model", name, version)))
                self._created[key] = _iso(meta.created_at)
            except (AdcpError, ValueError) as e:  # a version whose metadata cannot be read does not count
                log.warning("model %s@%s: %s", name, version, e)
                return None
        return self._created[key]

    def _shape_of(self, name: str, version: str) -> dict[str, Any]:
        """The champion's width and image size (from its lineage), so the run can fine-tune from it."""
        try:
            config = read_metadata(self.center.central.manifest_url(ArtifactRef("model", name, version))).lineage.get(
                "config") or {}
        except AdcpError as e:
            log.warning("model %s@%s: %s", name, version, e)
            return {}
        return {k: config[k] for k in ("width", "image_size") if isinstance(config.get(k), int)}
