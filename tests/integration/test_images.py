"""Operator images end to end: build an OCI archive, keep it as an `image` artifact, push it to a
real registry (Debian's docker-registry) with real skopeo, and read it back."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tarfile
import uuid

import httpx
import pytest

from configs.errors import InputError
from coordinator.center.registry import (
    RegistryError,
    pull_from_registry,
    push_to_registry,
)
from data.artifacts import ArtifactStore
from data.images import download_image, publish_image
from data.oci_archive import inspect_archive, read_layer_files
from data.oci_build import build_oci_archive
from tests.registry_server import registry_server  # noqa: F401

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed (make install-test)"),
]

LAYERS = [
    {"app/main.py": b"import adc\nprint(adc.VERSION)\n", "app/adc/__init__.py": b"VERSION = '1.2'\n"},
    {"app/adc/weights.bin": bytes(range(256)) * 64},
]


def _repo() -> str:
    return f"adcp/operator-{uuid.uuid4().hex[:8]}"


def _registry_digest(address: str, repo: str, tag: str) -> str:
    """The digest the registry itself reports for repo:tag (read without skopeo)."""
    r = httpx.head(
        f"http://{address}/v2/{repo}/manifests/{tag}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json, "
                           "application/vnd.docker.distribution.manifest.v2+json"},
    )
    r.raise_for_status()
    return r.headers["Docker-Content-Digest"]


def test_oci_archive_through_store_and_registry(tmp_path, registry_server):  # noqa: F811
    archive = tmp_path / "operator.tar"
    built = build_oci_archive(archive, LAYERS, ref_name="adcp/operator:1", config={"Cmd": ["python", "main.py"]})

    store = ArtifactStore((tmp_path / "store").as_uri())
    manifest = publish_image(store, "operator", archive)
    assert manifest.version == "1"
    assert manifest.meta["format"] == "oci-archive"
    assert manifest.meta["manifest_digest"] == built
    assert (manifest.meta["repo"], manifest.meta["tag"]) == ("adcp/operator", "1")
    assert [o.path for o in manifest.objects] == ["image.tar"]

    # What a site would do: take the artifact out of the store and push it to its registry.
    local = download_image(store, "operator", None, tmp_path / "site")
    repo = _repo()
    pushed = push_to_registry(local, registry_server.address, repo, "1")
    assert pushed == built == _registry_digest(registry_server.address, repo, "1")

    back = pull_from_registry(registry_server.address, repo, "1", tmp_path / "pulled.tar")
    info, original = inspect_archive(back), inspect_archive(archive)
    assert info.manifest_digest == built
    assert [layer.digest for layer in info.layers] == manifest.meta["layers"]
    assert [layer.diff_id for layer in info.layers] == [layer.diff_id for layer in original.layers]
    assert (info.repo, info.tag) == (repo, "1")
    for i, files in enumerate(LAYERS):
        assert read_layer_files(back, i) == files


def test_docker_archive_push_and_pull(tmp_path, registry_server):  # noqa: F811
    oci = tmp_path / "operator.tar"
    build_oci_archive(oci, LAYERS)
    docker = tmp_path / "operator-docker.tar"
    # A docker-archive as `docker save` shapes it, converted by skopeo itself.
    subprocess.run(
        ["skopeo", "copy", "--quiet", f"oci-archive:{oci}", f"docker-archive:{docker}:adcp/operator:2"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    info = inspect_archive(docker)
    assert info.format == "docker-archive" and info.tag == "2"

    repo = _repo()
    pushed = push_to_registry(docker, registry_server.address, repo, "2")
    assert pushed == _registry_digest(registry_server.address, repo, "2")
    back = pull_from_registry(registry_server.address, repo, "2", tmp_path / "pulled.tar")
    assert [layer.diff_id for layer in inspect_archive(back).layers] == [layer.diff_id for layer in info.layers]
    assert read_layer_files(back, 1) == LAYERS[1]


def test_bad_archive_is_refused_before_anything_is_sent(tmp_path, registry_server):  # noqa: F811
    not_an_image = tmp_path / "code.tar"
    with tarfile.open(not_an_image, "w") as tar:
        tar.add(__file__, arcname="test_images.py")
    repo = _repo()
    with pytest.raises(InputError, match="not a valid image archive"):
        push_to_registry(not_an_image, registry_server.address, repo, "1")
    assert httpx.get(f"{registry_server.url}/v2/{repo}/tags/list").status_code == 404


def test_bad_archive_is_not_published(tmp_path):
    store = ArtifactStore((tmp_path / "store").as_uri())
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"\0" * 100)
    with pytest.raises(InputError, match="image archive"):
        publish_image(store, "operator", junk)
    assert store.versions("image", "operator") == []


def test_unreachable_registry_is_one_clear_line(tmp_path):
    archive = tmp_path / "operator.tar"
    build_oci_archive(archive, LAYERS)
    with socket.socket() as s:  # a port nothing listens on (bound, never listening)
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
        with pytest.raises(RegistryError) as err:
            push_to_registry(archive, address, "adcp/operator", "1", timeout_s=60)
    message = str(err.value)
    assert address in message and "connection refused" in message
    assert "\n" not in message and "Traceback" not in message and "level=fatal" not in message


def test_missing_tag_is_a_clear_error(tmp_path, registry_server):  # noqa: F811
    with pytest.raises(RegistryError, match="manifest unknown"):
        pull_from_registry(registry_server.address, _repo(), "nope", tmp_path / "x.tar")
    assert not (tmp_path / "x.tar").exists()
