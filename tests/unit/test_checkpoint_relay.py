"""The checkpoint relay of a running job (`coordinator.jobs.follow.relay_checkpoints`): what it
cannot list or copy is logged and recorded on the job as a warning, and tried again next poll."""

from __future__ import annotations

import logging

import pytest

from configs.errors import IntegrityError
from configs.runs import Job, JobSpec
from coordinator.jobs import follow


class _Store:
    def __init__(self, versions: list[str] | Exception) -> None:
        self._versions = versions

    def versions(self, kind: str, name: str) -> list[str]:
        assert (kind, name) == ("checkpoint", "adc-aoi-v1")
        if isinstance(self._versions, Exception):
            raise self._versions
        return self._versions


class _Center:
    central = object()

    def __init__(self, store: _Store, reachable: bool = True) -> None:
        self._store, self._reachable = store, reachable

    def reachable(self, site: str) -> bool:
        return self._reachable

    def store(self, site: str) -> _Store:
        return self._store


@pytest.fixture
def job() -> Job:
    spec = JobSpec(origin="fab-a", dataset="dataset/aoi@1", model="model/adc-aoi@v1", checkpoints="adc-aoi-v1")
    return Job(id="j1", kind="train", origin="fab-a", spec=spec)


def test_a_store_that_cannot_be_listed_is_a_warning_on_the_job(job, caplog):
    saved = []
    center = _Center(_Store(OSError("connection reset by peer")))
    with caplog.at_level(logging.WARNING, "adcp.training"):
        follow.relay_checkpoints(center, job, "fab-b", lambda j: saved.append(list(j.outcome.warnings)))
        follow.relay_checkpoints(center, job, "fab-b", lambda j: saved.append(list(j.outcome.warnings)))
    (warning,) = job.outcome.warnings
    assert "checkpoints at fab-b could not be listed" in warning and "connection reset by peer" in warning
    assert saved == [[warning]]  # recorded (and saved) once, not every poll
    assert "connection reset by peer" in caplog.text


def test_a_checkpoint_that_fails_to_copy_is_reported_and_relayed_next_time(job, monkeypatch):
    copied, broken = [], {"1"}

    def copy(src, dst, ref):
        if ref.version in broken:
            raise IntegrityError(f"{ref}: sha256 mismatch")
        copied.append(str(ref))

    monkeypatch.setattr(follow, "copy_artifact", copy)
    saves = []
    center = _Center(_Store(["1", "2"]))
    follow.relay_checkpoints(center, job, "fab-b", saves.append)
    assert job.outcome.checkpoints == ["checkpoint/adc-aoi-v1@2"]
    (warning,) = job.outcome.warnings
    assert warning.startswith("checkpoint checkpoint/adc-aoi-v1@1 not relayed from fab-b: IntegrityError")
    broken.clear()
    follow.relay_checkpoints(center, job, "fab-b", saves.append)
    assert job.outcome.checkpoints == ["checkpoint/adc-aoi-v1@2", "checkpoint/adc-aoi-v1@1"]
    assert copied == ["checkpoint/adc-aoi-v1@2", "checkpoint/adc-aoi-v1@1"]
    assert len(saves) == 3  # the warning, then each checkpoint as it came home


def test_a_site_whose_store_is_out_of_reach_says_its_checkpoints_stay_there(job):
    follow.relay_checkpoints(_Center(_Store(["1"]), reachable=False), job, "fab-p", lambda j: None)
    assert job.outcome.checkpoints == []
    assert job.outcome.warnings == ["checkpoints published at fab-p stay there: the center cannot reach its store"]
