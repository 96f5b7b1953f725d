"""The ADC Ray Serve application: `serve_apps.adc:app` (or `serve_apps.adc:build_app`).

One deployment with a FastAPI ingress. Requests are decoded and preprocessed per request, then
share forward passes through one `@serve.batch` method (single images and the chunks of batch
requests alike). `user_config` (`configs.models.ServeUserConfig`) names the model; changing
`model_uri` loads the new model fully, then swaps one reference, so no request fails.
`shadow_model_uri` / `shadow_rate` run a challenger beside it off the request path
(serve_apps.shadow): callers always get the champion's answer.

With `ADCP_REVIEW_DB_URL` and `ADCP_SITE_STORE` in the replica's environment (the site's Serve
config sets them), every `review` decision and an `audit_rate` share of automatic ones are
recorded for the review station (serve_apps.recorder), off the request path.

Deploy, e.g. through a Serve config file or `PUT /api/serve/applications/`::

    applications:
      - name: adc
        import_path: serve_apps.adc:app
        route_prefix: /
        deployments:
          - name: ADCDeployment
            user_config: {model_uri: "s3://store/models/adc/3", max_batch_size: 64}
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
import torch
from ray import serve
from ray.serve import Application

from configs.models import ServeConfig, ServeUserConfig
from serve_apps.api import build_api
from serve_apps.classifier import AdcService, LoadedModel, torch_threads
from serve_apps.metrics import AppMetrics, RecorderMetrics
from serve_apps.recorder import from_env as recorder_from_env
from serve_apps.shadow import ShadowRunner

__all__ = [
    "ADCDeployment",
    "app",
    "build_app",
]

logger = logging.getLogger("ray.serve")
_DEFAULTS = ServeConfig()
_OVERSIZED = "Size of item is greater than max_batch_size"


@dataclass(eq=False)
class _Job:
    """One chunk of one request: preprocessed images and the model they were prepared for."""

    model: LoadedModel
    x: np.ndarray


def _job_sizes(jobs: list[_Job]) -> int:
    # A batch counts images, not requests: a 64-image chunk fills a batch of 64 alone.
    return sum(len(j.x) for j in jobs)


def _forward_jobs(jobs: list[_Job]) -> list[np.ndarray]:
    """Run each model's jobs in one forward pass. Jobs prepared for an older model (in flight
    during a swap) run on that model, so their answers stay consistent."""
    out: list[np.ndarray | None] = [None] * len(jobs)
    groups: dict[int, list[int]] = {}
    for i, job in enumerate(jobs):
        groups.setdefault(id(job.model.module), []).append(i)  # thresholds aside, the same program
    for idx in groups.values():
        model = jobs[idx[0]].model
        x = jobs[idx[0]].x if len(idx) == 1 else np.concatenate([jobs[i].x for i in idx])
        probs = model.forward(x)
        start = 0
        for i in idx:
            n = len(jobs[i].x)
            out[i] = probs[start : start + n]
            start += n
    return out  # type: ignore[return-value]


@serve.deployment(
    ray_actor_options={"num_cpus": _DEFAULTS.replica_cpus},
    max_ongoing_requests=_DEFAULTS.max_ongoing_requests,
    health_check_period_s=5,  # also re-records the model gauge (check_health), within Ray's 10 s export
)
@serve.ingress()
class ADCDeployment:
    """Ray Serve replica: the service, its batched forward pass, and the FastAPI app."""

    def __init__(self) -> None:
        assigned = ray.get_runtime_context().get_assigned_resources()
        threads = torch_threads(assigned.get("CPU"))
        torch.set_num_threads(threads)
        device = "cuda" if assigned.get("GPU") and torch.cuda.is_available() else "cpu"
        self._max_batch_size = ServeUserConfig().max_batch_size
        self.service = AdcService(
            runner=self._run, chunk=lambda: self._max_batch_size, device=device
        )
        self.metrics = AppMetrics()  # on the site's Ray metrics endpoint (serve_apps.metrics)
        # Recording for review: on when the site's env names a review DB and a store.
        self.recorder = recorder_from_env(ServeUserConfig().audit_rate, RecorderMetrics())
        # The challenger beside the champion (user_config.shadow_*); its answers go to the recorder.
        self.shadow = ShadowRunner(self.recorder, device=device)
        logger.info("ADC replica: %s, %s torch threads (assigned %s), review recording %s", device, threads,
                    assigned, "on" if self.recorder else "off")

    def __serve_build_asgi_app__(self):
        return build_api(self.service, self.metrics, self.recorder, self.shadow)

    def __del__(self) -> None:
        # Serve calls this when it stops the replica: write what is still queued.
        shadow = getattr(self, "shadow", None)
        if shadow is not None:
            shadow.close(timeout=5.0)
        recorder = getattr(self, "recorder", None)
        if recorder is not None:
            recorder.close(timeout=5.0)

    def check_health(self) -> None:
        """Serve calls this every `health_check_period_s` (10 s): a cheap liveness answer, and the
        moment to re-record the model gauge so it stays on the metrics endpoint without traffic."""
        self.metrics.refresh()

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply `user_config`: load a changed model off the event loop, then swap it in.

        A bad config or model raises only while no model serves (see AdcService.reconfigure).
        """
        old = self.service.model
        await asyncio.to_thread(self.service.reconfigure, user_config)
        cfg = self.service.config  # the configuration in effect
        # Then the shadow (never raises: a broken challenger leaves the champion as it is).
        await asyncio.to_thread(self.shadow.configure, cfg, self.service.model)
        self._batched.set_max_batch_size(cfg.max_batch_size)
        self._batched.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)
        self._max_batch_size = cfg.max_batch_size
        new = self.service.model
        self.metrics.model(new.model_id if new else None)
        if self.service.reconfigure_error:
            logger.error(
                "ADC reconfigure kept %s: %s", old.model_id, self.service.reconfigure_error
            )
        elif new is not old:
            logger.info(
                "ADC model: %s -> %s",
                old.model_id if old else None,
                new.model_id if new else None,
            )

    async def _run(self, model: LoadedModel, x: np.ndarray) -> np.ndarray:
        try:
            return await self._batched(_Job(model, x))
        except RuntimeError as e:
            # max_batch_size was lowered after this chunk was cut: run it on its own.
            if _OVERSIZED not in str(e):
                raise
            return model.forward(x)

    @serve.batch(
        max_batch_size=ServeUserConfig().max_batch_size,
        batch_wait_timeout_s=ServeUserConfig().batch_wait_timeout_s,
        batch_size_fn=_job_sizes,
    )
    async def _batched(self, jobs: list[_Job]) -> list[np.ndarray]:
        # On the event loop, not in a worker thread: a replica has one CPU's worth of torch
        # threads, and handing each batch to a thread cost ~10 % more CPU per request (GIL
        # hand-offs between the loop and the exported module's Python) for no throughput.
        return _forward_jobs(jobs)


def build_app(args: dict[str, Any]) -> Application:
    """The app from `serve run serve_apps.adc:build_app key=value ...` or a config's `args`.

    Keys: `ServeConfig` deployment fields (num_replicas, replica_cpus, replica_gpus,
    max_ongoing_requests) and `ServeUserConfig` fields, flat or under `user_config`.
    """
    args = dict(args or {})
    user = dict(args.pop("user_config", None) or {})
    for key in list(args):
        if key in ServeUserConfig.model_fields:
            user[key] = args.pop(key)
    cfg = ServeConfig.model_validate({**args, "user_config": user})
    actor: dict[str, Any] = {"num_cpus": cfg.replica_cpus}
    if cfg.replica_gpus:
        actor["num_gpus"] = cfg.replica_gpus
    return ADCDeployment.options(
        num_replicas=cfg.num_replicas,
        max_ongoing_requests=cfg.max_ongoing_requests,
        ray_actor_options=actor,
        user_config=cfg.user_config.model_dump(),
    ).bind()


app = ADCDeployment.bind()
