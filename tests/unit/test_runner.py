"""The job runner (`coordinator.jobs.runner.Trainer`) against fake sites, without Ray: a run whose
site is lost after a checkpoint came home resumes at the other site from that checkpoint, and
every step is recorded as a typed job record."""

from __future__ import annotations

import shlex
from types import SimpleNamespace

import pytest
from ray.job_submission import JobStatus

from configs.loader import load_defaults
from configs.runs import TERMINAL, Need, PlanRecord, RunRequest
from coordinator.jobs import follow, runner
from coordinator.state.db import State
from coordinator.state.jobs import JobRecords
from data.artifacts import ArtifactRef
from tests.waiting import wait_for


class _Jobs:
    """A site's Ray jobs API: `statuses` are what successive polls answer (an exception: unreachable)."""

    def __init__(self, statuses: list) -> None:
        self.statuses, self.submitted = statuses, {}

    def get_job_info(self, sid):
        if sid not in self.submitted:
            raise RuntimeError("404")
        return SimpleNamespace(status="FAILED", message="boom")

    def submit_job(self, *, entrypoint, submission_id, **_):
        self.submitted[submission_id] = entrypoint
        return submission_id

    def get_job_status(self, sid):
        answer = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def get_job_logs(self, sid):
        return "epoch 1/1 loss=0.1"

    def stop_job(self, sid):
        return True


class _Store:
    def __init__(self, name: str, checkpoints: list[str]) -> None:
        self.url, self.checkpoints = f"file:///stores/{name}", checkpoints

    def manifest_url(self, ref):
        return f"{self.url}/artifacts/{ref.kind}/{ref.name}/{ref.version}.json"

    def object_url(self, entry):
        return f"{self.url}/objects/{entry}"

    def versions(self, kind, name):
        return list(self.checkpoints)


class _Central:
    def versions(self, kind, name):
        return []

    def manifest(self, ref):
        return SimpleNamespace(entry=lambda name: "sha-of-bundle")

    def manifest_url(self, ref):
        return f"file:///center/{ref}.json"


class _Center:
    def __init__(self, tmp_path, sites: dict) -> None:
        self.state, self.central, self.sites = State(tmp_path / "state.db"), _Central(), sites
        self.pushed, self.fetched = [], []

    def site(self, name):
        return self.sites[name]

    def job_client(self, name):
        return self.sites[name][0]

    def store(self, name):
        return self.sites[name][1]

    def reachable(self, name):
        return True

    def push(self, ref, to):
        self.pushed.append((str(ref), tuple(to)))
        return []

    def fetch(self, ref, site):
        self.fetched.append((str(ref), site))


@pytest.fixture
def fakes(tmp_path, monkeypatch):
    sites = {"fab-b": (_Jobs([JobStatus.RUNNING, ConnectionError("refused")]), _Store("fab-b", ["2"])),
             "fab-a": (_Jobs([JobStatus.SUCCEEDED]), _Store("fab-a", []))}
    center = _Center(tmp_path, sites)

    def fake_plan(center, origin, need, refs, *, on=None, exclude=frozenset()):
        site = next(s for s in ("fab-b", "fab-a") if s not in exclude)
        return PlanRecord(origin=origin, site=site, need=need, reason=f"{site} fits", sites=[], ship=[])

    monkeypatch.setattr(runner, "plan", fake_plan)
    monkeypatch.setattr(runner.Trainer, "_dataset", lambda self, req: ArtifactRef("dataset", "aoi", "1"))
    monkeypatch.setattr(runner.Trainer, "_code", lambda self: ArtifactRef("code", "adcp-code", "c0de"))
    monkeypatch.setattr(runner, "read_metadata", lambda url: SimpleNamespace(metrics={"val": {"accuracy": 0.9}},
                                                                               lineage={"ran_at": ["fab-b", "fab-a"]}))
    monkeypatch.setattr(follow, "copy_artifact", lambda src, dst, ref: None)
    return center


def test_a_lost_site_hands_the_run_to_the_other_from_the_relayed_checkpoint(fakes):
    trainer = runner.Trainer(fakes, load_defaults(), poll_s=0.01, lost_after_s=0.0)
    job = trainer.start(RunRequest(origin="fab-a", dataset="aoi@1", epochs=2, model_version="v1"))
    assert job.status == "planned" and job.plan.site == "fab-b" and job.spec.model == "model/adc-aoi@v1"
    records = JobRecords(fakes.state)
    done = wait_for(lambda: (j := records.get(job.id)).status in TERMINAL and j, 30, "the job to end", poll_s=0.05)
    assert done.status == "succeeded", done.error
    first, second = done.attempts
    assert (first.site, first.status, second.site, second.status) == ("fab-b", "lost", "fab-a", "succeeded")
    assert "unreachable" in first.error and second.init_checkpoint == "checkpoint/adc-aoi-v1@2"
    assert done.outcome.checkpoints == ["checkpoint/adc-aoi-v1@2"] and done.outcome.ran_at == ["fab-b", "fab-a"]
    assert done.outcome.model == "adc-aoi@v1" and done.outcome.metrics == {"accuracy": 0.9}
    assert done.outcome.warnings == [] and done.plan.site == "fab-a"
    # the second attempt's command line resumes from fab-a's copy of the checkpoint
    (args,) = fakes.sites["fab-a"][0].submitted.values()
    argv = shlex.split(args)
    assert argv[argv.index("--init-checkpoint") + 1] == "file:///stores/fab-a/artifacts/checkpoint/adc-aoi-v1/2.json"
    assert '"resumed_from": "checkpoint/adc-aoi-v1@2"' in argv[argv.index("--lineage") + 1]
    assert ("checkpoint/adc-aoi-v1@2", ("fab-a",)) in fakes.pushed and fakes.fetched == [("model/adc-aoi@v1", "fab-a")]


def test_a_published_model_version_is_refused_before_anything_is_recorded(fakes, monkeypatch):
    from configs.errors import InputError

    monkeypatch.setattr(_Central, "versions", lambda self, kind, name: ["v1"])
    trainer = runner.Trainer(fakes, load_defaults())
    with pytest.raises(InputError, match="adc-aoi@v1 already exists"):
        trainer.start(RunRequest(origin="fab-a", dataset="aoi@1", model_version="v1"))
    assert JobRecords(fakes.state).list() == []


def test_the_need_of_a_run(fakes):
    trainer = runner.Trainer(fakes, load_defaults())
    assert trainer.need(RunRequest(origin="fab-a", dataset="aoi", gpus=2)) == Need(cpus=2.0, gpus=2.0)
    assert trainer.need(RunRequest(origin="fab-a", dataset="aoi", kind="tune", cpus=3)) == Need(cpus=3.0)
