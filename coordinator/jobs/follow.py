"""Following one attempt of a job at its site: poll its Ray job through the gateway, relay the
checkpoints it publishes to the central store, and read what it reported (its `ADCP_TUNE` line,
Ray's message when it failed). Problems that do not end the attempt are recorded on the job as
warnings, never dropped."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from configs.errors import AdcpError, SiteError
from configs.protocol import Marker, find_line
from configs.runs import Attempt, Job
from coordinator.center.core import Center
from data.artifacts import ArtifactRef
from data.transfer import copy_artifact

__all__ = ["exists", "follow", "job_message", "relay_checkpoints", "tune_summary"]

log = logging.getLogger("adcp.training")


def follow(center: Center, job: Job, attempt: Attempt, *, poll_s: float, lost_after_s: float,
           stopping: Callable[[], bool], save: Callable[[Job], Any]) -> str:
    """Poll the attempt's Ray job until it ends, relaying checkpoints home each poll; its final
    status ("SUCCEEDED", "FAILED", "STOPPED"). SiteError when the site stays unreachable for
    `lost_after_s`. When `stopping()` turns true, the Ray job is asked to stop."""
    last_seen = time.monotonic()
    while True:
        try:
            status = center.job_client(attempt.site).get_job_status(attempt.submission_id)
            last_seen = time.monotonic()
        except Exception as e:  # connection refused, site stopped, 5xx: lost only after a grace time
            if time.monotonic() - last_seen > lost_after_s:
                raise SiteError(f"{attempt.site} unreachable for {lost_after_s:.0f} s: {e}") from e
            time.sleep(poll_s)
            continue
        relay_checkpoints(center, job, attempt.site, save)
        if status.is_terminal():
            return status.value
        if stopping():
            center.job_client(attempt.site).stop_job(attempt.submission_id)
        time.sleep(poll_s)  # poll interval of a job that runs for minutes


def relay_checkpoints(center: Center, job: Job, site: str, save: Callable[[Job], Any]) -> None:
    """Copy every checkpoint of the job published at `site` and not yet at the center to the
    central store, saving the job after each. A store that cannot be listed, or a copy that
    fails, is logged and recorded once as a warning on the job; the next call tries again."""
    if not center.reachable(site):
        _warn(job, f"checkpoints published at {site} stay there: the center cannot reach its store", save)
        return
    name = job.spec.checkpoints
    try:
        versions = center.store(site).versions("checkpoint", name)
    except (OSError, AdcpError) as e:
        _warn(job, f"checkpoints at {site} could not be listed: {type(e).__name__}: {e}", save)
        return
    for v in versions:
        ref = ArtifactRef("checkpoint", name, v)
        if str(ref) in job.outcome.checkpoints:
            continue
        try:
            copy_artifact(center.store(site), center.central, ref)
        except (OSError, AdcpError) as e:
            _warn(job, f"checkpoint {ref} not relayed from {site}: {type(e).__name__}: {e}", save)
            continue
        job.outcome.checkpoints.append(str(ref))
        save(job)


def _warn(job: Job, message: str, save: Callable[[Job], Any]) -> None:
    if message not in job.outcome.warnings:
        log.warning("job %s: %s", job.id, message)
        job.warn(message)
        save(job)


def tune_summary(center: Center, attempt: Attempt) -> dict[str, Any] | None:
    """The best trial ({config, metrics, trials}) from the `ADCP_TUNE` line the search printed;
    None when it printed none."""
    summary = find_line(Marker.TUNE, center.job_client(attempt.site).get_job_logs(attempt.submission_id))
    if summary is None:
        return None
    return {"config": summary.get("best"), "metrics": summary.get("metrics"),
            "trials": len(summary.get("trials") or [])}


def job_message(center: Center, attempt: Attempt) -> str:
    """Why the attempt's Ray job ended, as Ray says it (or why that could not be read)."""
    try:
        info = center.job_client(attempt.site).get_job_info(attempt.submission_id)
        return f"Ray job {info.status}: {info.message or ''}".strip()
    except Exception as e:  # the site may be gone: the message says so instead
        return f"Ray job failed ({type(e).__name__}: {e})"


def exists(client: Any, submission_id: str) -> bool:
    """Whether the site already has a Ray job of that submission id (a restarted coordinator
    follows it instead of submitting it again)."""
    try:
        client.get_job_info(submission_id)
        return True
    except RuntimeError:  # Ray answers 404 as RuntimeError
        return False
