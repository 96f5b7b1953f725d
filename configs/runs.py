"""Training and tuning runs as typed records: what a user asks for (`RunRequest`, the body of
POST /api/v1/jobs and /jobs/plan), where it goes (`PlanRecord`), and what the coordinator records
while it runs (`Job`, its `Attempt`s and `JobOutcome`), with their states as enums.

It lives in the base layer so the CLI (a pure HTTP client) reads the same models the API returns.
The JSON shape is the one the jobs API has always answered: status strings such as "running",
`attempts[].site/n/status/error/init_checkpoint/reason`, `outcome.model/ran_at/metrics/...`.
"""

from __future__ import annotations

import time
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["ACTIVE", "TERMINAL", "Attempt", "AttemptState", "ExtraData", "Job", "JobOutcome", "JobSpec", "JobState",
           "Need", "PlanRecord", "RunRequest", "Shipment", "SiteCapacity"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- what is asked ----------------------------------------------------------------------------

class ExtraData(_Strict):
    """More labelled images for a training run: a dataset and the annotations it trains with
    (e.g. a line's reviewed images, `reviewed-<dataset>`, with their verdict labels)."""

    dataset: str = Field(..., min_length=1, description="NAME[@VERSION] of a dataset in the central store.")
    annotations: str = Field(..., min_length=1, description="NAME[@VERSION] of its annotations in the central store.")

    @field_validator("dataset", "annotations")
    @classmethod
    def _no_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError(f'Got "{v}": a blank value. Give NAME or NAME@VERSION.')
        return v.strip()


class RunRequest(_Strict):
    """One training or tuning run for a site (`adcp train --for` / `adcp tune --for`)."""

    origin: str = Field(..., min_length=1, description="The site the model is for (it comes home there).")
    dataset: str = Field(..., min_length=1, description="NAME[@VERSION] of a dataset in the central store.")
    annotations: str | None = Field(None, description="NAME[@VERSION] of an annotations artifact in the central "
                                    "store whose labels replace the dataset's own (e.g. an import's or verdicts').")
    on: str | None = Field(None, description="A site, 'auto', or null (the origin if it fits, else auto).")
    gpus: int = Field(0, ge=0, le=256, description="GPUs the run holds (train: one Ray Train worker each).")
    cpus: float | None = Field(None, gt=0, description="CPUs the run holds; default: what its workers reserve.")
    epochs: int | None = Field(None, ge=1, le=1000, description="Epochs (tune: most epochs per trial).")
    batch_size: int | None = Field(None, ge=1, le=4096, description="train: batch size per worker.")
    lr: float | None = Field(None, gt=0, le=1.0, description="train: peak learning rate.")
    model_name: str | None = Field(None, description="Exported model name; default: adc-<dataset>.")
    model_version: str | None = Field(None, description="Exported model version; default: UTC time.")
    deploy: bool = Field(False, description="Roll the model out to the origin's Serve app once home.")
    max_attempts: int = Field(3, ge=1, le=10, description="Sites tried in all before the run fails.")
    kind: Literal["train", "tune"] = Field("train", description="train: one run; tune: a Ray Tune search.")
    trials: int | None = Field(None, ge=1, le=1000, description="tune: configurations to try.")
    options: dict[str, Any] = Field(default_factory=dict, description="Other TrainConfig/TuneConfig fields.")
    init_model: str | None = Field(None, description="train: model/NAME@VERSION or NAME@VERSION in the central "
                                   "store to fine-tune from (used when its classes and width are the run's).")
    extra: list[ExtraData] = Field(default_factory=list, description="train: more datasets with their annotations "
                                   "added to the training data (e.g. reviewed images with their verdicts).")

    @field_validator("origin", "dataset", "annotations", "on", "model_name", "model_version", "init_model")
    @classmethod
    def _no_blank(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError(f'Got "{v}": a blank value. Give a name or leave the field out.')
        return v.strip() if v is not None else v

    @field_validator("model_name", "model_version")
    @classmethod
    def _plain_name(cls, v: str | None) -> str | None:
        if v is not None and any(c in v for c in "/@ "):
            raise ValueError(f'Got "{v}". A model name or version has no "/", "@" or spaces.')
        return v

    @model_validator(mode="after")
    def _fits_kind(self) -> RunRequest:
        if self.kind == "train" and self.trials is not None:
            raise ValueError(f"trials is for kind=tune only. Found: kind=train, trials={self.trials}")
        if self.kind == "tune" and (self.init_model is not None or self.extra):
            raise ValueError("init_model and extra are for kind=train only. "
                             f"Found: kind=tune, init_model={self.init_model}, extra={len(self.extra)} datasets")
        if self.kind == "tune" and (self.batch_size is not None or self.lr is not None):
            raise ValueError("batch_size and lr are searched by kind=tune; give them only with kind=train. "
                             f"Found: batch_size={self.batch_size}, lr={self.lr}")
        return self

    def train_options(self) -> dict[str, Any]:
        """The TrainConfig (kind=train) or TuneConfig (kind=tune) fields this request sets."""
        if self.kind == "tune":
            opts = {"epochs": self.epochs, "trials": self.trials, **self.options}
        else:
            opts = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr, **self.options}
            if self.gpus:
                opts.update(use_gpu=True, num_workers=self.gpus)
        return {k: v for k, v in opts.items() if v is not None}


class JobSpec(RunRequest):
    """A request as the coordinator recorded it: the dataset resolved to its version, the model
    the run publishes and the name its checkpoints are published under."""

    model: str = Field(..., description="model/NAME@VERSION the run publishes.")
    checkpoints: str = Field(..., description="Artifact name of the run's checkpoints (checkpoint/<name>@<epoch>).")

    def request(self) -> RunRequest:
        return RunRequest(**self.model_dump(include=set(RunRequest.model_fields)))


# --- where it goes ----------------------------------------------------------------------------

class Need(_Strict):
    """What one run holds while it trains."""

    cpus: float = Field(..., ge=0)
    gpus: float = Field(0.0, ge=0)

    def fits(self, free: dict[str, float]) -> bool:
        return free.get("CPU", 0.0) >= self.cpus and free.get("GPU", 0.0) >= self.gpus

    def __str__(self) -> str:
        return f"{self.cpus:g} CPU" + (f" + {self.gpus:g} GPU" if self.gpus else "")


class SiteCapacity(_Strict):
    name: str
    reachable: bool
    free: dict[str, float] = Field(default_factory=dict, description="Free Ray resources now (CPU, GPU, memory).")
    total: dict[str, float] = Field(default_factory=dict)
    error: str | None = Field(None, description="Why the site cannot take the run.")


class Shipment(_Strict):
    ref: str
    bytes: int
    present: bool = Field(..., description="Already complete at the chosen site.")


class PlanRecord(_Strict):
    """Where a run goes and why, and what must be shipped there first."""

    origin: str
    site: str = Field(..., description="The site that runs it.")
    need: Need
    reason: str
    sites: list[SiteCapacity]
    ship: list[Shipment]
    lines: list[str] = Field(default_factory=list, description="The plan as a user reads it.")


# --- what is recorded -------------------------------------------------------------------------

class JobState(str, Enum):
    planned = "planned"
    shipping = "shipping"  # artifacts and code going to the attempt's site
    running = "running"  # the Ray job runs at the site
    finishing = "finishing"  # the model comes home (and is rolled out with deploy)
    succeeded = "succeeded"
    failed = "failed"
    stopped = "stopped"


ACTIVE = frozenset({JobState.planned, JobState.shipping, JobState.running, JobState.finishing})
TERMINAL = frozenset({JobState.succeeded, JobState.failed, JobState.stopped})


class AttemptState(str, Enum):
    shipping = "shipping"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"  # the Ray job failed at the site
    lost = "lost"  # the site (or the way to it) went away
    stopped = "stopped"


class Attempt(_Strict):
    """One site's try at a job."""

    n: int = Field(..., ge=1, description="1-based attempt number.")
    site: str
    status: AttemptState = AttemptState.shipping
    submission_id: str = Field(..., description="The Ray job submission id at the site.")
    init_checkpoint: str | None = Field(None, description="checkpoint/NAME@EPOCH the attempt resumes from.")
    reason: str = Field("", description="Why this site was chosen.")
    started_at: float = Field(default_factory=time.time)
    submitted_at: float | None = None
    ended_at: float | None = None
    error: str | None = None

    def end(self, status: AttemptState, error: str | None = None) -> None:
        self.status, self.error, self.ended_at = status, error, time.time()


class JobOutcome(_Strict):
    """What a run brought home (filled in as it goes: checkpoints while it runs, the rest at the end)."""

    checkpoints: list[str] = Field(default_factory=list, description="Checkpoints relayed to the central store.")
    model: str | None = Field(None, description="NAME@VERSION of the published model.")
    artifact: str | None = Field(None, description="model/NAME@VERSION.")
    ran_at: list[str] = Field(default_factory=list, description="Sites that ran it, in order.")
    metrics: dict[str, Any] = Field(default_factory=dict, description="Validation metrics of the model.")
    lineage: dict[str, Any] = Field(default_factory=dict)
    home: list[dict[str, Any]] = Field(default_factory=list, description="Transfers that brought the model home.")
    seconds: float | None = Field(None, description="From the first attempt's start to the model at home.")
    best: dict[str, Any] | None = Field(None, description="tune: the best trial (config, metrics, trials).")
    deployed: dict[str, Any] | None = Field(None, description="The rollout's row at the origin when deploy was asked.")
    home_at: float | None = None
    finished_at: float | None = None
    warnings: list[str] = Field(default_factory=list, description="What went wrong without failing the run.")


class Job(_Strict):
    """A training or tuning run the coordinator owns."""

    id: str
    kind: Literal["train", "tune"]
    origin: str
    status: JobState = JobState.planned
    spec: JobSpec
    plan: PlanRecord | None = None
    attempts: list[Attempt] = Field(default_factory=list)
    outcome: JobOutcome = Field(default_factory=JobOutcome)
    error: str | None = None
    created_at: str | None = None
    updated_at: str | None = None

    # Every change of state goes through these methods (the runner saves the job after each).

    @property
    def attempt(self) -> Attempt | None:
        """The latest attempt."""
        return self.attempts[-1] if self.attempts else None

    def begin_attempt(self, plan: PlanRecord, init_checkpoint: str | None) -> Attempt:
        """A new attempt at `plan.site`; the job is shipping."""
        n = len(self.attempts) + 1
        attempt = Attempt(n=n, site=plan.site, submission_id=f"adcp-{self.id}-{n}", init_checkpoint=init_checkpoint,
                          reason=plan.reason)
        self.attempts.append(attempt)
        self.status, self.plan = JobState.shipping, plan
        return attempt

    def submitted(self) -> None:
        """The latest attempt's Ray job runs at its site."""
        attempt = self._current()
        attempt.status = AttemptState.running
        attempt.submitted_at = attempt.submitted_at or time.time()
        self.status = JobState.running

    def end_attempt(self, status: AttemptState, error: str | None = None) -> None:
        """The latest attempt ended (`failed`, `lost`; `succeeded`: the model comes home now)."""
        self._current().end(status, error)
        if status == AttemptState.succeeded:
            self.status = JobState.finishing

    def finish(self, status: JobState, error: str | None = None) -> None:
        """The job is over; an attempt still shipping or running is stopped with it."""
        if status not in TERMINAL:
            raise ValueError(f"Got {status} to finish a job with; allowed: {sorted(s.value for s in TERMINAL)}")
        attempt = self.attempt
        if attempt is not None and attempt.status in (AttemptState.shipping, AttemptState.running):
            attempt.end(AttemptState.stopped if status == JobState.stopped else AttemptState.failed, error)
        self.status, self.error = status, error

    def warn(self, message: str) -> None:
        """Record something that went wrong without failing the run (once per message)."""
        if message not in self.outcome.warnings:
            self.outcome.warnings.append(message)

    def _current(self) -> Attempt:
        if self.attempt is None:
            raise ValueError(f"Job {self.id} has no attempt yet.")
        return self.attempt
