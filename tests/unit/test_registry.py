"""The center's registry client without a registry: names are checked before skopeo runs, a
missing skopeo is a clear error, and skopeo's error text becomes one line."""

from __future__ import annotations

import pytest

from configs.errors import AdcpError, InputError
from coordinator.center import registry
from coordinator.center.registry import RegistryError, push_to_registry
from data.oci_build import build_oci_archive

LAYERS = [{"app/main.py": b"print('hello')\n"}]


def test_skopeo_message_is_one_line():
    stderr = (
        'time="2025-01-01T00:00:00Z" level=warning msg="something harmless"\n'
        'time="2025-01-01T00:00:00Z" level=fatal msg="trying to reuse blob: pinging container '
        'registry 127.0.0.1:1: Get \\"http://127.0.0.1:1/v2/\\": dial tcp: connection refused"\n'
    )
    msg = registry._skopeo_message(stderr)
    assert msg == (
        'trying to reuse blob: pinging container registry 127.0.0.1:1: Get "http://127.0.0.1:1/v2/": '
        "dial tcp: connection refused"
    )
    assert registry._skopeo_message("plain failure\n") == "plain failure"


def test_push_validates_names_before_running_skopeo(tmp_path, monkeypatch):
    archive = tmp_path / "op.tar"
    build_oci_archive(archive, LAYERS)
    monkeypatch.setattr(registry, "_skopeo", lambda: pytest.fail("skopeo must not run"))
    with pytest.raises(InputError, match="HOST:PORT"):
        push_to_registry(archive, "http://127.0.0.1:5000", "adcp/operator", "1")
    with pytest.raises(InputError, match="repository"):
        push_to_registry(archive, "127.0.0.1:5000", "ADCP", "1")
    with pytest.raises(InputError, match="tag"):
        push_to_registry(archive, "127.0.0.1:5000", "adcp/operator", "-bad")


def test_missing_skopeo_is_a_clear_error(tmp_path, monkeypatch):
    archive = tmp_path / "op.tar"
    build_oci_archive(archive, LAYERS)
    monkeypatch.setattr(registry.shutil, "which", lambda name: None)
    with pytest.raises(RegistryError, match="skopeo is not installed") as err:
        push_to_registry(archive, "127.0.0.1:5000", "adcp/operator", "1")
    assert isinstance(err.value, AdcpError) and "apt-get install skopeo" in str(err.value)




def test_exported_names():
    assert set(registry.__all__) == {"RegistryError", "pull_from_registry", "push_to_registry"}
