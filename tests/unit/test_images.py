"""Image archives without skopeo or a registry: build, inspect, validate."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from configs.errors import InputError, IntegrityError, NotFoundError
from data import images, oci_archive, oci_build
from data.oci_archive import inspect_archive, read_layer_files
from data.oci_build import build_oci_archive

LAYERS = [
    {"app/main.py": b"print('hello')\n", "app/pkg/__init__.py": b""},
    {"app/pkg/model.py": b"WEIGHTS = [1, 2, 3]\n", "etc/adcp.yaml": b"site: fab-a\n"},
]


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


def _sha(blob: bytes) -> str:
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def test_oci_archive_is_valid_layout(tmp_path):
    out = tmp_path / "op.tar"
    digest = build_oci_archive(out, LAYERS, ref_name="adcp/operator:7", config={"Cmd": ["python", "main.py"]})
    files = _members(out)
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(files["index.json"])
    [entry] = index["manifests"]
    assert entry["digest"] == digest
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "7"
    # Every blob is stored under its own sha256.
    for name, blob in files.items():
        if name.startswith("blobs/sha256/"):
            assert _sha(blob) == "sha256:" + name.rsplit("/", 1)[1]
    manifest = json.loads(files[f"blobs/sha256/{digest.split(':')[1]}"])
    config = json.loads(files[f"blobs/sha256/{manifest['config']['digest'].split(':')[1]}"])
    assert config["config"]["Cmd"] == ["python", "main.py"]
    assert len(manifest["layers"]) == len(config["rootfs"]["diff_ids"]) == 2
    for desc, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"]):
        packed = files[f"blobs/sha256/{desc['digest'].split(':')[1]}"]
        assert desc["size"] == len(packed)
        assert _sha(gzip.decompress(packed)) == diff_id


def test_inspect_reports_what_was_built(tmp_path):
    out = tmp_path / "op.tar"
    digest = build_oci_archive(out, LAYERS, ref_name="adcp/operator:7")
    info = inspect_archive(out)
    assert info.format == "oci-archive"
    assert info.manifest_digest == digest
    assert (info.repo, info.tag) == ("adcp/operator", "7")
    assert info.size == out.stat().st_size
    assert [layer.media_type for layer in info.layers] == [oci_archive.MT_OCI_LAYER_GZIP] * 2
    assert read_layer_files(out, 0) == LAYERS[0]
    assert read_layer_files(out, 1) == LAYERS[1]
    meta = info.meta()
    assert meta["layers"] == [layer.digest for layer in info.layers]
    assert meta["manifest_digest"] == digest and meta["format"] == "oci-archive"


def test_build_is_reproducible_and_content_addressed(tmp_path):
    a = build_oci_archive(tmp_path / "a.tar", LAYERS)
    b = build_oci_archive(tmp_path / "b.tar", [dict(reversed(list(d.items()))) for d in LAYERS])
    assert a == b
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    changed = [LAYERS[0], {**LAYERS[1], "etc/adcp.yaml": b"site: fab-b\n"}]
    c = build_oci_archive(tmp_path / "c.tar", changed)
    assert c != a
    # The unchanged lower layer keeps its digest.
    assert inspect_archive(tmp_path / "c.tar").layers[0] == inspect_archive(tmp_path / "a.tar").layers[0]


def test_folder_becomes_one_layer_under_app(tmp_path):
    src = tmp_path / "project"
    (src / "pkg" / "__pycache__").mkdir(parents=True)
    (src / "train.py").write_text("print('train')\n")
    (src / "pkg" / "util.py").write_text("X = 1\n")
    (src / "pkg" / "__pycache__" / "util.cpython-311.pyc").write_bytes(b"\0")
    out = tmp_path / "op.tar"
    build_oci_archive(out, src)
    info = inspect_archive(out)
    assert len(info.layers) == 1
    assert read_layer_files(out) == {"app/train.py": b"print('train')\n", "app/pkg/util.py": b"X = 1\n"}
    with tarfile.open(out) as tar:
        index = json.load(tar.extractfile("index.json"))
        manifest = json.load(tar.extractfile(f"blobs/sha256/{index['manifests'][0]['digest'][7:]}"))
        config = json.load(tar.extractfile(f"blobs/sha256/{manifest['config']['digest'][7:]}"))
    assert config["config"]["WorkingDir"] == "/app"


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"layers": [{"../etc/passwd": b"x"}]}, "relative POSIX paths"),
        ({"layers": [{"/abs": b"x"}]}, "relative POSIX paths"),
        ({"layers": []}, "at least one layer"),
        ({"layers": [{"a": b"x"}], "ref_name": "Adcp/Operator:1"}, "lowercase repository"),
        ({"layers": [{"a": b"x"}], "config": {"cmd": ["x"]}}, "Cmd"),
    ],
)
def test_build_rejects_bad_input(tmp_path, kwargs, words):
    with pytest.raises(InputError, match=words):
        build_oci_archive(tmp_path / "x.tar", **kwargs)
    assert not (tmp_path / "x.tar").exists()


def _docker_archive(path: Path, files: dict[str, bytes]) -> str:
    """A `docker save`-style archive (manifest.json, config json, uncompressed layer.tar)."""
    layer = oci_build._tar_layer(files)
    config = json.dumps(
        {"architecture": "arm64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [_sha(layer)]}}
    ).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = [{"Config": config_name, "RepoTags": ["adcp/operator:2"], "Layers": ["abc/layer.tar"]}]
    with tarfile.open(path, "w") as tar:
        for name, blob in [("manifest.json", json.dumps(manifest).encode()), (config_name, config),
                           ("abc/layer.tar", layer)]:
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return "sha256:" + config_name[:-5]


def test_inspect_docker_archive(tmp_path):
    path = tmp_path / "d.tar"
    image_id = _docker_archive(path, {"app/a.py": b"A = 1\n"})
    info = inspect_archive(path)
    assert info.format == "docker-archive"
    assert info.manifest_digest is None and info.config_digest == image_id
    assert (info.repo, info.tag, info.architecture) == ("adcp/operator", "2", "arm64")
    assert info.layers[0].digest == info.layers[0].diff_id
    assert read_layer_files(path) == {"app/a.py": b"A = 1\n"}


def test_not_an_image_archive(tmp_path):
    plain = tmp_path / "plain.tar"
    with tarfile.open(plain, "w") as tar:
        info = tarfile.TarInfo("README")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(InputError, match="neither oci-layout") as err:
        inspect_archive(plain)
    assert "docker archive" in str(err.value)  # says what is allowed

    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"definitely not a tar" * 100)
    with pytest.raises(InputError, match="cannot be read as a tar"):
        inspect_archive(garbage)
    with pytest.raises(NotFoundError):
        inspect_archive(tmp_path / "missing.tar")


def test_damaged_blob_is_an_integrity_error(tmp_path):
    good = tmp_path / "good.tar"
    build_oci_archive(good, LAYERS)
    bad = tmp_path / "bad.tar"
    layer_digest = inspect_archive(good).layers[1].digest[7:]
    with tarfile.open(good) as src, tarfile.open(bad, "w") as dst:
        for m in src:
            blob = src.extractfile(m).read()
            if m.name.endswith(layer_digest):
                blob = blob[:-1] + bytes([blob[-1] ^ 0xFF])
            dst.addfile(m, io.BytesIO(blob))
    with pytest.raises(IntegrityError, match="layer blob"):
        inspect_archive(bad)


def test_missing_blob_is_an_input_error(tmp_path):
    good = tmp_path / "good.tar"
    digest = build_oci_archive(good, LAYERS)
    bad = tmp_path / "bad.tar"
    with tarfile.open(good) as src, tarfile.open(bad, "w") as dst:
        for m in src:
            if not m.name.endswith(digest[7:]):
                dst.addfile(m, src.extractfile(m))
    with pytest.raises(InputError, match="is missing"):
        inspect_archive(bad)


def test_exported_names():
    assert set(images.__all__) == {"ARCHIVE_NAME", "KIND", "download_image", "publish_image"}
    assert set(oci_build.__all__) == {"build_oci_archive"}
    assert {"ImageInfo", "LayerInfo", "inspect_archive", "read_layer_files"} <= set(oci_archive.__all__)
    for module in (images, oci_build, oci_archive):
        for name in module.__all__:
            assert hasattr(module, name)
