"""Training runs as KubeRay RayJobs through Karmada, behind the interface of Ray's
`JobSubmissionClient` that the coordinator's trainer already drives.

`submit_job` renders a RayJob (its `spec.jobId` = the submission id) and a PropagationPolicy pinning
it to the site's cluster, and server-side-applies both to the Karmada apiserver; KubeRay in the
member cluster submits the job, and Karmada aggregates the RayJob's status back into the template,
which `get_job_status` reads. Logs and job details come from the site's Ray jobs API through the
gateway, where the same submission id names the job.
"""

from __future__ import annotations

import functools
import logging
from types import SimpleNamespace
from typing import Any

from configs.errors import NotFoundError
from configs.platform import PlatformConfig, SiteConfig
from karmada import render
from karmada.kube import Kube
from raycluster.gateway import SiteGateway

__all__ = ["RayJobClient"]

log = logging.getLogger("adcp.karmada")

#: KubeRay's `status.jobStatus` values are Ray's job states; an unset one means not submitted yet.
_STATES = ("PENDING", "RUNNING", "STOPPED", "SUCCEEDED", "FAILED")


class RayJobClient:
    """submit_job / get_job_status / stop_job / get_job_logs / get_job_info for one karmada site."""

    def __init__(self, platform: PlatformConfig, site: SiteConfig, gateway: SiteGateway) -> None:
        self.platform, self.site, self.gateway = platform, site, gateway
        cfg = platform.karmada
        self._kubeconfig = site.gateway.kubeconfig or cfg.kubeconfig
        self._context = site.gateway.context or cfg.context

    def _kube(self) -> Kube:
        return _connection(self._kubeconfig, self._context)

    def _name_ns(self, submission_id: str) -> tuple[str, str]:
        job = self.objects(submission_id, "true", {})[0]
        return job["metadata"]["name"], job["metadata"]["namespace"]

    def objects(self, submission_id: str, entrypoint: str, runtime_env: dict[str, Any], gpus: int = 0) -> list[dict]:
        """[RayJob, pinned PropagationPolicy] of a submission."""
        return render.training_job(self.platform, self.site.name, name=submission_id, entrypoint=entrypoint,
                                   runtime_env=runtime_env, gpus=gpus, cluster=self.site.gateway.rayjob_cluster,
                                   job_id=submission_id)

    def submit_job(self, *, entrypoint: str, submission_id: str, runtime_env: dict[str, Any] | None = None,
                   metadata: dict[str, str] | None = None, **_: Any) -> str:
        gpus = int((metadata or {}).get("gpus", "0") or 0)
        self._kube().apply(self.objects(submission_id, entrypoint, runtime_env or {}, gpus))
        return submission_id

    def rayjob(self, submission_id: str) -> dict[str, Any]:
        """The RayJob's status fields (NotFoundError when there is no such RayJob)."""
        name, ns = self._name_ns(submission_id)
        return self._kube().rayjob_status(name, ns)

    def get_job_status(self, submission_id: str) -> Any:
        from ray.job_submission import JobStatus

        status = self.rayjob(submission_id)
        state = status.get("jobStatus")
        if state in _STATES:
            return JobStatus(state)
        if status.get("jobDeploymentStatus") == "Failed":  # e.g. the cluster never came up
            return JobStatus.FAILED
        return JobStatus.PENDING

    def stop_job(self, submission_id: str) -> bool:
        """Delete the RayJob and its policy (Karmada removes them from the member) and stop the Ray
        job itself where it already runs (a selected cluster outlives its RayJobs)."""
        stopped = False
        try:
            stopped = bool(self.gateway.job_client().stop_job(submission_id))
        except RuntimeError as e:  # Ray's 404: KubeRay has not submitted it yet; deleting the RayJob stops it
            log.info("stop %s at %s: no Ray job yet (%s); deleting its RayJob", submission_id, self.site.name, e)
        except Exception as e:  # noqa: BLE001 - the proxy is down: deleting the RayJob still stops it
            log.warning("stop %s at %s through the jobs API failed (%s: %s); deleting its RayJob",
                        submission_id, self.site.name, type(e).__name__, e)
        kube = self._kube()
        for obj in self.objects(submission_id, "true", {}):
            try:
                kube.delete(obj)
            except NotFoundError:
                continue  # already gone: what stopping wants
        return stopped

    def get_job_logs(self, submission_id: str) -> str:
        return self.gateway.job_client().get_job_logs(submission_id)

    def get_job_info(self, submission_id: str) -> Any:
        """The Ray job's details through the jobs API; before KubeRay has submitted it, the RayJob's
        own status. RuntimeError when neither exists (what Ray's client raises for a 404)."""
        try:
            return self.gateway.job_client().get_job_info(submission_id)
        except Exception as e:  # noqa: BLE001 - not submitted yet, or the proxy is down: the RayJob says more
            jobs_api = f"{type(e).__name__}: {e}"
            log.debug("job info of %s at %s from the jobs API: %s", submission_id, self.site.name, jobs_api)
        try:
            status = self.rayjob(submission_id)
        except NotFoundError as e:
            raise RuntimeError(f"no RayJob for {submission_id}: {e} (the jobs API said {jobs_api})") from e
        message = status.get("message") or status.get("jobDeploymentStatus") or ""
        return SimpleNamespace(status=status.get("jobStatus") or "PENDING",
                               message=f"{message} (not in the jobs API yet: {jobs_api})".strip())


@functools.lru_cache(maxsize=8)
def _connection(kubeconfig: str | None, context: str | None) -> Kube:
    """One Karmada apiserver client per kubeconfig context for the process: the trainer asks for a
    job's status every poll, which should not re-read the kubeconfig each time."""
    return Kube.connect(kubeconfig, context)
