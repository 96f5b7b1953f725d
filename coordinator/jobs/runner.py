"""Training where the capacity is: plan, ship, submit through the gateway, follow, relay
checkpoints home, fail over, bring the model home.

The coordinator process owns every run (a thread each), so a run outlives the CLI that asked for
it, and a restarted coordinator picks up runs still going: every step is recorded in the jobs
table, Ray job submission ids are chosen here (`adcp-<job>-<attempt>`), and each step is safe to
repeat (transfers skip what is already there; a submission id that exists is followed, not
submitted again).
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from configs.errors import AdcpError, InputError, JobError, SiteError
from configs.loader import Defaults, validate
from configs.models import TuneConfig
from configs.protocol import TUNE_MODULE, entrypoint
from configs.runs import TERMINAL, AttemptState, ExtraData, Job, JobSpec, JobState, Need, PlanRecord, RunRequest
from coordinator.center import bundle
from coordinator.center.core import Center
from coordinator.jobs import follow
from coordinator.jobs.planner import plan
from coordinator.state.jobs import JobRecords
from data.artifacts import ArtifactRef
from data.model_format import read_metadata

__all__ = ["Trainer"]

log = logging.getLogger("adcp.training")

_SITE_ENV = {"OMP_NUM_THREADS": "1"}
_NAME_RULE = re.compile(r"[^a-z0-9._-]+")


class Trainer:
    """Runs training jobs for the center. `deploy(ref, site)` rolls a model out (optional)."""

    def __init__(self, center: Center, defaults: Defaults,
                 deploy: Callable[[str, str], dict[str, Any]] | None = None, *, poll_s: float = 1.0,
                 lost_after_s: float = 15.0) -> None:
        self.center = center
        self.defaults = defaults
        self.deploy = deploy
        self.poll_s = poll_s
        self.lost_after_s = lost_after_s
        self.records = JobRecords(center.state)
        self._stop: set[str] = set()

    # --- what the API and CLI call --------------------------------------------------------

    def need(self, req: RunRequest) -> Need:
        if req.kind == "tune":
            cfg = self._tune_config(req, dataset="-", output="-")
            return Need(cpus=float(req.cpus or cfg.cpus_per_trial), gpus=float(req.gpus))
        cfg = self.defaults.train_config(dataset="-", output="-", **req.train_options())
        cpus = req.cpus if req.cpus is not None else cfg.num_workers * cfg.cpus_per_worker
        return Need(cpus=float(cpus), gpus=float(req.gpus))

    def plan(self, req: RunRequest, exclude: set[str] = frozenset(), init: ArtifactRef | None = None) -> PlanRecord:
        """Where `req` would run now and why (InputError/NotFoundError for a bad request,
        SiteError when no site fits)."""
        self.center.site(req.origin)  # NotFoundError naming the known sites
        refs = [self._dataset(req), *self._annotations(req), *self._init_model(req), *_extra_refs(self._extra(req)),
                self._code()] + ([init] if init else [])
        return plan(self.center, req.origin, self.need(req), refs, on=req.on, exclude=exclude)

    def start(self, req: RunRequest) -> Job:
        """Plan (raising if nothing fits), record the job and run it in a thread."""
        first = self.plan(req)
        dataset = self._dataset(req)
        name = req.model_name or f"adc-{dataset.name}"
        version = req.model_version or time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        if version in self.center.central.versions("model", name):
            raise InputError(f"Model {name}@{version} already exists; published models never change.",
                             hint="Leave --model-version out for a new one.")
        annotations = [str(a) for a in self._annotations(req)]
        init_model = [str(m) for m in self._init_model(req)]
        spec = JobSpec(**{**req.model_dump(), "dataset": str(dataset), "annotations": (annotations or [None])[0],
                          "init_model": (init_model or [None])[0],
                          "extra": [e.model_dump() for e in self._extra(req)]},
                       model=f"model/{name}@{version}",
                       checkpoints=_sanitise(f"{name}-{version}"))
        job = self._save(Job(id=uuid.uuid4().hex[:10], kind=req.kind, origin=req.origin, spec=spec, plan=first))
        self._launch(job.id)
        return job

    def resume_active(self) -> list[str]:
        """Pick up every job a previous coordinator left running."""
        ids = [j.id for j in self.records.active()]
        for job_id in ids:
            self._launch(job_id)
        return ids

    def job(self, job_id: str) -> Job:
        return self.records.get(job_id)

    def jobs(self, limit: int = 50) -> list[Job]:
        return self.records.list(limit)

    def logs(self, job_id: str, attempt: int = -1) -> str:
        """The Ray job logs of one attempt (the latest by default), read through the gateway."""
        job = self.job(job_id)
        if not job.attempts:
            return ""
        a = job.attempts[attempt]
        try:
            return self.center.job_client(a.site).get_job_logs(a.submission_id)
        except Exception as e:  # the site may be gone; say so instead of failing
            return f"(logs of {a.submission_id} at {a.site} are not readable: {e})\n"

    def stop(self, job_id: str) -> Job:
        job = self.job(job_id)
        if job.status in TERMINAL:
            raise InputError(f"Job {job_id} already {job.status.value}.")
        self._stop.add(job_id)
        if job.attempt is not None:
            a = job.attempt
            try:
                self.center.job_client(a.site).stop_job(a.submission_id)
            except Exception as e:  # the run's thread stops it too, once the site answers
                log.warning("stopping %s at %s: %s", a.submission_id, a.site, e)
        return self.job(job_id)

    # --- the run --------------------------------------------------------------------------

    def _save(self, job: Job) -> Job:
        return self.records.save(job)

    def _launch(self, job_id: str) -> None:
        threading.Thread(target=self._run_logged, args=(job_id,), daemon=True, name=f"job-{job_id}").start()

    def _run_logged(self, job_id: str) -> None:
        try:
            self._run(job_id)
        except Exception as e:  # never lose a failure in a thread: record it on the job
            log.exception("job %s", job_id)
            job = self.job(job_id)
            job.finish(JobState.failed, str(e) if isinstance(e, AdcpError) else f"{type(e).__name__}: {e}")
            self._save(job)

    def _run(self, job_id: str) -> None:
        job = self.job(job_id)
        req = job.spec.request()
        while True:
            attempt = job.attempt
            if attempt is None or attempt.status in (AttemptState.failed, AttemptState.lost):
                if len(job.attempts) >= req.max_attempts:
                    return self._fail(job, f"gave up after {len(job.attempts)} attempts")
                init = self._last_checkpoint(job)
                # after a failure, any site that fits may take over (the origin first)
                asked = req.model_copy(update={"on": "auto"}) if job.attempts else req
                try:
                    chosen = self.plan(asked, exclude={a.site for a in job.attempts}, init=init)
                except AdcpError as e:
                    if not job.attempts:
                        raise
                    return self._fail(job, f"no other site can take over: {e}")
                attempt = job.begin_attempt(chosen, str(init) if init else None)
                self._save(job)
            if job_id in self._stop:
                return self._finish(job, JobState.stopped, "stopped by request")
            try:
                if attempt.status == AttemptState.shipping:
                    self._ship_and_submit(job, req)
                status = follow.follow(self.center, job, attempt, poll_s=self.poll_s, lost_after_s=self.lost_after_s,
                                       stopping=lambda: job_id in self._stop, save=self._save)
            except (SiteError, JobError, OSError) as e:
                job.end_attempt(AttemptState.lost, str(e))
                self._save(job)
                continue
            if status == "SUCCEEDED":
                return self._bring_home(job, req)
            if job_id in self._stop or status == "STOPPED":
                return self._finish(job, JobState.stopped, "stopped by request")
            job.end_attempt(AttemptState.failed, follow.job_message(self.center, attempt))
            self._save(job)

    def _ship_and_submit(self, job: Job, req: RunRequest) -> None:
        attempt = job.attempt
        site = attempt.site
        dataset = ArtifactRef.parse(job.spec.dataset)
        code = self._code()
        init = [ArtifactRef.parse(attempt.init_checkpoint)] if attempt.init_checkpoint else []
        annotations = [ArtifactRef.parse(job.spec.annotations)] if job.spec.annotations else []
        init_model = [ArtifactRef.parse(job.spec.init_model)] if job.spec.init_model else []
        for ref in [dataset, *annotations, *init_model, *_extra_refs(job.spec.extra), code, *init]:
            self.center.push(ref, [site])
        client = self.center.job_client(site)
        if not follow.exists(client, attempt.submission_id):
            # objects are content-addressed: the bundle's key at the site is its key at the center
            entry = self.center.central.manifest(code).entry(bundle.BUNDLE_FILE)
            client.submit_job(entrypoint=self._entrypoint(job, req, dataset, code.version),
                              submission_id=attempt.submission_id,
                              runtime_env={"working_dir": self.center.store(site).object_url(entry),
                                           "env_vars": dict(_SITE_ENV)},
                              entrypoint_num_cpus=0,
                              metadata={"adcp_job": job.id, "for": job.origin, "gpus": str(req.gpus)})
        job.submitted()
        self._save(job)

    def _entrypoint(self, job: Job, req: RunRequest, dataset: ArtifactRef, code_version: str) -> str:
        """The job's command line at the attempt's site: everything in that site's store."""
        attempt = job.attempt
        site, n = attempt.site, attempt.n
        store = self.center.store(site)
        model = ArtifactRef.parse(job.spec.model)
        common = {
            "dataset": store.manifest_url(dataset),
            "annotations": (store.manifest_url(ArtifactRef.parse(job.spec.annotations))
                            if job.spec.annotations else None),
            "output": f"{store.url}/work/models/{model.name}/{model.version}-a{n}",
            "run_name": f"{model.version}-a{n}",
            "model_name": model.name, "model_version": model.version, "site": site, "code_version": code_version,
            "artifact_store": store.url,
            "lineage": {"trained_for": job.origin, "ran_at": [a.site for a in job.attempts],
                        "job_id": job.id, "resumed_from": attempt.init_checkpoint, "dataset": str(dataset)},
        }
        if req.kind == "tune":
            cfg = self._tune_config(req, storage_path=f"{store.url}/tune/{model.name}", **common)
            return entrypoint(cfg, TUNE_MODULE)
        init = attempt.init_checkpoint
        extra = job.spec.extra
        cfg = self.defaults.train_config(
            storage_path=f"{store.url}/checkpoints/{model.name}", checkpoint_name=job.spec.checkpoints,
            init_checkpoint=store.manifest_url(ArtifactRef.parse(init)) if init else None,
            init_model=store.manifest_url(ArtifactRef.parse(job.spec.init_model)) if job.spec.init_model else None,
            extra_dataset=[store.manifest_url(ArtifactRef.parse(e.dataset)) for e in extra] or None,
            extra_annotations=[store.manifest_url(ArtifactRef.parse(e.annotations)) for e in extra] or None,
            **common, **req.train_options())
        return entrypoint(cfg)

    def _last_checkpoint(self, job: Job) -> ArtifactRef | None:
        refs = [ArtifactRef.parse(r) for r in job.outcome.checkpoints]
        return max(refs, key=lambda r: int(r.version) if r.version.isdigit() else -1) if refs else None

    def _bring_home(self, job: Job, req: RunRequest) -> None:
        attempt = job.attempt
        job.end_attempt(AttemptState.succeeded)
        self._save(job)
        follow.relay_checkpoints(self.center, job, attempt.site, self._save)
        model = ArtifactRef.parse(job.spec.model)
        self.center.fetch(model, attempt.site)
        moved = [o.to_dict() for o in self.center.push(model, [req.origin])] if req.origin != attempt.site else []
        meta = read_metadata(self.center.central.manifest_url(model))
        out = job.outcome
        out.model, out.artifact, out.home = f"{model.name}@{model.version}", str(model), moved
        out.ran_at = [a.site for a in job.attempts]
        out.metrics, out.lineage = meta.metrics.get("val", {}), meta.lineage
        out.seconds = round(time.time() - job.attempts[0].started_at, 1)
        if job.kind == "tune":
            try:
                out.best = follow.tune_summary(self.center, attempt)
            except Exception as e:  # the model is home; only the summary of the search is missing
                log.warning("job %s: tune summary: %s", job.id, e)
                job.warn(f"the search's best trial could not be read from its logs: {type(e).__name__}: {e}")
        out.home_at = time.time()
        self._save(job)
        if req.deploy:
            if self.deploy is None:
                raise JobError("This coordinator cannot roll models out.")
            out.deployed = self.deploy(str(model), req.origin)
        out.finished_at = time.time()
        self._finish(job, JobState.succeeded)

    def _finish(self, job: Job, status: JobState, error: str | None = None) -> None:
        job.finish(status, error)
        self._save(job)

    def _fail(self, job: Job, why: str) -> None:
        tried = "; ".join(f"{a.site}: {a.error or a.status.value}" for a in job.attempts)
        self._finish(job, JobState.failed, f"{why} ({tried})" if tried else why)

    # --- helpers --------------------------------------------------------------------------

    def _tune_config(self, req: RunRequest, **fields: Any) -> TuneConfig:
        return validate(TuneConfig, {**req.train_options(), **fields}, "tune options")

    def _dataset(self, req: RunRequest) -> ArtifactRef:
        ref = ArtifactRef.parse(req.dataset if "/" in req.dataset else f"dataset/{req.dataset}")
        if ref.kind != "dataset":
            raise InputError(f"Got {ref} for the dataset.", allowed="NAME[@VERSION] or dataset/NAME[@VERSION]")
        return self.center.central.resolve(ref)

    def _annotations(self, req: RunRequest) -> list[ArtifactRef]:
        """The annotations artifact a run trains with, resolved to its version ([] for none)."""
        if not req.annotations:
            return []
        ref = ArtifactRef.parse(req.annotations if "/" in req.annotations else f"annotations/{req.annotations}")
        if ref.kind != "annotations":
            raise InputError(f"Got {ref} for the annotations.",
                             allowed="NAME[@VERSION] or annotations/NAME[@VERSION]")
        return [self.center.central.resolve(ref)]

    def _init_model(self, req: RunRequest) -> list[ArtifactRef]:
        """The model a run fine-tunes from, resolved to its version ([] for none)."""
        if not req.init_model:
            return []
        ref = ArtifactRef.parse(req.init_model if "/" in req.init_model else f"model/{req.init_model}")
        if ref.kind != "model":
            raise InputError(f"Got {ref} for the model to start from.",
                             allowed="NAME@VERSION or model/NAME@VERSION")
        return [self.center.central.resolve(ref)]

    def _extra(self, req: RunRequest) -> list[ExtraData]:
        """The extra datasets and annotations of a run, each resolved to its version (as kind/NAME@V)."""
        out = []
        for e in req.extra:
            refs = []
            for kind, name in (("dataset", e.dataset), ("annotations", e.annotations)):
                ref = ArtifactRef.parse(name if "/" in name else f"{kind}/{name}")
                if ref.kind != kind:
                    raise InputError(f"Got {ref} for extra {kind}.", allowed=f"NAME[@VERSION] or {kind}/NAME[@VERSION]")
                refs.append(str(self.center.central.resolve(ref)))
            out.append(ExtraData(dataset=refs[0], annotations=refs[1]))
        return out

    def _code(self) -> ArtifactRef:
        """The code bundle of this checkout, published to the central store (once per content)."""
        return ArtifactRef("code", bundle.BUNDLE_NAME, bundle.publish(self.center.central).version)


def _extra_refs(extra: list[ExtraData]) -> list[ArtifactRef]:
    return [ArtifactRef.parse(name) for e in extra for name in (e.dataset, e.annotations)]


def _sanitise(name: str) -> str:
    name = _NAME_RULE.sub("-", name.lower()).strip("-._") or "adc"
    return name[:63]
