"""Cross-site training on borrowed capacity, with two real local sites under one coordinator:
fab-a declares no GPUs, fab-b declares two (as Ray resources). A run for fab-a that needs a GPU
goes to fab-b, survives a coordinator restart, comes home and serves at fab-a; a run whose site
dies mid-way resumes at the other site from the last checkpoint relayed home."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from coordinator import process
from coordinator.center.core import Center
from coordinator.cli.main import main
from coordinator.state.jobs import JobRecords
from data.artifacts import ArtifactRef
from data.model_format import read_metadata
from raycluster import stop_site
from raycluster.local import read_state
from tests.platform_fixtures import run_cli, running_platform
from tests.serve_fixtures import synth_png
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

SITES = {"fab-a": {"num_cpus": 4, "object_store_mb": 300},
         "fab-b": {"num_cpus": 4, "num_gpus": 2, "object_store_mb": 300}}
HOME: list[Path] = []


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    return run_cli(capsys, HOME[0], *args)


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    home = tmp_path_factory.mktemp("cross") / "home"
    HOME[:] = [home]
    with running_platform(home, SITES):
        assert main(["--home", str(home), "data", "synth", "--name", "aoi", "--images", "900"]) == 0
        yield home


def _job(home: Path, job_id: str) -> dict:
    return JobRecords(Center.open(home).state).get(job_id).model_dump(mode="json")


def _wait_job(home: Path, job_id: str, check, what: str, timeout_s: float = 420) -> dict:
    def probe():
        j = _job(home, job_id)
        if j["status"] == "failed" and "failed" not in what:
            raise AssertionError(f"job failed: {j['error']}")
        return j if check(j) else None

    return wait_for(probe, timeout_s, what, poll_s=0.5)


def test_borrowed_gpu_site_trains_and_model_comes_home(platform, capsys):
    home = platform
    code, out, err = _cli(capsys, "train", "--for", "fab-a", "--on", "auto", "--gpus", "1", "--dataset", "aoi@1",
                          "--epochs", "3", "--deploy", "--detach", "--json")
    assert code == 0, err
    job_id = json.loads(out)["job_id"]
    job = _job(home, job_id)
    assert job["plan"]["site"] == "fab-b" and "fab-a has only" in job["plan"]["reason"], job["plan"]

    # restart the coordinator while the job runs at fab-b: the new one follows it to the end
    _wait_job(home, job_id, lambda j: j["status"] == "running", "the job to run at fab-b")
    assert process.stop(home)
    process.start(home)
    done = _wait_job(home, job_id, lambda j: j["status"] in ("succeeded", "failed"), "the job to finish")
    assert done["status"] == "succeeded", done["error"]
    assert [a["site"] for a in done["attempts"]] == ["fab-b"]
    outcome = done["outcome"]
    assert outcome["ran_at"] == ["fab-b"] and len(outcome["checkpoints"]) == 3
    model = ArtifactRef.parse(outcome["artifact"])
    center = Center.open(home)
    for where in ("center", "fab-a"):
        assert center.store(where).verify(model).ok
    meta = read_metadata(center.store("fab-a").manifest_url(model))
    assert meta.lineage["trained_for"] == "fab-a" and meta.lineage["ran_at"] == ["fab-b"]
    assert meta.lineage["dataset"] == "dataset/aoi@1"
    # --deploy rolled it out at fab-a, which now answers with it
    serve = read_state("fab-a", home).serve_url
    assert httpx.get(f"{serve}/v1/model", timeout=30).json()["version"] == model.version
    # the app's own metrics reach fab-a's Ray metrics endpoint: the served version and the traffic
    r = httpx.post(f"{serve}/v1/classify", content=synth_png(0), headers={"Content-Type": "image/png"}, timeout=30)
    assert r.status_code == 200, r.text
    metrics_url = read_state("fab-a", home).metrics_url + "/metrics"

    def exported():
        text = httpx.get(metrics_url, timeout=10).text
        return (f'model="{model.name}@{model.version}"' in text and "ray_adc_requests_total" in text
                and "ray_adc_decisions_total" in text)

    wait_for(exported, 90, "the ADC app's metrics on fab-a's metrics endpoint")  # Ray exports every ~10 s

    code, out, _ = _cli(capsys, "jobs", "--json")
    assert [j["id"] for j in json.loads(out)] == [job_id]
    code, out, _ = _cli(capsys, "job", "logs", job_id)
    assert "epoch 3/3" in out


def test_site_lost_mid_run_resumes_elsewhere_from_relayed_checkpoint(platform, capsys):
    home = platform
    code, out, err = _cli(capsys, "train", "--for", "fab-a", "--on", "fab-b", "--dataset", "aoi@1",
                          "--epochs", "6", "--detach", "--json")
    assert code == 0, err
    job_id = json.loads(out)["job_id"]
    _wait_job(home, job_id, lambda j: len(j["outcome"].get("checkpoints", [])) >= 2, "two checkpoints relayed home")
    assert stop_site("fab-b", home)  # fab-b's Ray head dies mid-run
    done = _wait_job(home, job_id, lambda j: j["status"] in ("succeeded", "failed"), "the job to finish")
    assert done["status"] == "succeeded", done["error"]
    first, second = done["attempts"]
    assert first["site"] == "fab-b" and first["status"] == "lost"
    assert second["site"] == "fab-a" and second["init_checkpoint"].startswith("checkpoint/")
    resumed_epoch = int(ArtifactRef.parse(second["init_checkpoint"]).version)
    assert resumed_epoch >= 2
    assert done["outcome"]["ran_at"] == ["fab-b", "fab-a"]
    meta = read_metadata(Center.open(home).store("fab-a").manifest_url(ArtifactRef.parse(done["outcome"]["artifact"])))
    assert meta.lineage["ran_at"] == ["fab-b", "fab-a"] and meta.lineage["resumed_from"] == second["init_checkpoint"]
    assert meta.metrics["epoch"] == 6
    code, out, _ = _cli(capsys, "job", "logs", job_id)
    epochs = [int(e) for e in re.findall(r"epoch (\d+)/\d+ loss=", out)]
    assert epochs and epochs[0] == resumed_epoch + 1 and epochs[-1] == 6  # nothing trained twice at fab-a


def test_tune_for_a_site_follows_to_the_best_model(platform, capsys):
    """`adcp tune --for` followed by the CLI to the end (fab-b is down after the test above, so
    the search runs where capacity is: fab-a)."""
    home = platform
    code, out, err = _cli(capsys, "tune", "--for", "fab-a", "--dataset", "aoi@1", "--trials", "2", "--epochs", "1",
                          "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["status"] == "succeeded" and result["ran_at"] == ["fab-a"]
    best = result["best"]
    assert best["trials"] == 2 and 1e-3 <= best["config"]["lr"] <= 1e-2
    model = ArtifactRef.parse(f"model/{result['model']}")
    meta = read_metadata(Center.open(home).store("fab-a").manifest_url(model))
    assert meta.lineage["tune"]["best_config"] == best["config"]
