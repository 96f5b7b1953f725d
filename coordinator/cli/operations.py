"""What the CLI does, as a Python API: datasets, local sites, training, serving, classifying.

The CLI is a thin layer over these functions; the coordinator's HTTP API will call the same ones.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import httpx

from configs.errors import InputError, NotFoundError
from configs.loader import Defaults
from configs.models import LocalSiteConfig, ServeConfig, SynthConfig
from coordinator.center import bundle
from coordinator.jobs import entrypoint as jobs
from coordinator.jobs import serving
from coordinator.cli.workspace import Workspace, parse_ref
from data.artifacts import ArtifactStore, Manifest
from data.publish import publish_artifact
from data.dataset import Dataset, open_dataset, write_synthetic
from data.model_format import ModelMetadata, read_metadata
from raycluster import LocalSite, list_sites, load_site, start_site, status, stop_site

# Serve replicas and train workers share the site's CPUs; one thread each keeps them from
# oversubscribing small machines (GPU sites are unaffected).
_SITE_ENV = {"OMP_NUM_THREADS": "1"}


def synth_dataset(
    ws: Workspace, name: str, cfg: SynthConfig, on_progress: Callable[[int], None] | None = None
) -> Dataset:
    name, given = parse_ref(name)
    if given:
        raise InputError(f'Got "{name}@{given}" for a new dataset name.', allowed="a NAME; versions are numbered for you")
    version = ws.next_version("dataset", name)
    with tempfile.TemporaryDirectory(prefix="adcp-synth-", dir=_staging(ws)) as tmp:
        ds = write_synthetic(Path(tmp).as_uri(), cfg, name=name, version=version, on_progress=on_progress)
        publish_artifact(ws.artifacts, "dataset", name, version, tmp, meta=_dataset_meta(ds))
    return open_dataset(ws.resolve("dataset", f"{name}@{version}")[2])


def _staging(ws: Workspace) -> str:
    path = ws.home / "staging"
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def _dataset_meta(ds: Dataset) -> dict[str, Any]:
    m = ds.manifest
    return {"rows": m["rows"], "class_counts": m["class_counts"], "dataset_sha256": m["sha256"]}


def site_up(ws: Workspace, cfg: LocalSiteConfig) -> LocalSite:
    return start_site(cfg, ws.home)


def site_down(ws: Workspace, name: str) -> bool:
    return stop_site(name, ws.home)


def site_status(ws: Workspace) -> list[dict[str, Any]]:
    out = []
    for site in list_sites(ws.home):
        info = status(site)
        info.update(dashboard=site.dashboard_url, serve=site.serve_url, store=ws.store)
        out.append(info)
    return out


def get_site(ws: Workspace, name: str) -> LocalSite:
    return load_site(name, ws.home)


@dataclass
class TrainOutcome:
    job_id: str
    site: str
    model_uri: str
    metadata: ModelMetadata
    seconds: float


def train(
    ws: Workspace,
    site: LocalSite,
    defaults: Defaults,
    dataset_ref: str,
    *,
    options: dict[str, Any] | None = None,
    timeout_s: float = 3600,
    on_submitted: Callable[[str], None] | None = None,
    on_epoch: Callable[[int, int, str], None] | None = None,
) -> TrainOutcome:
    """Ship the code bundle, submit `python -m train_jobs.train` at `site`, follow it to the end."""
    name, version, dataset_url = ws.resolve("dataset", dataset_ref)
    options = dict(options or {})
    model_name = options.pop("model_name", None) or f"adc-{name}"
    model_version = options.pop("model_version", None) or datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    resume_from = options.pop("resume_from", None)
    if model_version in ws.versions("model", model_name):
        raise InputError(f"Model {model_name}@{model_version} already exists; published models never change.",
                         hint="Leave --model-version out for a new one, and use --resume-from VERSION to "
                         "continue training from that version's checkpoints.")
    run = resume_from or model_version
    code = bundle.publish(ws.artifacts)
    cfg = defaults.train_config(
        dataset=dataset_url,
        output=ws.url("work", "models", model_name, model_version),
        storage_path=ws.url("checkpoints", model_name),
        run_name=run,
        model_name=model_name,
        model_version=model_version,
        site=site.name,
        code_version=code.version,
        **options,
    )
    job_id = jobs.submit(site.dashboard_url, site.headers(), cfg, code.uri, env=_SITE_ENV)
    if on_submitted:
        on_submitted(job_id)
    outcome = jobs.follow(site.dashboard_url, site.headers(), job_id, timeout_s=timeout_s, on_epoch=on_epoch)
    meta = read_metadata(cfg.output)
    model = publish_model(ws.artifacts, cfg.output, meta)
    return TrainOutcome(job_id, site.name, ws.artifacts.manifest_url(model.ref), meta, outcome.seconds)


def publish_model(store: ArtifactStore, model_dir: str, meta: ModelMetadata) -> Manifest:
    """Publish an exported model directory as artifact `model/<name>@<version>` (lineage in meta)."""
    return publish_artifact(store, "model", meta.name, meta.version, model_dir,
                         meta={"model_id": meta.model_id, "metrics": meta.metrics.get("val", {}),
                               "lineage": meta.lineage})


def resolve_model(ws: Workspace, ref: str) -> str:
    """A model URI from NAME[@VERSION] in the local store, or a URI/path given as is."""
    if "://" in ref or ref.startswith("/"):
        return ref
    return ws.resolve("model", ref)[2]


def deploy_model(
    ws: Workspace, site: LocalSite, serve_cfg: ServeConfig, model_ref: str, *, timeout_s: float = 240
) -> tuple[ModelMetadata, float]:
    """Deploy (or reconfigure) the ADC app at `site` with the model; returns (metadata, seconds
    from the request to the new model answering)."""
    model_uri = resolve_model(ws, model_ref)
    meta = read_metadata(model_uri)
    code = bundle.publish(ws.artifacts)
    cfg = serve_cfg.model_copy(update={"user_config": serve_cfg.user_config.model_copy(update={"model_uri": model_uri})})
    config = serving.serve_config(cfg, working_dir=code.uri, http_port=int(site.serve_url.rsplit(":", 1)[1]),
                                  env=_SITE_ENV)
    serving.deploy(site.dashboard_url, site.headers(), config)
    seconds = serving.wait_serving(site.dashboard_url, site.headers(), site.serve_url, cfg.app_name,
                                   meta.model_id, model_uri=model_uri, timeout_s=timeout_s)
    return meta, seconds


def classify_files(serve_url: str, paths: list[Path], *, chunk: int = 64,
                   client: httpx.Client | None = None) -> list[dict[str, Any]]:
    """Classify image files through the site's batch endpoint, `chunk` images per request. With
    `client` (a site gateway's Serve client, base URL and headers set) `serve_url` is ''."""
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise NotFoundError(f"No such image file: {', '.join(missing[:5])}.")
    results: list[dict[str, Any]] = []
    with client or httpx.Client(timeout=120) as client:
        for i in range(0, len(paths), chunk):
            part = paths[i : i + chunk]
            answers = serving.classify_batch(client, serve_url, [(Path(p).name, Path(p).read_bytes()) for p in part])
            for p, answer in zip(part, answers):
                results.append({"file": str(p), **answer})
    return results


def dataset_info(ws: Workspace, ref: str) -> Dataset:
    return open_dataset(ws.resolve("dataset", ref)[2])
