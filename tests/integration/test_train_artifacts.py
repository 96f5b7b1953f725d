"""`python -m train_jobs.train` as a Ray job at one real local site, publishing into an artifact
store: every epoch's checkpoint and the model become complete artifacts; a new run starts from a
relayed checkpoint and trains only the epochs after it, at a site that declares GPUs it lacks (it
holds them and trains on CPU).

The site declares 2 GPUs on this CPU machine (as fab-b does) and serves both tests of the module;
each Ray job costs about a minute here, so the module runs two.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from ray.job_submission import JobStatus, JobSubmissionClient

from configs.models import LocalSiteConfig, SynthConfig, TrainConfig
from configs.protocol import entrypoint
from coordinator.center import bundle
from data.artifacts import ArtifactRef, ArtifactStore
from data.dataset import write_synthetic
from data.model_format import read_metadata
from data.publish import publish_artifact
from data.transfer import copy_artifact
from raycluster import LocalSite, running_site
from tests.waiting import wait_for
from train_jobs.checkpoints import read_checkpoint_state

pytestmark = pytest.mark.integration

_EPOCH = re.compile(r"epoch (\d+)/(\d+) loss=")


@dataclass
class Site:
    home: Path
    store: ArtifactStore  # the site's store: datasets in, checkpoints and models out
    dataset: str  # manifest URL of the dataset artifact
    site: LocalSite
    code_uri: str


@dataclass
class Run:
    cfg: TrainConfig
    logs: str

    def lines(self, tag: str) -> list[dict[str, Any]]:
        return [json.loads(m) for m in re.findall(rf"{tag} (\{{.*\}})\s*$", self.logs, re.MULTILINE)]

    def epochs(self) -> list[tuple[int, int]]:
        return [(int(a), int(b)) for a, b in _EPOCH.findall(self.logs)]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    home = tmp_path_factory.mktemp("train-artifacts")
    store = ArtifactStore(home / "site-store")
    with tempfile.TemporaryDirectory(dir=home) as tmp:
        write_synthetic(Path(tmp).as_uri(), SynthConfig(images=1200, seed=5, shard_rows=600), name="tiny", version="1")
        publish_artifact(store, "dataset", "tiny", "1", tmp)
    code = bundle.publish(store)
    cfg = LocalSiteConfig(name="fab-t", num_cpus=4, num_gpus=2, object_store_mb=300)
    with running_site(cfg, home) as site:
        yield Site(home, store, store.manifest_url(ArtifactRef("dataset", "tiny", "1")), site, code.uri)


def _train(env: Site, version: str, **options: Any) -> Run:
    cfg = TrainConfig(
        dataset=env.dataset, output=(env.home / "models" / version).as_uri(),
        storage_path=(env.home / "checkpoints").as_uri(), model_name="adc-tiny", model_version=version,
        width=8, batch_size=32, site=env.site.name, artifact_store=env.store.url, **options,
    )
    # Submitted with Ray's own client, as an engineer with `adcp site env` would
    client = JobSubmissionClient(address=env.site.dashboard_url, headers=env.site.headers())
    job_id = client.submit_job(entrypoint=entrypoint(cfg), entrypoint_num_cpus=0,
                               runtime_env={"working_dir": env.code_uri, "env_vars": {"OMP_NUM_THREADS": "1"}})
    wait_for(lambda: client.get_job_status(job_id).is_terminal(), 240, f"training job {job_id}", poll_s=1)
    logs = client.get_job_logs(job_id)
    assert client.get_job_status(job_id) == JobStatus.SUCCEEDED, logs[-3000:]
    return Run(cfg, logs)


@pytest.fixture(scope="module")
def first(env: Site) -> Run:
    return _train(env, "1", epochs=3)


def test_each_epoch_checkpoint_and_the_model_are_complete_artifacts(env: Site, first: Run):
    name = "adc-tiny-1"  # <model_name>-<run>, the run being the last part of the output URL
    assert first.epochs() == [(1, 3), (2, 3), (3, 3)]
    assert not first.lines("ADCP_WARNING")
    lines = first.lines("ADCP_CHECKPOINT")
    assert [line["epoch"] for line in lines] == [1, 2, 3]
    assert [line["ref"] for line in lines] == [f"checkpoint/{name}@{e}" for e in (1, 2, 3)]
    assert env.store.versions("checkpoint", name) == ["1", "2", "3"]
    for line in lines:
        ref = ArtifactRef.parse(line["ref"])
        assert line["manifest_url"] == env.store.manifest_url(ref)
        manifest = env.store.manifest(ref)
        assert [o.path for o in manifest.objects] == ["state.pt"]
        assert env.store.verify(ref).ok
        meta = manifest.meta
        assert meta["epoch"] == line["epoch"]
        assert {"val_loss", "val_accuracy"} <= set(meta["metrics"])
        assert (meta["run"], meta["site"], meta["model_name"], meta["model_version"]) == ("1", "fab-t", "adc-tiny", "1")
    assert read_checkpoint_state(lines[1]["manifest_url"])["epoch"] == 1  # 0-based: after the 2nd epoch

    (model_line,) = first.lines("ADCP_MODEL")
    assert model_line["artifact"] == "model/adc-tiny@1"
    model_ref = ArtifactRef.parse(model_line["artifact"])
    assert model_line["manifest_url"] == env.store.manifest_url(model_ref)
    manifest = env.store.manifest(model_ref)
    assert sorted(o.path for o in manifest.objects) == ["metadata.json", "model.pt2"]
    assert manifest.meta["model_id"] == "adc-tiny@1"
    assert set(manifest.meta["metrics"]) >= {"accuracy", "automation_rate", "escape_rate"}
    meta = read_metadata(model_line["manifest_url"])
    assert meta.lineage["checkpoint_artifact"] == f"checkpoint/{name}"
    assert meta.lineage["training"] == {"device": "cpu", "workers": 2, "gpus_reserved": 0}
    assert meta.metrics["epoch"] == 3
    assert manifest.meta["lineage"] == meta.lineage


def _gpu_placement_groups(site: LocalSite) -> list[dict[str, Any]]:
    r = httpx.get(f"{site.dashboard_url}/api/v0/placement_groups", params={"detail": "1", "limit": "1000"},
                  headers=site.headers(), timeout=30)
    r.raise_for_status()
    groups = r.json()["data"]["result"]["result"]
    return [g for g in groups if any(b.get("unit_resources", {}).get("GPU") for b in g.get("bundles", []))]


def test_a_run_at_a_gpu_site_resumes_from_a_relayed_checkpoint(env: Site, first: Run, tmp_path):
    """What the coordinator does when the borrowed site dies: relay the last checkpoint home, then
    start a new run from it at another site, here one that declares GPUs it does not have."""
    home = ArtifactStore(tmp_path / "home-store")
    copy_artifact(env.store, home, ArtifactRef("checkpoint", "adc-tiny-1", "2"))
    init = home.manifest_url(ArtifactRef("checkpoint", "adc-tiny-1", "2"))
    lineage = {"trained_for": "fab-a", "ran_at": ["fab-b", "fab-t"], "resumed_from": "checkpoint/adc-tiny-1@2"}
    run = _train(env, "2", epochs=4, init_checkpoint=init, lineage=lineage, use_gpu=True)

    # Resumed: epochs 1 and 2 came with the checkpoint.
    assert run.epochs() == [(3, 4), (4, 4)]
    assert f"resuming from {init} after epoch 2" in run.logs
    refs = [line["ref"] for line in run.lines("ADCP_CHECKPOINT")]
    assert refs == ["checkpoint/adc-tiny-2@3", "checkpoint/adc-tiny-2@4"]
    assert env.store.versions("checkpoint", "adc-tiny-2") == ["3", "4"]
    assert env.store.manifest(ArtifactRef("checkpoint", "adc-tiny-2", "4")).meta["model_version"] == "2"
    meta = read_metadata(env.store.manifest_url(ArtifactRef("model", "adc-tiny", "2")))
    assert {k: meta.lineage[k] for k in lineage} == lineage
    assert meta.lineage["config"]["init_checkpoint"] == init
    assert meta.metrics["epoch"] == 4

    # GPUs declared but absent: held as planned, the training ran on CPU, and the log says so.
    (warning,) = run.lines("ADCP_WARNING")
    assert warning["code"] == "gpu_absent" and warning["gpus_reserved"] == 2
    assert meta.lineage["training"] == {"device": "cpu", "workers": 2, "gpus_reserved": 2}
    (group,) = _gpu_placement_groups(env.site)  # Ray Train placed its workers with one GPU each
    assert [b["unit_resources"].get("GPU") for b in group["bundles"]] == [1.0, 1.0]
