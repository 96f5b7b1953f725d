"""`karmada.rayjobs.RayJobClient` when the site's jobs API does not answer: what went wrong is
logged or carried in the answer, never dropped."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from configs.errors import NotFoundError
from karmada.rayjobs import RayJobClient

OBJECTS = [{"kind": "RayJob", "metadata": {"name": "adcp-j-1", "namespace": "adc"}},
           {"kind": "PropagationPolicy", "metadata": {"name": "adcp-j-1", "namespace": "adc"}}]


class _JobsApi:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def stop_job(self, sid):
        raise self.error

    def get_job_info(self, sid):
        raise self.error


class _Kube:
    def __init__(self) -> None:
        self.deleted = []

    def delete(self, obj):
        if obj["kind"] == "PropagationPolicy":
            raise NotFoundError("no such policy")
        self.deleted.append(obj["kind"])


def _client(monkeypatch, error: Exception, rayjob=None) -> tuple[RayJobClient, _Kube]:
    client = RayJobClient.__new__(RayJobClient)  # no platform file: the Karmada side is faked below
    kube = _Kube()
    client.site = SimpleNamespace(name="fab-k")
    client.gateway = SimpleNamespace(job_client=lambda: _JobsApi(error))
    monkeypatch.setattr(client, "objects", lambda sid, entrypoint, runtime_env, gpus=0: OBJECTS)
    monkeypatch.setattr(client, "_kube", lambda: kube)

    def status(sid):
        if rayjob is None:
            raise NotFoundError(f"no RayJob {sid}")
        return rayjob

    monkeypatch.setattr(client, "rayjob", status)
    return client, kube


def test_stop_with_the_jobs_api_down_logs_why_and_still_deletes_the_rayjob(monkeypatch, caplog):
    client, kube = _client(monkeypatch, ConnectionError("proxy refused"))
    with caplog.at_level(logging.INFO, "adcp.karmada"):
        assert client.stop_job("adcp-j-1") is False
    assert kube.deleted == ["RayJob"]  # the policy was already gone: fine
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "adcp-j-1" in record.getMessage() and "ConnectionError: proxy refused" in record.getMessage()


def test_stop_before_kuberay_submitted_the_job_is_not_a_warning(monkeypatch, caplog):
    client, kube = _client(monkeypatch, RuntimeError("404 not found"))
    with caplog.at_level(logging.INFO, "adcp.karmada"):
        client.stop_job("adcp-j-1")
    assert kube.deleted == ["RayJob"] and not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "no Ray job yet" in caplog.text


def test_job_info_falls_back_on_the_rayjob_and_says_why(monkeypatch):
    client, _ = _client(monkeypatch, ConnectionError("proxy refused"),
                        rayjob={"jobStatus": None, "jobDeploymentStatus": "Initializing"})
    info = client.get_job_info("adcp-j-1")
    assert info.status == "PENDING"
    assert info.message == "Initializing (not in the jobs API yet: ConnectionError: proxy refused)"


def test_job_info_of_nothing_names_both_causes(monkeypatch):
    client, _ = _client(monkeypatch, ConnectionError("proxy refused"))
    with pytest.raises(RuntimeError, match=r"no RayJob for adcp-j-1: .*the jobs API said ConnectionError: proxy"):
        client.get_job_info("adcp-j-1")
