"""Training as a Ray job at a site, through Ray's `JobSubmissionClient` (the dashboard's jobs API).

The job runs `python -m train_jobs.train ...` with the code bundle as its `runtime_env` working
dir, so the site needs nothing of ours installed. Its command line is `configs.protocol.entrypoint`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from configs.errors import JobError
from configs.models import TrainConfig
from configs.protocol import TRAIN_MODULE as ENTRYPOINT_MODULE
from configs.protocol import TUNE_MODULE, entrypoint

__all__ = ["ENTRYPOINT_MODULE", "TUNE_MODULE", "JobOutcome", "entrypoint", "follow", "submit"]
_EPOCH_LINE = re.compile(r"epoch (\d+)/(\d+) (loss=.*)$", re.M)
_POLL_S = 1.0


@dataclass
class JobOutcome:
    job_id: str
    status: str
    seconds: float
    logs: str


def _client(dashboard_url: str, headers: dict[str, str]):
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address=dashboard_url, headers=headers)
    except (ConnectionError, RuntimeError) as e:
        raise JobError(
            f"Cannot reach the Ray jobs API at {dashboard_url}: {e}",
            hint="Is the site up? Check with `adcp site status`.",
        ) from e


def submit(
    dashboard_url: str,
    headers: dict[str, str],
    cfg: TrainConfig,
    working_dir: str,
    env: dict[str, str] | None = None,
) -> str:
    """Submit the training job; returns its submission id."""
    client = _client(dashboard_url, headers)
    runtime_env = {"working_dir": working_dir, "env_vars": dict(env or {})}
    resources = {"entrypoint_num_cpus": 0}
    try:
        return client.submit_job(entrypoint=entrypoint(cfg), runtime_env=runtime_env, **resources)
    except RuntimeError as e:
        raise JobError(f"The site refused the training job: {e}") from e


def follow(
    dashboard_url: str,
    headers: dict[str, str],
    job_id: str,
    *,
    timeout_s: float,
    on_epoch: Callable[[int, int, str], None] | None = None,
) -> JobOutcome:
    """Poll the job until it ends or `timeout_s` passes; calls `on_epoch(epoch, of, summary)` for
    each epoch line the job prints. Raises JobError if it fails, is stopped, or times out."""
    from ray.job_submission import JobStatus

    client = _client(dashboard_url, headers)
    started = time.monotonic()
    deadline = started + timeout_s
    reported = 0
    logs = ""
    while True:
        status = client.get_job_status(job_id)
        logs = client.get_job_logs(job_id)
        epochs = {int(m[1]): (int(m[2]), m[3]) for m in _EPOCH_LINE.finditer(logs)}
        for epoch in sorted(e for e in epochs if e > reported):
            if on_epoch:
                on_epoch(epoch, epochs[epoch][0], epochs[epoch][1])
            reported = epoch
        if status.is_terminal():
            break
        if time.monotonic() > deadline:
            client.stop_job(job_id)
            raise JobError(f"Training job {job_id} did not finish within {timeout_s:.0f} s; stopped it.")
        time.sleep(_POLL_S)
    seconds = time.monotonic() - started
    if status != JobStatus.SUCCEEDED:
        info = client.get_job_info(job_id)
        tail = "\n".join(logs.strip().splitlines()[-15:])
        raise JobError(
            f"Training job {job_id} {status.value}: {info.message or 'see its logs'}",
            hint=f"Last log lines:\n{tail}" if tail else None,
            job_id=job_id,
        )
    return JobOutcome(job_id, status.value, seconds, logs)
