"""`python -m train_jobs.tune` as a Ray job at a real local site: an ASHA search over learning
rate, batch size and augmentation whose best trial is exported and published like a training
run's model."""

from __future__ import annotations

import json
import math
import re
import shlex
import tempfile
import time
from pathlib import Path

import pytest
import torch

from configs.models import LocalSiteConfig, SynthConfig
from coordinator.center import bundle
from data.artifacts import ArtifactRef, ArtifactStore
from data.dataset import write_synthetic
from data.model_format import read_metadata
from data.publish import publish_artifact
from raycluster import running_site
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

TRIALS, EPOCHS = 4, 3
LR = (1e-3, 2e-2)
BATCH_SIZES = [16, 32]


def _line(logs: str, tag: str) -> dict:
    (found,) = re.findall(rf"^{tag} (\{{.*\}})\s*$", logs, re.MULTILINE)
    return json.loads(found)


def test_search_exports_and_publishes_the_best_trial(tmp_path):
    store = ArtifactStore(tmp_path / "site-store")
    with tempfile.TemporaryDirectory(dir=tmp_path) as tmp:
        write_synthetic(Path(tmp).as_uri(), SynthConfig(images=1500, seed=11, shard_rows=750), name="tiny", version="1")
        publish_artifact(store, "dataset", "tiny", "1", tmp)
    code = bundle.publish(store)
    args = [
        "python", "-m", "train_jobs.tune",
        "--dataset", store.manifest_url(ArtifactRef("dataset", "tiny", "1")),
        "--output", (tmp_path / "models" / "tuned").as_uri(),
        "--trials", str(TRIALS), "--epochs", str(EPOCHS), "--width", "8",
        "--lr-min", str(LR[0]), "--lr-max", str(LR[1]), "--batch-sizes", ",".join(map(str, BATCH_SIZES)),
        "--augment-min", "0.2", "--augment-max", "0.9",
        "--model-name", "adc-tiny", "--model-version", "t1", "--site", "fab-t",
        "--artifact-store", store.url, "--lineage", json.dumps({"requested_by": "test"}),
    ]
    with running_site(LocalSiteConfig(name="fab-t", num_cpus=4, object_store_mb=300), tmp_path) as site:
        client = site_client(site)
        started = time.monotonic()
        job = client.submit_job(entrypoint=shlex.join(args), runtime_env={"working_dir": code.uri,
                                "env_vars": {"OMP_NUM_THREADS": "1"}}, entrypoint_num_cpus=0)
        wait_for(lambda: client.get_job_status(job).is_terminal(), 240, f"tune job {job}", poll_s=1.0)
        seconds = time.monotonic() - started
        logs = client.get_job_logs(job)
        assert client.get_job_status(job).value == "SUCCEEDED", logs[-3000:]
    print(f"tune job: {seconds:.1f} s")

    summary = _line(logs, "ADCP_TUNE")
    best = summary["best"]
    assert set(best) == {"lr", "batch_size", "augment"}
    assert LR[0] <= best["lr"] <= LR[1] and best["batch_size"] in BATCH_SIZES and 0.2 <= best["augment"] <= 0.9
    trials = summary["trials"]
    assert len(trials) == TRIALS and len({t["trial"] for t in trials}) == TRIALS
    assert all(1 <= t["epochs"] <= EPOCHS and not t.get("error") for t in trials)
    assert max(t["epochs"] for t in trials) == EPOCHS  # ASHA let at least one run to the end
    winner = next(t for t in trials if t["trial"] == summary["best_trial"])
    assert winner["config"] == best and winner["val_accuracy"] == summary["metrics"]["val_accuracy"]
    # get_best_result compares each trial's last reported accuracy: none beats the winner's.
    assert all(t["val_accuracy"] <= winner["val_accuracy"] for t in trials)
    assert len({(round(math.log(t["config"]["lr"]), 9), t["config"]["augment"]) for t in trials}) == TRIALS

    model = _line(logs, "ADCP_MODEL")
    assert model["model"] == "adc-tiny@t1" and model["artifact"] == "model/adc-tiny@t1"
    meta = read_metadata(model["manifest_url"])
    assert meta.model_id == "adc-tiny@t1" and set(meta.thresholds) == set(meta.classes)
    assert meta.metrics["val"] == summary["metrics"]["val"] and meta.metrics["trials"] == TRIALS
    assert meta.lineage["tune"]["best_config"] == best and meta.lineage["tune"]["trials"] == TRIALS
    assert meta.lineage["requested_by"] == "test" and meta.lineage["trained_at"] == ["fab-t"]
    assert meta == read_metadata((tmp_path / "models" / "tuned").as_uri())

    from serve_apps.classifier import (
        load_model,  # loads what Serve would load, from the artifact
    )

    loaded = load_model(model["manifest_url"])
    assert loaded.meta == meta
    x = torch.zeros(3, 1, 64, 64)
    with torch.inference_mode():
        assert loaded.module(x).shape == (3, len(meta.classes))


def site_client(site):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address=site.dashboard_url, headers=site.headers())
