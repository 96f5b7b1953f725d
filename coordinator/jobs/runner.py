"""Training where the capacity is: plan, ship, submit through the gateway, follow, relay
checkpoints home, fail over, bring the model home.

The coordinator process owns every run (a thread each), so a run outlives the CLI that asked for
it, and a restarted coordinator picks up runs still going: every step is recorded in the jobs
table, Ray job submission ids are chosen here (`adcp-<job>-<attempt>`), and each step is safe to
repeat (transfers skip what is already there; a submission id that exists is followed, not
submitted again).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable

from configs.errors import AdcpError, InputError, JobError, NotFoundError, SiteError
from configs.loader import Defaults, validate
from coordinator.center import bundle
from coordinator.jobs import entrypoint as jobs
from coordinator.center.core import Center
from coordinator.jobs.planner import Need, Plan, plan
from data.artifacts import ArtifactRef
from data.model_format import read_metadata
from data.transfer import copy_artifact

log = logging.getLogger("adcp.training")

ACTIVE = ("planned", "shipping", "running", "finishing")
TERMINAL = ("succeeded", "failed", "stopped")
_SITE_ENV = {"OMP_NUM_THREADS": "1"}
_NAME_RULE = re.compile(r"[^a-z0-9._-]+")


@dataclass
class TrainRequest:
    """What `adcp train --for ...` asks for (also the JSON body of POST /api/v1/jobs)."""

    origin: str
    dataset: str  # NAME[@VERSION] of a dataset artifact in the central store
    on: str | None = None  # a site, "auto", or None: the origin if it fits, else auto
    gpus: int = 0
    cpus: float | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    model_name: str | None = None
    model_version: str | None = None
    deploy: bool = False
    max_attempts: int = 3
    kind: str = "train"  # or "tune": a Ray Tune search (train_jobs.tune), the best trial exported
    trials: int | None = None
    options: dict[str, Any] = field(default_factory=dict)  # other TrainConfig/TuneConfig fields

    def train_options(self) -> dict[str, Any]:
        if self.kind == "tune":
            return {k: v for k, v in {"epochs": self.epochs, "trials": self.trials, **self.options}.items()
                    if v is not None}
        opts = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr, **self.options}
        if self.gpus:
            opts.update(use_gpu=True, num_workers=self.gpus)
        return {k: v for k, v in opts.items() if v is not None}


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
        self._threads: dict[str, threading.Thread] = {}
        self._stop: set[str] = set()

    # --- what the API and CLI call --------------------------------------------------------

    def need(self, req: TrainRequest) -> Need:
        if req.kind == "tune":
            cfg = self._tune_config(req, dataset="-", output="-")
            return Need(cpus=float(req.cpus or cfg.cpus_per_trial), gpus=float(req.gpus))
        cfg = self.defaults.train_config(dataset="-", output="-", **req.train_options())
        cpus = req.cpus if req.cpus is not None else cfg.num_workers * cfg.cpus_per_worker
        return Need(cpus=float(cpus), gpus=float(req.gpus))

    def plan(self, req: TrainRequest, exclude: set[str] = frozenset(), init: ArtifactRef | None = None) -> Plan:
        self._check(req)
        dataset = self._dataset(req)
        refs = [dataset, self._code().ref] + ([init] if init else [])
        return plan(self.center, req.origin, self.need(req), refs, on=req.on, exclude=exclude)

    def start(self, req: TrainRequest) -> dict[str, Any]:
        """Plan (raising if nothing fits), record the job and run it in a thread."""
        first = self.plan(req)
        dataset = self._dataset(req)
        name = req.model_name or f"adc-{dataset.name}"
        version = req.model_version or time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        if version in self.center.central.versions("model", name):
            raise InputError(f"Model {name}@{version} already exists; published models never change.",
                             hint="Leave --model-version out for a new one.")
        job = {
            "id": uuid.uuid4().hex[:10], "kind": req.kind, "origin": req.origin, "status": "planned",
            "spec": {**asdict(req), "dataset": str(dataset), "model": f"model/{name}@{version}",
                     "checkpoints": _sanitise(f"{name}-{version}")},
            "plan": first.to_dict(), "attempts": [], "outcome": {"checkpoints": []}, "error": None,
        }
        self.center.state.put_job(job)
        self._launch(job["id"])
        return job

    def resume_active(self) -> list[str]:
        """Pick up every job a previous coordinator left running."""
        ids = [j["id"] for j in self.center.state.jobs(active=True)]
        for job_id in ids:
            self._launch(job_id)
        return ids

    def job(self, job_id: str) -> dict[str, Any]:
        rows = self.center.state.jobs(job_id=job_id)
        if not rows:
            raise NotFoundError(f"No job {job_id}.", hint="List jobs with `adcp jobs`.")
        return rows[0]

    def jobs(self, limit: int = 50) -> list[dict[str, Any]]:
        return self.center.state.jobs(limit)

    def logs(self, job_id: str, attempt: int = -1) -> str:
        """The Ray job logs of one attempt (the latest by default), read through the gateway."""
        job = self.job(job_id)
        if not job["attempts"]:
            return ""
        a = job["attempts"][attempt]
        try:
            return self.center.job_client(a["site"]).get_job_logs(a["submission_id"])
        except Exception as e:  # the site may be gone; say so instead of failing
            return f"(logs of {a['submission_id']} at {a['site']} are not readable: {e})\n"

    def stop(self, job_id: str) -> dict[str, Any]:
        job = self.job(job_id)
        if job["status"] in TERMINAL:
            raise InputError(f"Job {job_id} already {job['status']}.")
        self._stop.add(job_id)
        if job["attempts"]:
            a = job["attempts"][-1]
            try:
                self.center.job_client(a["site"]).stop_job(a["submission_id"])
            except Exception as e:
                log.warning("stopping %s at %s: %s", a["submission_id"], a["site"], e)
        return self.job(job_id)

    def wait(self, job_id: str, timeout_s: float | None = None) -> None:
        t = self._threads.get(job_id)
        if t is not None:
            t.join(timeout_s)

    # --- the run --------------------------------------------------------------------------

    def _launch(self, job_id: str) -> None:
        t = threading.Thread(target=self._run_logged, args=(job_id,), daemon=True, name=f"job-{job_id}")
        self._threads[job_id] = t
        t.start()

    def _run_logged(self, job_id: str) -> None:
        try:
            self._run(job_id)
        except Exception as e:  # never lose a failure in a thread: record it on the job
            log.exception("job %s", job_id)
            job = self.job(job_id)
            job.update(status="failed", error=str(e) if isinstance(e, AdcpError) else f"{type(e).__name__}: {e}")
            self.center.state.put_job(job)

    def _run(self, job_id: str) -> None:
        job = self.job(job_id)
        req = TrainRequest(**{k: v for k, v in job["spec"].items() if k in TrainRequest.__dataclass_fields__})
        while True:
            attempt = job["attempts"][-1] if job["attempts"] else None
            if attempt is None or attempt["status"] in ("failed", "lost"):
                failed_sites = {a["site"] for a in job["attempts"]}
                if len(job["attempts"]) >= req.max_attempts:
                    return self._fail(job, f"gave up after {len(job['attempts'])} attempts")
                init = self._last_checkpoint(job)
                # after a failure, any site that fits may take over (the origin first)
                asked = replace(req, on="auto") if job["attempts"] else req
                try:
                    chosen = self.plan(asked, exclude=failed_sites, init=init)
                except AdcpError as e:
                    if not job["attempts"]:
                        raise
                    return self._fail(job, f"no other site can take over: {e}")
                attempt = {"n": len(job["attempts"]) + 1, "site": chosen.site, "status": "shipping",
                           "submission_id": f"adcp-{job['id']}-{len(job['attempts']) + 1}",
                           "init_checkpoint": str(init) if init else None, "reason": chosen.reason,
                           "started_at": time.time()}
                job["attempts"].append(attempt)
                job.update(status="shipping", plan=chosen.to_dict())
                self.center.state.put_job(job)
            if job_id in self._stop:
                return self._finish(job, "stopped", error="stopped by request")
            try:
                if attempt["status"] == "shipping":
                    self._ship_and_submit(job, req, attempt)
                status = self._follow(job, attempt)
            except (SiteError, JobError, OSError) as e:
                attempt.update(status="lost", error=str(e), ended_at=time.time())
                self.center.state.put_job(job)
                continue
            if status == "SUCCEEDED":
                return self._bring_home(job, req, attempt)
            if job_id in self._stop or status == "STOPPED":
                return self._finish(job, "stopped", error="stopped by request")
            attempt.update(status="failed", ended_at=time.time(), error=self._job_message(attempt))
            self.center.state.put_job(job)

    def _ship_and_submit(self, job: dict[str, Any], req: TrainRequest, attempt: dict[str, Any]) -> None:
        site = attempt["site"]
        store = self.center.store(site)
        dataset = ArtifactRef.parse(job["spec"]["dataset"])
        code = self._code()
        refs = [dataset, code.ref] + ([ArtifactRef.parse(attempt["init_checkpoint"])] if attempt["init_checkpoint"] else [])
        for ref in refs:
            self.center.push(ref, [site])
        client = self.center.job_client(site)
        if not _exists(client, attempt["submission_id"]):
            # objects are content-addressed: the bundle's key at the site is its key at the center
            working_dir = store.object_url(self.center.central.manifest(code.ref).entry(bundle.BUNDLE_FILE))
            client.submit_job(entrypoint=self._entrypoint(job, req, attempt, dataset, code.ref.version),
                              submission_id=attempt["submission_id"],
                              runtime_env={"working_dir": working_dir, "env_vars": dict(_SITE_ENV)},
                              entrypoint_num_cpus=0,
                              metadata={"adcp_job": job["id"], "for": job["origin"], "gpus": str(req.gpus)})
        attempt.update(status="running", submitted_at=attempt.get("submitted_at") or time.time())
        job["status"] = "running"
        self.center.state.put_job(job)

    def _entrypoint(self, job: dict[str, Any], req: TrainRequest, attempt: dict[str, Any], dataset: ArtifactRef,
                    code_version: str) -> str:
        """The job's command line at the attempt's site: everything in that site's store."""
        site, n = attempt["site"], attempt["n"]
        store = self.center.store(site)
        model = ArtifactRef.parse(job["spec"]["model"])
        common = {
            "dataset": store.manifest_url(dataset),
            "output": f"{store.url}/work/models/{model.name}/{model.version}-a{n}",
            "run_name": f"{model.version}-a{n}",
            "model_name": model.name, "model_version": model.version, "site": site, "code_version": code_version,
            "artifact_store": store.url,
            "lineage": {"trained_for": job["origin"], "ran_at": [a["site"] for a in job["attempts"]],
                        "job_id": job["id"], "resumed_from": attempt["init_checkpoint"], "dataset": str(dataset)},
        }
        if req.kind == "tune":
            cfg = self._tune_config(req, storage_path=f"{store.url}/tune/{model.name}", **common)
            return jobs.entrypoint(cfg, jobs.TUNE_MODULE)
        init = attempt["init_checkpoint"]
        cfg = self.defaults.train_config(
            storage_path=f"{store.url}/checkpoints/{model.name}", checkpoint_name=job["spec"]["checkpoints"],
            init_checkpoint=store.manifest_url(ArtifactRef.parse(init)) if init else None,
            **common, **req.train_options())
        return jobs.entrypoint(cfg)

    def _follow(self, job: dict[str, Any], attempt: dict[str, Any]) -> str:
        """Poll the Ray job until it ends, relaying checkpoints home; SiteError if the site is lost."""
        last_seen = time.monotonic()
        while True:
            try:
                status = self.center.job_client(attempt["site"]).get_job_status(attempt["submission_id"])
                last_seen = time.monotonic()
            except Exception as e:  # connection refused, site stopped, 5xx: lost only after a grace time
                if time.monotonic() - last_seen > self.lost_after_s:
                    raise SiteError(f"{attempt['site']} unreachable for {self.lost_after_s:.0f} s: {e}") from e
                time.sleep(self.poll_s)
                continue
            self._relay_checkpoints(job, attempt["site"])
            if status.is_terminal():
                return status.value
            if job["id"] in self._stop:
                self.center.job_client(attempt["site"]).stop_job(attempt["submission_id"])
            time.sleep(self.poll_s)  # poll interval of a job that runs for minutes

    def _relay_checkpoints(self, job: dict[str, Any], site: str) -> None:
        """Copy every new checkpoint artifact at the site to the central store."""
        if not self.center.reachable(site):
            return  # a pull-mode site's store is out of reach; its checkpoints stay there
        name = job["spec"]["checkpoints"]
        store = self.center.store(site)
        try:
            versions = store.versions("checkpoint", name)
        except (OSError, AdcpError):
            return
        relayed = job["outcome"].setdefault("checkpoints", [])
        for v in versions:
            ref = f"checkpoint/{name}@{v}"
            if ref not in relayed:
                copy_artifact(store, self.center.central, ArtifactRef("checkpoint", name, v))
                relayed.append(ref)
                self.center.state.put_job(job)

    def _last_checkpoint(self, job: dict[str, Any]) -> ArtifactRef | None:
        relayed = (job.get("outcome") or {}).get("checkpoints") or []
        if not relayed:
            return None
        refs = [ArtifactRef.parse(r) for r in relayed]
        return max(refs, key=lambda r: int(r.version) if r.version.isdigit() else -1)

    def _bring_home(self, job: dict[str, Any], req: TrainRequest, attempt: dict[str, Any]) -> None:
        job["status"] = "finishing"
        attempt.update(status="succeeded", ended_at=time.time())
        self.center.state.put_job(job)
        self._relay_checkpoints(job, attempt["site"])
        model = ArtifactRef.parse(job["spec"]["model"])
        self.center.fetch(model, attempt["site"])
        moved = []
        if req.origin != attempt["site"]:
            moved = [o.to_dict() for o in self.center.push(model, [req.origin])]
        meta = read_metadata(self.center.central.manifest_url(model))
        outcome = {**job["outcome"], "model": f"{model.name}@{model.version}", "artifact": str(model),
                   "ran_at": [a["site"] for a in job["attempts"]],
                   "metrics": meta.metrics.get("val", {}), "lineage": meta.lineage, "home": moved,
                   "seconds": round(time.time() - job["attempts"][0]["started_at"], 1)}
        if job["kind"] == "tune":
            outcome["best"] = self._tune_summary(attempt)
        job["outcome"] = outcome
        self.center.state.put_job(job)
        outcome["home_at"] = time.time()
        if req.deploy:
            if self.deploy is None:
                raise JobError("This coordinator cannot roll models out.")
            outcome["deployed"] = self.deploy(str(model), req.origin)
        outcome["finished_at"] = time.time()
        self._finish(job, "succeeded")

    def _finish(self, job: dict[str, Any], status: str, error: str | None = None) -> None:
        job.update(status=status, error=error)
        self.center.state.put_job(job)

    def _fail(self, job: dict[str, Any], why: str) -> None:
        tried = "; ".join(f"{a['site']}: {a.get('error') or a['status']}" for a in job["attempts"])
        self._finish(job, "failed", error=f"{why} ({tried})" if tried else why)

    def _tune_summary(self, attempt: dict[str, Any]) -> dict[str, Any] | None:
        """The best trial, from the `ADCP_TUNE {...}` line the search printed."""
        logs = self.center.job_client(attempt["site"]).get_job_logs(attempt["submission_id"])
        for line in reversed(logs.splitlines()):
            if "ADCP_TUNE " in line:
                try:
                    summary = json.loads(line.split("ADCP_TUNE ", 1)[1])
                except ValueError:
                    return None
                return {"config": summary.get("best"), "metrics": summary.get("metrics"),
                        "trials": len(summary.get("trials") or [])}
        return None

    def _job_message(self, attempt: dict[str, Any]) -> str:
        try:
            info = self.center.job_client(attempt["site"]).get_job_info(attempt["submission_id"])
            return f"Ray job {info.status}: {info.message or ''}".strip()
        except Exception as e:
            return f"Ray job failed ({e})"

    # --- helpers --------------------------------------------------------------------------

    def _check(self, req: TrainRequest) -> None:
        self.center.site(req.origin)
        if req.gpus < 0 or (req.cpus is not None and req.cpus <= 0):
            raise InputError("GPUs must be >= 0 and CPUs > 0.")
        if not 1 <= req.max_attempts <= 10:
            raise InputError(f"Got {req.max_attempts} for max attempts.", allowed="1 to 10")
        if req.kind not in ("train", "tune"):
            raise InputError(f"Got {req.kind} for the job kind.", allowed="train, tune")
        if req.kind == "tune":
            self._tune_config(req, dataset="-", output="-")
        else:
            self.defaults.train_config(dataset="-", output="-", **req.train_options())

    def _tune_config(self, req: TrainRequest, **fields: Any) -> Any:
        from configs.models import TuneConfig

        return validate(TuneConfig, {**req.train_options(), **fields}, "tune options")

    def _dataset(self, req: TrainRequest) -> ArtifactRef:
        ref = req.dataset if "/" in req.dataset else f"dataset/{req.dataset}"
        ref = ArtifactRef.parse(ref)
        if ref.kind != "dataset":
            raise InputError(f"Got {ref} for the dataset.", allowed="NAME[@VERSION] or dataset/NAME[@VERSION]")
        return self.center.central.resolve(ref)

    def _code(self) -> Any:
        code = bundle.publish(self.center.central)
        return _Code(ArtifactRef("code", bundle.BUNDLE_NAME, code.version), code.uri)


@dataclass(frozen=True)
class _Code:
    ref: ArtifactRef
    uri: str


def _exists(client: Any, submission_id: str) -> bool:
    try:
        client.get_job_info(submission_id)
        return True
    except RuntimeError:  # Ray answers 404 as RuntimeError
        return False


def _sanitise(name: str) -> str:
    name = _NAME_RULE.sub("-", name.lower()).strip("-._") or "adc"
    return name[:63]

