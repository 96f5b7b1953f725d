"""One contract for the artifact store and its transfers, run against every backend: a local
folder (file://), memory:// and a real S3 server (SeaweedFS on 127.0.0.1).

Each backend is a subclass of `StoreContract` that only says how to make a fresh, empty store;
copies run between every pair of backends.
"""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path

import pytest

from configs import SynthConfig
from configs.errors import IntegrityError
from data.artifacts import ArtifactRef, ArtifactStore, Manifest, file_url
from data.dataset import open_dataset, write_synthetic
from data.model_format import METADATA_FILE, read_metadata
from data.publish import publish_artifact, verify_and_repair
from data.transfer import Job, copy_artifact, send_objects
from serve_apps.classifier import load_model
from tests.s3_server import s3_env, s3_server  # noqa: F401  (fixtures)

pytestmark = pytest.mark.integration

BACKENDS = ("file", "memory", "s3")


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, blob in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(blob)
    return root


@pytest.fixture
def source(tmp_path) -> Path:
    """A dataset-like folder: shards (one over a multipart part), annotations, a manifest."""
    return _tree(
        tmp_path / f"src-{uuid.uuid4().hex[:6]}",
        {
            "images/part-00000.parquet": os.urandom(300_000),
            "images/part-00001.parquet": os.urandom(6 << 20),
            "images/part-00002.parquet": os.urandom(1),
            "annotations/v1.parquet": os.urandom(20_000),
            "empty.txt": b"",
            "manifest.json": b'{"rows": 3}',
        },
    )


def _make_factory(kind: str, request, tmp_path):
    if kind == "file":
        return lambda: ArtifactStore((tmp_path / f"store-{uuid.uuid4().hex[:8]}").as_uri())
    if kind == "memory":
        return lambda: ArtifactStore(f"memory://contract-{uuid.uuid4().hex[:8]}")
    server = request.getfixturevalue("s3_env")
    return lambda: ArtifactStore(server.url(), server.storage_options)


def _damage(store: ArtifactStore, key: str) -> None:
    """Overwrite an object with other bytes of the same size (what bit rot looks like)."""
    path = store.path(key)
    blob = store.fs.cat_file(path)
    store.fs.pipe_file(path, bytes(b ^ 0x5A for b in blob[:64]) + blob[64:])


class StoreContract:
    """What every store must do. Subclasses give `new_store`: a factory of empty stores."""

    @pytest.fixture
    def new_store(self):
        raise NotImplementedError

    def test_publish_list_versions_resolve(self, new_store, source):
        store = new_store()
        assert store.list() == [] and store.versions("dataset", "aoi") == []
        first = publish_artifact(store, "dataset", "aoi", None, source, meta={"by": "test"})
        (source / "manifest.json").write_bytes(b'{"rows": 4}')
        second = publish_artifact(store, "dataset", "aoi", None, source)
        tenth = publish_artifact(store, "dataset", "aoi", "10", source / "manifest.json")
        model = publish_artifact(store, "model", "adc", "1", source / "images")
        assert [first.version, second.version] == ["1", "2"]
        assert store.versions("dataset", "aoi") == ["1", "2", "10"]
        assert store.resolve(ArtifactRef("dataset", "aoi")) == tenth.ref
        assert store.manifest(ArtifactRef("dataset", "aoi", "1")) == first
        assert {str(m.ref) for m in store.list()} == {str(x.ref) for x in (first, second, tenth, model)}
        assert [m.ref for m in store.list("model")] == [model.ref]
        # Version 2 changed one file only: it added one object and shares the rest.
        assert len({o.key for o in first.objects} ^ {o.key for o in second.objects}) == 2
        again = ArtifactStore(store.url, store.storage_options)  # another client of the same store
        assert again.manifest(first.ref) == first and again.exists(tenth.ref)
        store.delete(second.ref)
        assert store.versions("dataset", "aoi") == ["1", "10"]

    def test_manifest_is_written_last(self, new_store, source):
        src, dst = new_store(), new_store()
        m = publish_artifact(src, "dataset", "aoi", "1", source)
        send_objects([Job(e, src.fs, src.path(e.key)) for e in m.unique_objects()[:3]], dst)
        assert dst.list() == [] and not dst.exists(m.ref)  # objects alone are no artifact
        # A reader polling while a copy runs sees no artifact, then a complete one.
        seen, done = [], threading.Event()

        def read():
            while not done.is_set():
                for found in dst.list():
                    seen.append(all(dst.has_object(o, verify=True) for o in found.objects))

        reader = threading.Thread(target=read)
        reader.start()
        try:
            r = copy_artifact(src, dst, m.ref, workers=2, chunk_bytes=1 << 20)
        finally:
            done.set()
            reader.join()
        assert all(seen) and (r.objects_skipped, r.objects_sent) == (3, len(m.unique_objects()) - 3)
        assert dst.manifest(m.ref) == m

    def test_immutable_versions(self, new_store, source):
        store = new_store()
        m = publish_artifact(store, "dataset", "aoi", "1", source)
        assert publish_artifact(store, "dataset", "aoi", "1", source) == m
        (source / "images/part-00002.parquet").write_bytes(b"2")
        with pytest.raises(IntegrityError, match="immutable"):
            publish_artifact(store, "dataset", "aoi", "1", source)
        with pytest.raises(IntegrityError, match="immutable"):
            store.write_manifest(Manifest("dataset", "aoi", "1", m.objects[:1], {}, m.created))
        assert store.manifest(m.ref) == m

    def test_has_object_checks_size_and_hash(self, new_store, source):
        store = new_store()
        m = publish_artifact(store, "dataset", "aoi", "1", source)
        entry = m.entry("annotations/v1.parquet")
        assert store.has_object(entry) and store.has_object(entry, verify=True)
        _damage(store, entry.key)
        assert store.has_object(entry) and not store.has_object(entry, verify=True)
        store.fs.pipe_file(store.path(entry.key), b"short")
        assert not store.has_object(entry)
        store.fs.rm_file(store.path(entry.key))
        assert not store.has_object(entry)

    def test_verify_and_repair(self, new_store, source):
        good, bad = new_store(), new_store()
        m = publish_artifact(good, "dataset", "aoi", "1", source)
        publish_artifact(bad, "dataset", "aoi", "1", source)
        assert bad.verify(m.ref).ok
        _damage(bad, m.entry("images/part-00001.parquet").key)
        bad.fs.rm_file(bad.path(m.entry("manifest.json").key))
        found = bad.verify(m.ref)
        assert sorted(found.bad) == ["images/part-00001.parquet", "manifest.json"] and not found.ok
        fixed = verify_and_repair(bad, m.ref, repair_from=good)
        assert fixed.ok and bad.verify(m.ref).bad == []

    def test_dataset_artifact_reads_through_its_manifest_url(self, new_store, tmp_path):
        ds_dir = tmp_path / "ds"
        written = write_synthetic(
            ds_dir.as_uri(), SynthConfig(images=60, size=64, shard_rows=25, seed=3), name="aoi", version="1"
        )
        store = new_store()
        m = publish_artifact(store, "dataset", "aoi", "1", ds_dir)
        ds = open_dataset(store.manifest_url(m.ref))
        assert ds.manifest == written.manifest and ds.url == store.manifest_url(m.ref)
        assert ds.shard_urls == [store.object_url(m.entry(s["path"])) for s in written.manifest["shards"]]
        assert all(u.endswith(".parquet") for u in ds.shard_urls)
        assert ds.read_images(columns=["image_id"]).num_rows == 60 and len(ds.labels()) == 60
        ds.verify()

    def test_model_artifact_reads_through_its_manifest_url(self, new_store, tiny_model):
        model_dir, meta = tiny_model
        store = new_store()
        m = publish_artifact(store, "model", meta.name, meta.version, model_dir, meta={"classes": meta.classes})
        url = store.manifest_url(m.ref)
        assert read_metadata(url) == meta
        assert file_url(url, METADATA_FILE) == store.object_url(m.entry(METADATA_FILE))
        loaded = load_model(url)
        assert loaded.meta == meta and loaded.uri == url


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from tests.serve_fixtures import export_tiny_model

    uri, meta = export_tiny_model(tmp_path_factory.mktemp("model"), "1")
    return Path(uri), meta


class TestFileStore(StoreContract):
    @pytest.fixture
    def new_store(self, request, tmp_path):
        return _make_factory("file", request, tmp_path)


class TestMemoryStore(StoreContract):
    @pytest.fixture
    def new_store(self, request, tmp_path):
        return _make_factory("memory", request, tmp_path)


class TestS3Store(StoreContract):
    @pytest.fixture
    def new_store(self, request, tmp_path):
        return _make_factory("s3", request, tmp_path)


# --- copies between every pair of backends ------------------------------------------------


@pytest.mark.parametrize("src_kind", BACKENDS)
@pytest.mark.parametrize("dst_kind", BACKENDS)
def test_copy_between_backends(src_kind, dst_kind, request, tmp_path, source):
    src = _make_factory(src_kind, request, tmp_path)()
    dst = _make_factory(dst_kind, request, tmp_path)()
    m = publish_artifact(src, "dataset", "aoi", None, source, meta={"note": "x"})
    unique = m.unique_objects()
    total = sum(o.size for o in unique)
    moved, lock = [0, 0], threading.Lock()

    def progress(nbytes, nobjects):
        with lock:
            moved[0] += nbytes
            moved[1] += nobjects

    # 5 MiB chunks: the 6 MiB shard goes in two parts (an S3 multipart upload).
    first = copy_artifact(
        src, dst, ArtifactRef("dataset", "aoi"), workers=3, chunk_bytes=5 << 20, on_progress=progress
    )
    assert (first.bytes_sent, first.objects_sent, first.objects_verified) == (total, len(unique), len(unique))
    assert moved == [total, len(unique)]
    assert dst.manifest(m.ref) == m and dst.verify(m.ref).ok
    again = copy_artifact(src, dst, m.ref)
    assert (again.bytes_sent, again.bytes_skipped, again.objects_skipped) == (0, total, len(unique))
    # Damage at the destination (same size) is found by --verify-existing and sent again.
    damaged = m.entry("images/part-00001.parquet")
    _damage(dst, damaged.key)
    assert copy_artifact(src, dst, m.ref).objects_sent == 0
    repaired = copy_artifact(src, dst, m.ref, verify_existing=True)
    assert (repaired.objects_repaired, repaired.bytes_sent, repaired.objects_verified) == (
        1,
        damaged.size,
        len(unique),
    )
    assert dst.verify(m.ref).ok
    # Damage at the source is refused: nothing lands at the object's key, no manifest appears.
    m2 = publish_artifact(src, "dataset", "aoi2", None, source)
    _damage(src, m2.entry("annotations/v1.parquet").key)
    fresh = _make_factory(dst_kind, request, tmp_path)()
    with pytest.raises(IntegrityError, match="annotations/v1.parquet"):
        copy_artifact(src, fresh, m2.ref, retries=1, backoff_s=0)
    assert fresh.list() == [] and not fresh.has_object(m2.entry("annotations/v1.parquet"))


def test_s3_without_server_checksums_uses_a_checked_temporary_key(request, tmp_path, source, monkeypatch):
    """A server that ignores x-amz-checksum-sha256: each object goes to a temporary key, is read
    back and hashed there, and only then copied to its final key."""
    import data.object_copy as object_copy

    server = request.getfixturevalue("s3_env")
    src = _make_factory("file", request, tmp_path)()
    dst = ArtifactStore(server.url(), server.storage_options)
    assert object_copy._s3_checks_sha256(dst)  # SeaweedFS does check them: the usual path
    monkeypatch.setitem(object_copy._CHECKSUM_SERVERS, (server.endpoint_url, server.bucket), False)
    used = []

    def generic(job, *args):
        used.append(job.entry.key)
        return write_generic(job, *args)

    write_generic = object_copy._write_generic
    monkeypatch.setattr(object_copy, "_write_generic", generic)
    m = publish_artifact(src, "dataset", "aoi", None, source)
    r = copy_artifact(src, dst, m.ref, chunk_bytes=5 << 20)
    assert r.objects_verified == len(m.unique_objects()) == len(used) and dst.verify(m.ref).ok
    leftovers = [p for p in dst.fs.find(dst.path("objects")) if ".part-" in p]
    assert leftovers == []
