"""A site's KubeRay objects (`ray.io/v1`) built as data from its config: RayCluster, RayService,
RayJob. Pure functions returning dicts; dump them with `yaml.safe_dump(..., sort_keys=False)`.

Each site runs two Ray clusters: the RayCluster `runtime.cluster_name` for jobs (training,
transfers; KubeRay serves it as `<name>-head-svc`) and the RayService `<name>-serve` for the ADC
inference app and the review station (`serve_apps.review:app` at `/review`; services
`<name>-serve-head-svc`, `<name>-serve-serve-svc`). The RayService's containers carry the apps'
environment (`configs.site_env`); the review DB URL comes from the Secret
`SiteConfig.review_db_secret` (key `url`) through `secretKeyRef`, which the operator creates:

    kubectl -n <namespace> create secret generic adcp-review-db-<site> \\
        --from-literal=url=postgresql+psycopg://USER:PASSWORD@HOST/DB

Whatever the user called the cluster, group, app or job, the rendered names are DNS labels short
enough for the names KubeRay derives from them; the name as written is kept in the
`adcp.io/name` annotation.

Volcano: with `runtime.volcano_queue` set, a cluster that has a GPU worker group carries
`ray.io/scheduler-name: volcano` and `volcano.sh/queue-name`; KubeRay then gang-schedules the whole
cluster's pods (head, CPU and GPU groups) as one Volcano PodGroup in that queue.
"""

from __future__ import annotations

from typing import Any, Literal

import yaml

from configs import site_env as review_env
from configs.errors import ConfigError, InputError
from configs.kube import KubeRayRuntime, PodResources, WorkerGroupConfig
from configs.models import ServeConfig
from configs.platform import DisplayNames, SiteConfig
from raycluster._kuberay_pods import (
    MAX_NAME,
    Group,
    cluster_spec,
    cpu_count,
    kuberay_runtime,
    labels,
    metadata,
    pods_for,
    volcano_labels,
)
from raycluster.k8s_names import dns_label

API_VERSION = "ray.io/v1"
#: `import_path` of the ADC Serve app, relative to the code bundle (working_dir).
SERVE_IMPORT_PATH = "serve_apps.adc:app"
SERVE_DEPLOYMENT = "ADCDeployment"
#: The review station app beside it (configs.site_env names it once for every render).
REVIEW_IMPORT_PATH = review_env.REVIEW_IMPORT_PATH
#: RayJob.spec.submissionMode values KubeRay v1.7 accepts (rayjob_types.go; the CRD has no enum).
SUBMISSION_MODES = ("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode")

__all__ = [
    "REVIEW_IMPORT_PATH",
    "SERVE_IMPORT_PATH",
    "SUBMISSION_MODES",
    "cluster_name",
    "ray_cluster",
    "ray_job",
    "ray_service",
    "review_db_env",
    "serve_name",
    "service_names",
    "site_objects",
]


def cluster_name(site: SiteConfig) -> str:
    """The site's RayCluster name (jobs run there; KubeRay's service is `<name>-head-svc`)."""
    return dns_label(kuberay_runtime(site).cluster_name, MAX_NAME)


def serve_name(site: SiteConfig) -> str:
    """The site's RayService name: `<cluster>-serve`, at most MAX_NAME characters."""
    return f"{dns_label(kuberay_runtime(site).cluster_name, MAX_NAME - len('-serve'))}-serve"


def ray_cluster(site: SiteConfig, *, name: str | None = None) -> dict:
    """The site's RayCluster: head plus one worker group per `runtime.workers` entry.

    Raises ConfigError when the site's runtime is not `kuberay`.
    """
    rt = kuberay_runtime(site)
    groups = [Group.of(w) for w in rt.workers]
    lbl = {**labels(site, "cluster"), **volcano_labels(rt, groups)}
    meta_name = dns_label(name, MAX_NAME) if name else cluster_name(site)
    return {"apiVersion": API_VERSION, "kind": "RayCluster",
            "metadata": metadata(meta_name, rt, lbl, name or rt.cluster_name),
            "spec": cluster_spec(site, rt, groups, "cluster")}


def ray_service(site: SiteConfig, serve: ServeConfig | None = None, *, model_uri: str | None = None,
                working_dir: str | None = None, name: str | None = None, env: dict[str, str] | None = None,
                db_secret: str | None = None) -> dict:
    """The site's RayService running the ADC app (`serve_apps.adc:app`, auditing at the site's
    `review.audit_rate`) and the review station (`serve_apps.review:app`, route `/review`) on a
    cluster sized for `serve.num_replicas`: head plus one CPU group, or a GPU group when
    `serve.replica_gpus` > 0.

    `model_uri` (when given) replaces `serve.user_config.model_uri`; `working_dir` is the code
    bundle URL the apps are imported from. `env`: the apps' environment as plain container env
    (default `configs.site_env.site_env(site, DisplayNames())`); `ADCP_REVIEW_DB_URL` is never a
    plain value: it comes from the Secret `db_secret` (default `site.review_db_secret`), key `url`.
    Raises ConfigError when the runtime is not `kuberay`, or when a replica cannot fit the site's
    pods (e.g. GPU replicas on a site without GPU groups).
    """
    rt = kuberay_runtime(site)
    serve = serve or ServeConfig()
    groups = [_serve_group(rt, serve)]
    lbl = {**labels(site, "serve"), **volcano_labels(rt, groups)}
    meta_name = dns_label(name, MAX_NAME) if name else serve_name(site)
    plain = review_env.site_env(site, DisplayNames()) if env is None else env
    container_env = [{"name": k, "value": v} for k, v in plain.items() if k != review_env.REVIEW_DB_URL]
    container_env.append(review_db_env(db_secret or site.review_db_secret))
    spec = {
        "serveConfigV2": yaml.safe_dump(_serve_config(site, rt, serve, model_uri, working_dir), sort_keys=False),
        # Zero downtime: the old cluster serves until the new one is ready.
        "upgradeStrategy": {"type": "NewCluster"},
        "rayClusterConfig": cluster_spec(site, rt, groups, "serve", serve=True, env=container_env),
    }
    return {"apiVersion": API_VERSION, "kind": "RayService",
            "metadata": metadata(meta_name, rt, lbl, name or f"{rt.cluster_name}-serve"), "spec": spec}


def ray_job(site: SiteConfig, *, name: str, entrypoint: str, runtime_env: dict | None = None,
            cluster: Literal["existing", "own"] = "existing", gpus: int = 0, cpus: float = 0,
            shutdown_after_finish: bool = True, ttl_s: int = 3600,
            submission_mode: str = "K8sJobMode", active_deadline_s: int | None = None,
            job_id: str | None = None) -> dict:
    """A RayJob running `entrypoint` at the site (`job_id`: the Ray submission id KubeRay uses, so
    the job's logs and status can also be read through the site's jobs API).

    `cluster="existing"` selects the site's RayCluster (`ray_cluster(site)`); KubeRay never deletes
    a selected cluster, so shutdown/TTL are left out. `cluster="own"` gives the job its own
    cluster: the site's head and worker groups, with the first GPU group sized for `gpus` GPUs and
    the first CPU group for `cpus` CPUs, deleted `ttl_s` after the job when
    `shutdown_after_finish`. `gpus`/`cpus` are what the job's Ray tasks need, not the driver's
    (entrypointNumGpus would pin a GPU to the driver that Train's workers then cannot get); on an
    existing cluster they only check that its worker groups can hold `gpus` at all.
    Raises InputError for bad arguments, ConfigError when the cluster cannot hold `gpus`.
    """
    rt = kuberay_runtime(site)
    _check_job_args(rt, name=name, entrypoint=entrypoint, cluster=cluster, gpus=gpus, cpus=cpus,
                    ttl_s=ttl_s, submission_mode=submission_mode, active_deadline_s=active_deadline_s)
    spec: dict[str, Any] = {"entrypoint": entrypoint, "submissionMode": submission_mode}
    if runtime_env:
        spec["runtimeEnvYAML"] = yaml.safe_dump(runtime_env, sort_keys=False)
    lbl = labels(site, "train")
    if cluster == "existing":
        spec["clusterSelector"] = {"ray.io/cluster": cluster_name(site)}
    else:
        groups = _job_groups(rt, gpus=gpus, cpus=cpus)
        lbl.update(volcano_labels(rt, groups) if gpus > 0 else {})
        spec["rayClusterSpec"] = cluster_spec(site, rt, groups, "train")
        spec["shutdownAfterJobFinishes"] = shutdown_after_finish
        if shutdown_after_finish:  # KubeRay rejects a TTL without shutdown
            spec["ttlSecondsAfterFinished"] = ttl_s
    if active_deadline_s is not None:
        spec["activeDeadlineSeconds"] = active_deadline_s
    if job_id:
        spec["jobId"] = job_id
    return {"apiVersion": API_VERSION, "kind": "RayJob",
            "metadata": metadata(dns_label(name, MAX_NAME), rt, lbl, name), "spec": spec}


def site_objects(site: SiteConfig, serve: ServeConfig | None = None, *, model_uri: str | None = None,
                 working_dir: str | None = None, env: dict[str, str] | None = None) -> list[dict]:
    """Everything a site runs: [RayCluster, RayService]."""
    return [ray_cluster(site), ray_service(site, serve, model_uri=model_uri, working_dir=working_dir, env=env)]


def review_db_env(secret: str) -> dict[str, Any]:
    """The container env entry giving `ADCP_REVIEW_DB_URL` from key `url` of Secret `secret`."""
    return {"name": review_env.REVIEW_DB_URL,
            "valueFrom": {"secretKeyRef": {"name": secret, "key": review_env.REVIEW_DB_SECRET_KEY}}}


def service_names(site: SiteConfig) -> dict[str, str]:
    """SERVICE:PORT of the site's dashboard and metrics (RayCluster head) and Serve (RayService),
    as the Karmada gateway's aggregated proxy URLs need them."""
    rt = kuberay_runtime(site)
    head = f"{cluster_name(site)}-head-svc"
    return {"dashboard": f"{head}:{rt.dashboard_port}",
            "serve": f"{serve_name(site)}-serve-svc:{rt.serve_port}",
            "metrics": f"{head}:{rt.metrics_port}"}


def _serve_config(site: SiteConfig, rt: KubeRayRuntime, serve: ServeConfig, model_uri: str | None,
                  working_dir: str | None) -> dict[str, Any]:
    if serve.route_prefix == review_env.REVIEW_ROUTE_PREFIX or serve.app_name == review_env.REVIEW_APP:
        raise ConfigError(f"The ADC app cannot be named {review_env.REVIEW_APP!r} or served at "
                          f"{review_env.REVIEW_ROUTE_PREFIX}: the review station has them.",
                          hint="Use another app_name / route_prefix.")
    user_config = serve.user_config.model_dump(mode="json")
    if model_uri is not None:
        user_config["model_uri"] = model_uri
    if "audit_rate" in user_config:  # ServeUserConfig.audit_rate: the site's own rate
        user_config["audit_rate"] = site.review.audit_rate
    actor: dict[str, Any] = {"num_cpus": serve.replica_cpus, "num_gpus": serve.replica_gpus}
    app: dict[str, Any] = {"name": serve.app_name, "import_path": SERVE_IMPORT_PATH,
                           "route_prefix": serve.route_prefix}
    if working_dir:
        app["runtime_env"] = {"working_dir": working_dir}
    app["deployments"] = [{"name": SERVE_DEPLOYMENT, "num_replicas": serve.num_replicas,
                           "max_ongoing_requests": serve.max_ongoing_requests,
                           "ray_actor_options": actor, "user_config": user_config}]
    review: dict[str, Any] = {"name": review_env.REVIEW_APP, "import_path": REVIEW_IMPORT_PATH,
                              "route_prefix": review_env.REVIEW_ROUTE_PREFIX}
    if working_dir:
        review["runtime_env"] = {"working_dir": working_dir}
    return {"http_options": {"host": "0.0.0.0", "port": rt.serve_port}, "applications": [app, review]}


def _first(rt: KubeRayRuntime, *, gpu: bool) -> WorkerGroupConfig | None:
    return next((w for w in rt.workers if (w.resources.gpus > 0) == gpu), None)


def _serve_group(rt: KubeRayRuntime, serve: ServeConfig) -> Group:
    """One worker group holding `serve.num_replicas` replicas, shaped like the site's first GPU
    (GPU replicas) or CPU group (otherwise)."""
    gpu = serve.replica_gpus > 0
    src = _first(rt, gpu=gpu)
    if src is None and gpu:
        raise ConfigError(
            f"Serve replicas ask for {serve.replica_gpus:g} GPU each, but runtime.workers has no GPU group.",
            allowed="replica_gpus: 0, or a worker group with resources.gpus > 0")
    src = src or WorkerGroupConfig(name="cpu", resources=PodResources())
    per_pod = _replicas_per_pod(src.resources, serve)
    pods = pods_for(serve.num_replicas, per_pod, "Serve replicas")
    return Group.of(src, name="serve-gpu" if gpu else "serve-cpu", replicas=pods)


def _replicas_per_pod(res: PodResources, serve: ServeConfig) -> int:
    fits = []
    if serve.replica_gpus > 0:
        fits.append(int(res.gpus // serve.replica_gpus))
    if serve.replica_cpus > 0:
        fits.append(int(cpu_count(res.cpu) // serve.replica_cpus))
    per_pod = min(fits) if fits else serve.num_replicas
    if per_pod < 1:
        raise ConfigError(
            f"One Serve replica ({serve.replica_cpus:g} CPU, {serve.replica_gpus:g} GPU) does not fit a "
            f"worker pod ({res.cpu} CPU, {res.gpus} GPU).",
            hint="Lower replica_cpus/replica_gpus or give the worker group bigger pods.")
    return per_pod


def _job_groups(rt: KubeRayRuntime, *, gpus: int, cpus: float) -> list[Group]:
    gpu_src, cpu_src = _first(rt, gpu=True), _first(rt, gpu=False)
    if gpus > 0 and gpu_src is None:
        raise ConfigError(f"The job asks for {gpus} GPUs, but runtime.workers has no GPU group.",
                          hint="Add a worker group with resources.gpus > 0, or run the job with gpus=0.")
    groups = []
    for w in rt.workers:
        if w is gpu_src and gpus > 0:
            groups.append(Group.of(w, replicas=pods_for(gpus, w.resources.gpus, "GPUs")))
        elif w is cpu_src and cpus > 0:
            groups.append(Group.of(w, replicas=pods_for(cpus, cpu_count(w.resources.cpu), "CPUs")))
        else:
            groups.append(Group.of(w))
    return groups


def _check_job_args(rt: KubeRayRuntime, *, name: str, entrypoint: str, cluster: str, gpus: int,
                    cpus: float, ttl_s: int, submission_mode: str, active_deadline_s: int | None) -> None:
    if not name or not name.strip():
        raise InputError("A RayJob needs a name.")
    if not entrypoint or not entrypoint.strip():
        raise InputError(f"RayJob {name}: the entrypoint is empty.", hint="Give the command to run, e.g. "
                         "python -m train_jobs.train ...")
    if cluster not in ("existing", "own"):
        raise InputError(f'Got "{cluster}" for cluster.', allowed="existing, own")
    if submission_mode not in SUBMISSION_MODES:
        raise InputError(f'Got "{submission_mode}" for submission_mode.', allowed=", ".join(SUBMISSION_MODES))
    if cluster == "existing" and submission_mode == "SidecarMode":
        raise InputError("KubeRay does not run SidecarMode jobs on an existing cluster.",
                         allowed="K8sJobMode, HTTPMode or InteractiveMode with cluster=existing")
    if gpus < 0 or cpus < 0 or ttl_s < 0:
        raise InputError("gpus, cpus and ttl_s may not be negative. "
                         f"Found: gpus={gpus}, cpus={cpus}, ttl_s={ttl_s}")
    if active_deadline_s is not None and active_deadline_s <= 0:
        raise InputError(f"Got {active_deadline_s} for active_deadline_s.",
                         allowed="a positive number of seconds")
    if cluster == "existing" and gpus > rt.gpus:
        raise ConfigError(f"The job asks for {gpus} GPUs; the site's RayCluster holds at most {rt.gpus}.",
                          hint="Ask for fewer GPUs, raise max_replicas of a GPU worker group, or run the "
                          "job on its own cluster (cluster=own).")
