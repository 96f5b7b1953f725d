"""The retrain trigger (coordinator.jobs.retrain) over a real center and state DB with a fake
trainer: due by new verdicts since the line's last model (undone ones and older ones not counted)
and by schedule; one retrain of a line at a time (409 naming it); the run it asks for (the base
dataset plus the latest reviewed data, from the champion when fine-tuning, from scratch otherwise);
the challenger alias at each site on success and the release hook; failures recorded; the loop's
pass; the API routes and `adcp model retrain`."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

from configs.errors import ConflictError, NotFoundError
from configs.runs import Job, JobSpec, JobState, RunRequest
from coordinator.api.app import create_app
from coordinator.center.core import Center
from coordinator.cli.client import Coordinator, CoordinatorClient
from coordinator.cli.context import Context
from coordinator.jobs.retrain import LOOP_BY, Retrainer, dataset_line
from coordinator.state.db import now
from coordinator.state.review import ReviewRecords
from data.annotations import publish_annotations
from data.image_datasets import ImageRecord, publish_images
from data.model_format import ModelMetadata
from data.preprocess import input_spec
from data.publish import publish_artifact
from tests.dashboard_fakes import FakeMonitor
from tests.platform_fixtures import platform_yaml, run_cli
from tests.serve_fixtures import encode, synth_pixels
from tests.waiting import wait_for

TOKEN = "bootstrap-admin-token-for-retrain-tests"
LINES = [
    {"name": "adc-aoi", "dataset": "aoi@1", "sites": ["fab-a", "fab-b"],
     "retrain": {"min_verdicts": 3, "mode": "finetune", "on": "fab-b", "epochs": 2}},
    {"name": "adc-cell", "dataset": "cell", "sites": ["fab-b"],
     "retrain": {"min_verdicts": None, "every_s": 3600, "mode": "scratch"}},
    {"name": "adc-hand", "dataset": "hand", "sites": ["fab-a"], "retrain": {"min_verdicts": None}},
]


class FakeTrainer:
    """Records each RunRequest and makes a Job the test ends by hand (`end`)."""

    def __init__(self) -> None:
        self.requests: list[RunRequest] = []
        self.jobs: dict[str, Job] = {}

    def start(self, req: RunRequest) -> Job:
        self.requests.append(req)
        jid = uuid.uuid4().hex[:8]
        spec = JobSpec(**req.model_dump(), model=f"model/{req.model_name}@v{len(self.requests)}", checkpoints="c")
        self.jobs[jid] = Job(id=jid, kind="train", origin=req.origin, spec=spec, status=JobState.running)
        return self.jobs[jid]

    def job(self, job_id: str) -> Job:
        return self.jobs[job_id].model_copy(deep=True)

    def end(self, job_id: str, status: JobState, error: str | None = None) -> None:
        self.jobs[job_id].status, self.jobs[job_id].error = status, error


@pytest.fixture
def world(tmp_path):
    platform = tmp_path / "platform.yaml"
    platform.write_text(platform_yaml({"fab-a": {}, "fab-b": {}}, extra={"lines": LINES}))
    center = Center.open(tmp_path / "home", platform)
    trainer = FakeTrainer()
    hooked: list[tuple[str, str]] = []
    retrainer = Retrainer(center, trainer, on_challenger=lambda line, v: hooked.append((line, v)), poll_s=0.01)
    try:
        yield center, trainer, retrainer, hooked
    finally:
        center.close()


def publish_model(center: Center, tmp: Path, line: str, version: str, created_at: str, **lineage: Any) -> None:
    folder = tmp / f"model-{line}-{version}"
    folder.mkdir(parents=True)
    (folder / "model.pt2").write_bytes(f"{line}@{version}".encode())
    meta = ModelMetadata(name=line, version=version, classes=["scratch", "none"], no_defect_classes=["none"],
                         input=input_spec(64), thresholds={"scratch": 0.5, "none": 0.5}, lineage=lineage,
                         created_at=created_at, sha256="0" * 64)
    (folder / "metadata.json").write_text(json.dumps(meta.model_dump(mode="json")))
    publish_artifact(center.central, "model", line, version, folder)


def verdicts(center: Center, n: int, *, dataset: str = "aoi", undo: int = 0) -> list[str]:
    """`n` verdict events of `dataset` pulled now (the last `undo` of them undone); their ids."""
    ids = [uuid.uuid4().hex for _ in range(n)]
    events = [{"event_id": i, "kind": "verdict", "verdict_id": i, "image_sha256": i, "label": "scratch",
               "reviewer": "r1", "at": now(), "dataset": dataset, "seq": k + 1} for k, i in enumerate(ids)]
    events += [{"event_id": uuid.uuid4().hex, "kind": "undo", "verdict_id": i, "image_sha256": i, "at": now(),
                "dataset": dataset} for i in ids[n - undo:]]
    records = ReviewRecords(center.state)
    records.store_page("fab-a", events, records.cursor("fab-a") + len(events))
    return ids


def publish_reviewed(center: Center, name: str = "reviewed-aoi") -> tuple[str, str]:
    """dataset/<name>@1 and two versions of annotations/<name>; (dataset, latest annotations)."""
    publish_images(center.central, name, (ImageRecord(encode(synth_pixels(i)), label="scratch") for i in range(3)),
                   source={"kind": "review"}, annotator="review-sync")
    table = pa.table({"image_id": ["x" * 64], "label": ["particle"]})
    publish_annotations(center.central, name, table, author="review-sync", classes=["particle", "scratch"])
    return f"{name}@1", f"{name}@{center.central.versions('annotations', name)[-1]}"


def the_clock_moved(since: str) -> None:
    wait_for(lambda: now() > since, 5, "the clock to pass the model's time", poll_s=0.001)


def test_due_counts_new_verdicts_since_the_last_model(world, tmp_path):
    center, trainer, retrainer, _ = world
    verdicts(center, 5)
    assert retrainer.due("adc-aoi")["due"]  # no model yet: every verdict is new
    made = now()
    publish_model(center, tmp_path, "adc-aoi", "1", created_at=made)
    the_clock_moved(made)
    due = retrainer.due("adc-aoi")
    assert (due["due"], due["verdicts_new"], due["last_model"]) == (False, 0, "adc-aoi@1")
    assert due["why"].startswith("0 of 3 new verdicts since ")
    verdicts(center, 3, undo=1)  # an undone verdict does not count
    verdicts(center, 4, dataset="other")  # nor one of another dataset line
    due = retrainer.due("adc-aoi")
    assert (due["due"], due["verdicts_new"], due["dataset_line"]) == (False, 2, "aoi")
    verdicts(center, 1)
    due = retrainer.due("adc-aoi")
    assert (due["due"], due["trigger"], due["why"], due["verdicts_new"]) == (True, "verdicts", "retrain: 3 verdicts", 3)
    assert retrainer.due("adc-hand")["why"].startswith("retrains by hand only")
    with pytest.raises(NotFoundError, match="No model line nope"):
        retrainer.due("nope")
    assert dataset_line("dataset/aoi@3") == dataset_line("aoi") == "aoi"


def test_due_by_schedule(world, tmp_path):
    center, _, retrainer, _ = world
    due = retrainer.due("adc-cell")
    assert (due["due"], due["trigger"], due["why"]) == (True, "schedule", "schedule")  # no model yet
    made = now()
    publish_model(center, tmp_path, "adc-cell", "1", created_at=made)
    due = retrainer.due("adc-cell")
    assert not due["due"] and "next scheduled in" in due["why"]
    from datetime import datetime

    later = datetime.fromisoformat(made).timestamp() + 3601
    assert retrainer.due("adc-cell", at=later)["trigger"] == "schedule"


def test_a_retrain_finetunes_on_base_plus_reviewed_and_makes_the_challenger(world, tmp_path):
    center, trainer, retrainer, hooked = world
    publish_model(center, tmp_path, "adc-aoi", "1", created_at="2026-01-01T00:00:00Z",
                  config={"width": 8, "image_size": 48, "lr": 0.01})
    center.lines.promote("adc-aoi", "fab-a", "1", by="eng", why="deploy")
    dataset, annotations = publish_reviewed(center)
    verdicts(center, 3)
    started = retrainer.retrain("adc-aoi", by="eng")  # due: 3 verdicts
    assert started["due"] and started["status"] == "running" and started["why"] == "retrain: 3 verdicts"
    (req,) = trainer.requests
    assert (req.origin, req.dataset, req.on, req.epochs, req.model_name) == ("fab-a", "aoi@1", "fab-b", 2, "adc-aoi")
    assert req.init_model == "model/adc-aoi@1" and req.options == {"width": 8, "image_size": 48}
    assert [e.model_dump() for e in req.extra] == [{"dataset": dataset, "annotations": annotations}]

    busy = f"already retraining: retrain {started['id']}, job {started['job_id']}"
    with pytest.raises(ConflictError, match=busy) as e:
        retrainer.retrain("adc-aoi", by="other", now=True)
    assert e.value.http_status == 409 and len(trainer.requests) == 1
    assert retrainer.due("adc-aoi")["running"] == started["id"]

    trainer.end(started["job_id"], JobState.succeeded)
    done = wait_for(lambda: (r := retrainer.records.get(started["id"]))["status"] != "running" and r, 10,
                    "the retrain to end", poll_s=0.01)
    assert done["status"] == "succeeded" and done["version"] == "v1"
    assert done["detail"]["challenger_at"] == ["fab-a", "fab-b"]
    assert center.lines.aliases("adc-aoi") == {"fab-a": {"champion": "1", "challenger": "v1"},
                                               "fab-b": {"challenger": "v1"}}
    move = center.lines.moves("adc-aoi", "fab-b")[0]
    assert (move["alias"], move["to_version"], move["by"], move["why"]) == ("challenger", "v1", "eng",
                                                                             "retrain: 3 verdicts")
    assert hooked == [("adc-aoi", "v1")]


def test_scratch_mode_and_no_reviewed_data(world, tmp_path):
    center, trainer, retrainer, _ = world
    publish_model(center, tmp_path, "adc-cell", "1", created_at="2026-01-01T00:00:00Z")
    center.lines.promote("adc-cell", "fab-b", "1", by="eng", why="deploy")
    started = retrainer.retrain("adc-cell", by="eng", now=True)
    assert started["why"] == "by hand"
    (req,) = trainer.requests
    assert req.init_model is None and req.extra == [] and req.options == {} and req.origin == "fab-b"


def test_a_failed_run_is_recorded_and_the_count_starts_again(world, tmp_path):
    center, trainer, retrainer, hooked = world
    verdicts(center, 4)
    started = retrainer.retrain("adc-aoi", by="eng")
    trainer.end(started["job_id"], JobState.failed, "fab-b: out of memory")
    done = wait_for(lambda: (r := retrainer.records.get(started["id"]))["status"] != "running" and r, 10,
                    "the retrain to end", poll_s=0.01)
    assert done["status"] == "failed" and "out of memory" in done["error"]
    assert center.lines.aliases("adc-aoi") == {} and hooked == []
    due = retrainer.due("adc-aoi")
    assert not due["due"] and due["last_failed"] == started["id"]  # the loop does not retry it at once
    not_due = retrainer.retrain("adc-aoi", by="eng")
    assert not_due["due"] is False and not_due["verdicts_new"] == 0 and len(trainer.requests) == 1
    assert retrainer.retrain("adc-aoi", by="eng", now=True)["status"] == "running"  # by hand it may


def test_the_loop_pass_retrains_due_lines_only_and_resume_follows_running_ones(world, tmp_path):
    center, trainer, retrainer, _ = world
    verdicts(center, 3)
    started = retrainer.check()
    assert sorted(r["line"] for r in started) == ["adc-aoi", "adc-cell"]  # verdicts; schedule (no model)
    assert {r["by"] for r in started} == {LOOP_BY}
    assert retrainer.check() == []  # both are running now
    # a new coordinator over the same DB follows them to their end
    again = Retrainer(center, trainer, poll_s=0.01)
    assert sorted(again.resume()) == sorted(r["id"] for r in started)
    for r in started:
        trainer.end(r["job_id"], JobState.succeeded)
    wait_for(lambda: not again.records.running(), 10, "the retrains to end", poll_s=0.01)
    for line, sites in (("adc-aoi", ["fab-a", "fab-b"]), ("adc-cell", ["fab-b"])):
        (rec,) = again.retrains(line)
        assert rec["status"] == "succeeded" and rec["by"] == LOOP_BY
        assert center.lines.aliases(line) == {site: {"challenger": rec["version"]} for site in sites}


@pytest.fixture
def api(world, monkeypatch):
    center, trainer, retrainer, _ = world
    app = create_app(center, TOKEN, trainer, monitor=FakeMonitor(["fab-a", "fab-b"]), retrainer=retrainer)

    def client(_ctx: Context) -> CoordinatorClient:
        c = CoordinatorClient(Coordinator("http://testserver", TOKEN, "test"))
        c.http.close()
        c.http = TestClient(app, base_url="http://testserver/api/v1", headers={"Authorization": f"Bearer {TOKEN}"})
        return c

    monkeypatch.setattr(Context, "client", property(client))
    return TestClient(app, base_url="http://testserver/api/v1", headers={"Authorization": f"Bearer {TOKEN}"})


def test_the_routes_and_the_cli(world, api, capsys, tmp_path):
    center, trainer, retrainer, _ = world
    r = api.post("/models/adc-aoi/retrain", json={})
    assert r.status_code == 200 and r.json()["due"] is False and r.json()["why"].startswith("0 of 3")
    code, out, _ = run_cli(capsys, tmp_path / "home", "model", "retrain", "adc-aoi")
    assert code == 0 and "not due for a retrain: 0 of 3 new verdicts" in out
    r = api.post("/models/adc-aoi/retrain", json={"now": True})
    assert r.status_code == 202 and r.json()["why"] == "by hand" and r.json()["by"]
    busy = api.post("/models/adc-aoi/retrain", json={"now": True})
    assert busy.status_code == 409 and r.json()["id"] in busy.json()["detail"]
    listed = api.get("/models/adc-aoi/retrains").json()
    assert listed["due"]["running"] == r.json()["id"] and [x["id"] for x in listed["retrains"]] == [r.json()["id"]]
    assert api.get("/models/nope/retrains").status_code == 404
    trainer.end(r.json()["job_id"], JobState.succeeded)
    wait_for(lambda: not retrainer.records.running(), 10, "the retrain to end", poll_s=0.01)

    # the CLI starts one by hand and follows it (the fake job has ended at once)
    real_start = trainer.start

    def start_and_end(req: RunRequest) -> Job:
        job = real_start(req)
        trainer.end(job.id, JobState.succeeded)
        return job

    trainer.start = start_and_end
    code, out, _ = run_cli(capsys, tmp_path / "home", "model", "retrain", "adc-aoi", "--now", "--json")
    assert code == 0, out
    rec = json.loads(out)
    assert rec["status"] == "succeeded" and rec["version"] == "v2" and rec["detail"]["challenger_at"] == [
        "fab-a", "fab-b"]
