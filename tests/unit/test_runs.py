"""Run requests and job records as typed models (`configs.runs`), stored through
`coordinator.state.jobs`, and shown by the API's OpenAPI schema."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from pydantic import ValidationError

from configs.runs import ACTIVE, TERMINAL, AttemptState, Job, JobSpec, JobState, Need, PlanRecord, RunRequest
from coordinator.state.db import State
from coordinator.state.jobs import JobRecords


def _spec(**over) -> JobSpec:
    return JobSpec(**{"origin": "fab-a", "dataset": "dataset/aoi@1", "model": "model/adc-aoi@v1",
                      "checkpoints": "adc-aoi-v1", **over})


def _plan(site: str = "fab-b") -> PlanRecord:
    return PlanRecord(origin="fab-a", site=site, need=Need(cpus=2, gpus=1), reason=f"{site} has a GPU", sites=[],
                      ship=[])


def test_the_cli_bodies_are_valid_requests():
    """The JSON the CLI posts for `adcp train --for` and `adcp tune --for`."""
    train = RunRequest.model_validate({"origin": "fab-a", "dataset": "aoi@1", "on": "auto", "gpus": 1, "cpus": None,
                                       "deploy": True, "epochs": 3, "batch_size": None, "lr": None,
                                       "model_name": None, "model_version": None, "max_attempts": 3})
    assert train.train_options() == {"epochs": 3, "use_gpu": True, "num_workers": 1}
    tune = RunRequest.model_validate({"kind": "tune", "origin": "fab-a", "dataset": "aoi@1", "on": None, "cpus": 2,
                                      "trials": 4, "epochs": 1, "model_name": None, "deploy": False})
    assert tune.train_options() == {"epochs": 1, "trials": 4}


@pytest.mark.parametrize("body, message", [
    ({"origin": "fab-a", "dataset": "aoi", "gpu": 1}, "Extra inputs are not permitted"),
    ({"origin": " ", "dataset": "aoi"}, 'Got " ": a blank value'),
    ({"origin": "fab-a", "dataset": "aoi", "model_version": "1@2"}, 'Got "1@2". A model name or version'),
    ({"origin": "fab-a", "dataset": "aoi", "trials": 3}, "trials is for kind=tune only. Found: kind=train, trials=3"),
    ({"origin": "fab-a", "dataset": "aoi", "kind": "tune", "lr": 0.1}, "batch_size and lr are searched by kind=tune"),
    ({"origin": "fab-a", "dataset": "aoi", "max_attempts": 11}, "less than or equal to 10"),
    ({"origin": "fab-a", "dataset": "aoi", "kind": "serve"}, "'train' or 'tune'"),
])
def test_bad_requests_say_what_was_wrong(body, message):
    with pytest.raises(ValidationError, match=message):
        RunRequest.model_validate(body)


def test_a_spec_gives_back_the_request_it_was_made_from():
    req = RunRequest(origin="fab-a", dataset="dataset/aoi@1", gpus=2, options={"width": 8})
    spec = JobSpec(**req.model_dump(), model="model/m@1", checkpoints="m-1")
    assert spec.request() == req


def test_job_states_and_their_json():
    assert set(JobState) == ACTIVE | TERMINAL and not ACTIVE & TERMINAL
    assert "succeeded" in TERMINAL and JobState("running") in ACTIVE  # plain strings work too (the CLI's)


def test_a_job_moves_through_its_states():
    job = Job(id="j1", kind="train", origin="fab-a", spec=_spec())
    assert job.status == JobState.planned and job.attempt is None
    first = job.begin_attempt(_plan("fab-b"), None)
    assert (job.status, first.n, first.submission_id, first.status) == ("shipping", 1, "adcp-j1-1", "shipping")
    job.submitted()
    assert job.status == "running" and first.status == "running" and first.submitted_at
    job.end_attempt(AttemptState.lost, "fab-b unreachable")
    second = job.begin_attempt(_plan("fab-a"), "checkpoint/adc-aoi-v1@2")
    assert second.n == 2 and second.init_checkpoint == "checkpoint/adc-aoi-v1@2" and job.plan.site == "fab-a"
    job.submitted()
    job.end_attempt(AttemptState.succeeded)
    assert job.status == "finishing"
    job.finish(JobState.succeeded)
    assert [(a.site, a.status.value) for a in job.attempts] == [("fab-b", "lost"), ("fab-a", "succeeded")]
    with pytest.raises(ValueError, match="allowed"):
        job.finish(JobState.running)


def test_stopping_a_job_stops_its_running_attempt():
    job = Job(id="j2", kind="tune", origin="fab-a", spec=_spec(kind="tune"))
    job.begin_attempt(_plan(), None)
    job.submitted()
    job.finish(JobState.stopped, "stopped by request")
    assert job.attempt.status == "stopped" and job.attempt.ended_at and job.error == "stopped by request"


def test_records_save_get_list_and_active(tmp_path):
    records = JobRecords(State(tmp_path / "state.db"))
    done = Job(id="done", kind="train", origin="fab-a", spec=_spec())
    done.begin_attempt(_plan(), None)
    done.outcome.checkpoints.append("checkpoint/adc-aoi-v1@1")
    done.warn("checkpoint x not relayed")
    done.finish(JobState.failed, "gave up")
    records.save(done)
    running = records.save(Job(id="running", kind="train", origin="fab-b", spec=_spec(origin="fab-b")))
    assert running.created_at and running.updated_at
    back = records.get("done")
    assert back.model_dump(exclude={"created_at", "updated_at"}) == done.model_dump(exclude={"created_at",
                                                                                              "updated_at"})
    assert [j.id for j in records.active()] == ["running"]
    assert {j.id for j in records.list(10)} == {"done", "running"}
    created = back.created_at
    back.status = JobState.stopped
    records.save(back)
    assert records.get("done").created_at == created and records.active()[0].id == "running"
    from configs.errors import NotFoundError

    with pytest.raises(NotFoundError, match="No job nope"):
        records.get("nope")


def test_the_openapi_schema_shows_the_job_models():
    from coordinator.api.job_routes import add_job_routes

    app = FastAPI()
    add_job_routes(app, trainer=None)  # the routes' schema needs no trainer
    schema = app.openapi()
    models = schema["components"]["schemas"]
    assert {"RunRequest", "Job", "Attempt", "JobOutcome", "JobState", "AttemptState", "PlanRecord"} <= set(models)
    assert models["JobState"]["enum"] == [s.value for s in JobState]
    post = schema["paths"]["/api/v1/jobs"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/RunRequest")
    assert post["responses"]["202"]["content"]["application/json"]["schema"]["$ref"].endswith("/Job")
    assert models["RunRequest"]["properties"]["dataset"]["description"]
