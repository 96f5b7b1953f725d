"""The artifact store and transfer engine on memory:// and local folders (the S3 contract is in
tests/integration/test_store_contract.py)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import uuid
from pathlib import Path

import pytest
from fsspec.implementations.memory import MemoryFileSystem

import data.transfer as transfer
from configs.errors import InputError, IntegrityError, NotFoundError
from data.artifacts import (
    KINDS,
    ArtifactRef,
    ArtifactStore,
    Manifest,
    ObjectEntry,
    file_url,
    file_urls,
)
from data.publish import publish_artifact, verify_and_repair
from data.transfer import TransferError, TransferResult, copy_artifact

SHA = "ab" * 32


# --- names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("dataset/aoi-demo", ArtifactRef("dataset", "aoi-demo")),
        ("model/adc@7", ArtifactRef("model", "adc", "7")),
        ("code/op.v2_x@2026-01-05.rc1", ArtifactRef("code", "op.v2_x", "2026-01-05.rc1")),
        (" image/panel-aoi@V3 ", ArtifactRef("image", "panel-aoi", "V3")),
    ],
)
def test_ref_parse_and_str(text, expected):
    ref = ArtifactRef.parse(text)
    assert ref == expected
    assert ArtifactRef.parse(str(ref)) == ref
    assert str(ref.with_version("9")) == f"{ref.kind}/{ref.name}@9"


@pytest.mark.parametrize(
    "text, what",
    [
        ("aoi-demo", "not an artifact reference"),
        ("dataset/", "not an artifact reference"),
        ("dataset/x@", "not an artifact reference"),
        ("weights/x", 'Unknown artifact kind "weights"'),
        ("dataset/Upper", "Invalid artifact name"),
        ("dataset/-x", "Invalid artifact name"),
        ("dataset/a/b", "Invalid artifact name"),
        ("dataset/" + "a" * 64, "Invalid artifact name"),
        ("dataset/x@1/2", "Invalid artifact version"),
        ("dataset/x@" + "1" * 65, "Invalid artifact version"),
    ],
)
def test_ref_parse_errors_say_what_and_what_is_allowed(text, what):
    with pytest.raises(InputError, match=what) as err:
        ArtifactRef.parse(text)
    assert err.value.allowed


def test_unknown_kind_lists_the_kinds():
    with pytest.raises(InputError) as err:
        ArtifactRef("weights", "x")
    assert all(k in err.value.allowed for k in KINDS)


@pytest.mark.parametrize(
    "path, suffix",
    [
        ("images/part-00000.parquet", ".parquet"),
        ("code.ZIP", ".zip"),
        ("model.pt2", ".pt2"),
        ("image.tar.gz", ".gz"),
        ("README", ""),
        (".hidden", ""),
        ("a/b.c-d", ""),
        ("x.abcdefghijk", ""),  # 11 characters: too long to be a suffix
        ("x.abcdefghij", ".abcdefghij"),
        ("trailing.", ""),
    ],
)
def test_object_key_keeps_a_plain_lower_case_suffix(path, suffix):
    entry = ObjectEntry(path, SHA, 1)
    assert entry.key == f"objects/ab/{SHA}{suffix}"


@pytest.mark.parametrize("path", ["", "/abs", "../up", "a/../b", "a//b", "a/./b", "a\\b", "dir/"])
def test_object_paths_stay_inside_the_artifact(path):
    with pytest.raises(InputError):
        ObjectEntry(path, SHA, 1)


def test_object_entry_checks_hash_and_size():
    with pytest.raises(InputError, match="sha256"):
        ObjectEntry("a", "AB" * 32, 1)
    with pytest.raises(InputError, match="size"):
        ObjectEntry("a", SHA, -1)


def test_manifest_round_trip_and_lookup():
    m = Manifest(
        "model",
        "adc",
        "3",
        (ObjectEntry("model.pt2", SHA, 5), ObjectEntry("m.json", "cd" * 32, 2)),
        {"a": 1},
        "t",
    )
    doc = json.loads(m.dumps())
    assert doc["format"] == "adcp-artifact/1" and doc["total_bytes"] == 7
    assert Manifest.from_json(doc) == m
    assert m.entry("m.json").size == 2 and m.ref == ArtifactRef("model", "adc", "3")
    with pytest.raises(NotFoundError, match="no file nope"):
        m.entry("nope")
    with pytest.raises(IntegrityError):
        Manifest.from_json({**doc, "format": "other/1"})
    with pytest.raises(IntegrityError):
        Manifest.from_json({**doc, "objects": [{"path": "../x", "sha256": SHA, "size": 1}]})


# --- stores ----------------------------------------------------------------------------------


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, blob in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(blob)
    return root


@pytest.fixture(params=["memory", "file"])
def store(request, tmp_path):
    if request.param == "memory":
        return ArtifactStore(f"memory://adcp-unit-{uuid.uuid4().hex[:8]}")
    return ArtifactStore((tmp_path / "store").as_uri())


@pytest.fixture
def source(tmp_path):
    return _tree(
        tmp_path / "src",
        {
            "images/part-00000.parquet": os.urandom(3000),
            "images/part-00001.parquet": os.urandom(5000),
            "annotations/v1.parquet": b"same",
            "copy-of-annotations.parquet": b"same",  # equal content and suffix: one object
            "manifest.json": b"{}",
        },
    )


def test_publish_then_read_back(store, source):
    m = publish_artifact(store, "dataset", "aoi", None, source, meta={"rows": 3})
    assert str(m.ref) == "dataset/aoi@1" and m.meta == {"rows": 3}
    assert {o.path for o in m.objects} == {
        "images/part-00000.parquet",
        "images/part-00001.parquet",
        "annotations/v1.parquet",
        "copy-of-annotations.parquet",
        "manifest.json",
    }
    assert len(m.unique_objects()) == 4
    for o in m.objects:
        assert o.sha256 == hashlib.sha256((source / o.path).read_bytes()).hexdigest()
        assert store.has_object(o, verify=True)
    assert store.manifest(ArtifactRef("dataset", "aoi")) == m
    assert store.list() == [m] and store.list("model") == []
    with store.fs.open(store.path(m.entry("manifest.json").key), "rb") as f:
        assert f.read() == b"{}"


def test_versions_sort_numerically_and_latest_wins(store, source):
    for v in ("2", "10", "1", "9"):
        (source / "manifest.json").write_bytes(v.encode())
        publish_artifact(store, "dataset", "aoi", v, source)
    assert store.versions("dataset", "aoi") == ["1", "2", "9", "10"]
    assert store.resolve(ArtifactRef("dataset", "aoi")).version == "10"
    assert store.next_version("dataset", "aoi") == "11"
    assert publish_artifact(store, "dataset", "aoi", None, source / "manifest.json").version == "11"
    with pytest.raises(NotFoundError, match="No version 3") as err:
        store.resolve(ArtifactRef("dataset", "aoi", "3"))
    assert "1, 2, 9, 10, 11" in err.value.allowed
    with pytest.raises(NotFoundError, match="No dataset named other") as err:
        store.manifest(ArtifactRef("dataset", "other"))
    assert "aoi" in err.value.allowed


def test_artifacts_are_immutable(store, source):
    first = publish_artifact(store, "dataset", "aoi", "1", source)
    assert publish_artifact(store, "dataset", "aoi", "1", source) == first
    (source / "images/part-00000.parquet").write_bytes(b"changed")
    with pytest.raises(IntegrityError, match="immutable"):
        publish_artifact(store, "dataset", "aoi", "1", source)
    assert store.manifest(first.ref) == first


def test_only_complete_artifacts_are_listed(store, source):
    m = publish_artifact(store, "dataset", "aoi", "1", source)
    # What an interrupted writer leaves: objects without a manifest, a temp manifest.
    for key in ("artifacts/dataset/aoi/2.json.tmp-123", "objects/00/" + "00" * 32 + ".part-abc"):
        store.fs.makedirs(store.path(key.rsplit("/", 1)[0]), exist_ok=True)
        store.fs.pipe_file(store.path(key), b"{")
    assert store.versions("dataset", "aoi") == ["1"]
    assert [x.ref for x in store.list()] == [m.ref]
    store.delete(m.ref)
    assert store.list() == [] and not store.exists(m.ref)
    with pytest.raises(InputError, match="which version"):
        store.delete(ArtifactRef("dataset", "aoi"))


def test_publish_a_single_file_and_an_fsspec_directory(store, tmp_path):
    f = _tree(tmp_path / "m", {"model.pt2": b"program"}) / "model.pt2"
    m = publish_artifact(store, "model", "adc", "1", f)
    assert [o.path for o in m.objects] == ["model.pt2"]
    mem = MemoryFileSystem()
    base = f"/adcp-src-{uuid.uuid4().hex[:8]}"
    mem.pipe({f"{base}/a.txt": b"a", f"{base}/sub/b.txt": b"b"})
    m2 = publish_artifact(store, "code", "op", None, f"memory://{base}")
    assert sorted(o.path for o in m2.objects) == ["a.txt", "sub/b.txt"]


def test_publish_refuses_nothing(store, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no files"):
        publish_artifact(store, "dataset", "x", None, tmp_path / "empty")
    with pytest.raises(NotFoundError, match="does not exist"):
        publish_artifact(store, "dataset", "x", None, tmp_path / "missing")


def test_file_url_takes_a_directory_or_a_manifest(store, source):
    m = publish_artifact(store, "dataset", "aoi", "1", source)
    murl = store.manifest_url(m.ref)
    assert murl == f"{store.url}/artifacts/dataset/aoi/1.json"
    assert file_url(murl, "manifest.json") == store.object_url(m.entry("manifest.json"))
    assert file_urls(murl)["images/part-00001.parquet"].endswith(".parquet")
    assert file_url("file:///data/ds/1/", "manifest.json") == "file:///data/ds/1/manifest.json"
    assert file_urls("file:///data/ds/1") is None
    with pytest.raises(NotFoundError, match="no file nope"):
        file_url(murl, "nope")
    with pytest.raises(NotFoundError, match="No artifact manifest"):
        file_url(f"{store.url}/artifacts/dataset/aoi/2.json", "manifest.json")


def test_download_materialises_the_files(store, source, tmp_path):
    m = publish_artifact(store, "dataset", "aoi", "1", source)
    out = store.download(m.ref, tmp_path / "out")
    for o in m.objects:
        assert (out / o.path).read_bytes() == (source / o.path).read_bytes()


# --- transfers ----------------------------------------------------------------------------


def _mem() -> ArtifactStore:
    return ArtifactStore(f"memory://adcp-unit-{uuid.uuid4().hex[:8]}")


def test_copy_counts_progress_and_recopy_sends_nothing(tmp_path, source):
    src = ArtifactStore(tmp_path / "a")
    m = publish_artifact(src, "dataset", "aoi", None, source)
    for dst in (_mem(), ArtifactStore(tmp_path / "b")):
        plan, moved, objects = [], [0], [0]
        lock = threading.Lock()

        def progress(nbytes, nobjects, lock=lock, moved=moved, objects=objects):
            with lock:
                moved[0] += nbytes
                objects[0] += nobjects

        r = copy_artifact(
            src,
            dst,
            m.ref,
            workers=3,
            chunk_bytes=1024,
            on_plan=lambda b, n, plan=plan: plan.append((b, n)),
            on_progress=progress,
        )
        unique = sum(o.size for o in m.unique_objects())
        assert plan == [(unique, 4)] and (moved[0], objects[0]) == (unique, 4)
        assert (r.bytes_sent, r.objects_sent, r.objects_verified, r.objects_skipped) == (unique, 4, 4, 0)
        assert dst.manifest(m.ref) == m and dst.verify(m.ref).ok
        again = copy_artifact(src, dst, ArtifactRef("dataset", "aoi"))
        assert (again.bytes_sent, again.objects_sent, again.bytes_skipped, again.objects_skipped) == (
            0,
            0,
            unique,
            4,
        )
        assert again.objects_verified == 0
        assert set(again.to_dict()) == set(TransferResult.__dataclass_fields__)


def test_leftover_part_files_do_not_count(tmp_path, source):
    src = ArtifactStore(tmp_path / "a")
    m = publish_artifact(src, "dataset", "aoi", None, source)
    dst = ArtifactStore(tmp_path / "b")
    entry = m.entry("images/part-00000.parquet")
    part = Path(dst.path(entry.key) + ".part-dead")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"half")
    assert not dst.has_object(entry)
    r = copy_artifact(src, dst, m.ref)
    assert r.objects_sent == 4 and dst.verify(m.ref).ok


def test_verify_existing_repairs_a_damaged_destination(tmp_path, source):
    src = ArtifactStore(tmp_path / "a")
    m = publish_artifact(src, "dataset", "aoi", None, source)
    dst = ArtifactStore(tmp_path / "b")
    copy_artifact(src, dst, m.ref)
    entry = m.entry("images/part-00001.parquet")
    _flip_a_byte(Path(dst.path(entry.key)))
    assert dst.has_object(entry) and not dst.has_object(entry, verify=True)
    assert copy_artifact(src, dst, m.ref).objects_sent == 0  # size matches: not rehashed
    r = copy_artifact(src, dst, m.ref, verify_existing=True)
    assert (r.objects_repaired, r.objects_sent, r.objects_verified, r.objects_skipped) == (1, 1, 4, 3)
    assert dst.verify(m.ref).ok


def test_verify_finds_and_repairs(tmp_path, source):
    src = ArtifactStore(tmp_path / "a")
    m = publish_artifact(src, "dataset", "aoi", None, source)
    dst = ArtifactStore(tmp_path / "b")
    copy_artifact(src, dst, m.ref)
    _flip_a_byte(Path(dst.path(m.entry("images/part-00000.parquet").key)))
    os.unlink(dst.path(m.entry("manifest.json").key))
    found = dst.verify(m.ref)
    assert not found.ok and found.objects_checked == 4
    assert sorted(found.bad) == ["images/part-00000.parquet", "manifest.json"]
    fixed = verify_and_repair(dst, m.ref, repair_from=src)
    assert fixed.ok and sorted(fixed.repaired) == sorted(found.bad)
    assert dst.verify(m.ref).bad == []


def test_copy_refuses_other_content_under_the_same_version(tmp_path, source):
    a, b = ArtifactStore(tmp_path / "a"), ArtifactStore(tmp_path / "b")
    m = publish_artifact(a, "dataset", "aoi", "1", source)
    (source / "manifest.json").write_bytes(b"other")
    publish_artifact(b, "dataset", "aoi", "1", source)
    with pytest.raises(IntegrityError, match="immutable"):
        copy_artifact(a, b, m.ref)


def _flip_a_byte(path: Path) -> None:
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))


class FlakyFS(MemoryFileSystem):
    """memory:// whose writes fail and whose read-backs of temp objects come back damaged, a
    given number of times."""

    cachable = False

    def __init__(self, fail_writes=0, corrupt_reads=0, error=ConnectionResetError):
        super().__init__()
        self.fail_writes, self.corrupt_reads, self.error = fail_writes, corrupt_reads, error
        self.lock = threading.Lock()
        self.writes = 0

    def _take(self, name: str) -> bool:
        with self.lock:
            if getattr(self, name) > 0:
                setattr(self, name, getattr(self, name) - 1)
                return True
            return False

    def _open(self, path, mode="rb", **kwargs):
        if "w" in mode:
            self.writes += 1
            if self._take("fail_writes"):
                raise self.error("injected failure")
        return super()._open(path, mode, **kwargs)

    def cat_file(self, path, start=None, end=None, **kwargs):
        blob = super().cat_file(path, start=start, end=end, **kwargs)
        if ".part-" in path and not start and blob and self._take("corrupt_reads"):
            blob = bytes([blob[0] ^ 1]) + blob[1:]
        return blob


def _flaky_store(**kwargs) -> tuple[ArtifactStore, FlakyFS]:
    store = _mem()
    store.fs = FlakyFS(**kwargs)
    return store, store.fs


@pytest.fixture
def waits(monkeypatch):
    seen: list[float] = []

    def no_wait(event, seconds):
        seen.append(seconds)
        return event.is_set()

    monkeypatch.setattr(transfer, "_wait", no_wait)
    return seen


def test_transient_errors_are_retried_with_backoff(tmp_path, source, waits):
    src = ArtifactStore(tmp_path / "a")
    m = publish_artifact(src, "dataset", "aoi", None, (source / "manifest.json"))
    dst, fs = _flaky_store(fail_writes=3)
    r = copy_artifact(src, dst, m.ref, retries=4, backoff_s=0.5)
    assert r.objects_sent == 1 and fs.writes == 3 + 1 + 1  # 3 failures, the object, the manifest
    assert waits == [0.5, 1.0, 2.0]
    assert dst.verify(m.ref).ok


def test_exhausted_retries_name_the_object_and_leave_no_manifest(tmp_path, source, waits):
    src = ArtifactStore(tmp_path / "a")
    m = publish_artifact(src, "dataset", "aoi", None, source / "manifest.json")
    dst, _ = _flaky_store(fail_writes=100)
    with pytest.raises(TransferError, match="manifest.json.*failed 3 times") as err:
        copy_artifact(src, dst, m.ref, retries=2, backoff_s=0.1)
    assert err.value.hint and m.objects[0].key in str(err.value)
    assert dst.list() == [] and not dst.has_object(m.objects[0])
    assert waits == [0.1, 0.2]


def test_permanent_errors_are_not_retried(tmp_path, source, waits):
    src = ArtifactStore(tmp_path / "a")
    m = publish_artifact(src, "dataset", "aoi", None, source / "manifest.json")
    dst, fs = _flaky_store(fail_writes=1, error=PermissionError)
    with pytest.raises(TransferError, match="Permission denied"):
        copy_artifact(src, dst, m.ref)
    assert fs.writes == 1 and waits == [] and dst.list() == []


def test_a_damaged_arrival_is_sent_again(tmp_path, source, waits):
    src = ArtifactStore(tmp_path / "a")
    m = publish_artifact(src, "dataset", "aoi", None, source)
    dst, _ = _flaky_store(corrupt_reads=2)
    total = sum(o.size for o in m.unique_objects())
    moved = []
    r = copy_artifact(src, dst, m.ref, backoff_s=0, on_progress=lambda b, n: moved.append(b))
    assert r.objects_sent == 4 and r.bytes_sent == total
    assert sum(moved) == total and any(b < 0 for b in moved)  # the damaged attempts rolled back
    assert len(waits) == 2 and dst.verify(m.ref).ok


def test_a_damaged_source_fails_with_integrity_error_and_no_manifest(tmp_path, source, waits):
    src = ArtifactStore(tmp_path / "a")
    m = publish_artifact(src, "dataset", "aoi", None, source)
    bad = m.entry("images/part-00001.parquet")
    _flip_a_byte(Path(src.path(bad.key)))
    for dst in (_mem(), ArtifactStore(tmp_path / "b")):
        with pytest.raises(IntegrityError, match="images/part-00001.parquet.*did not arrive intact"):
            copy_artifact(src, dst, m.ref, retries=1)
        assert dst.list() == [] and not dst.has_object(bad)
    assert not src.verify(m.ref).ok


def test_a_missing_source_object_is_not_found(tmp_path, source):
    src = ArtifactStore(tmp_path / "a")
    m = publish_artifact(src, "dataset", "aoi", None, source)
    os.unlink(src.path(m.entry("manifest.json").key))
    with pytest.raises(NotFoundError, match="manifest.json"):
        copy_artifact(src, _mem(), m.ref)


def test_bandwidth_cap_paces_the_sends(tmp_path, monkeypatch):
    src = ArtifactStore(tmp_path / "a")
    m = publish_artifact(
        src,
        "dataset", "big", None, _tree(tmp_path / "s", {f"{i}.bin": os.urandom(1000) for i in range(4)})
    )
    waits = []

    def record(event, seconds):
        waits.append(seconds)
        return False

    monkeypatch.setattr(transfer, "_wait", record)
    copy_artifact(src, _mem(), m.ref, workers=1, max_bytes_per_s=10_000, chunk_bytes=1 << 16)
    # 4 objects of 1000 bytes at 10 kB/s, and no time passes in the (recorded) waits: each send
    # after the first is due 0.1 s after the one before.
    assert len(waits) == 3
    assert all(abs(w - 0.1 * (i + 1)) < 0.05 for i, w in enumerate(waits)), waits


def test_cli_prints_one_result_line(tmp_path, source, capsys):
    src = ArtifactStore(tmp_path / "a")
    m = publish_artifact(src, "model", "adc", "4", source)
    dst = tmp_path / "b"
    assert transfer.main(["--src", src.url, "--dst", str(dst), "--ref", "model/adc", "--workers", "2"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("ADCP_TRANSFER ")
    doc = json.loads(out[0].removeprefix("ADCP_TRANSFER "))
    assert doc["ref"] == "model/adc@4" and doc["objects_sent"] == 4
    assert ArtifactStore(dst).manifest(m.ref) == m
    assert transfer.main(["--src", src.url, "--dst", str(dst), "--ref", "model/adc@5"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No version 5" in err[0]
    assert (
        transfer.main(["--src", src.url, "--dst", str(dst), "--ref", "model/adc", "--dst-options", "[1]"])
        == 1
    )
    assert "JSON object" in capsys.readouterr().err


def test_exported_names():
    import data.artifacts as artifacts
    import data.publish as publish

    assert set(publish.__all__) == {"publish_artifact", "verify_and_repair"}
    assert set(transfer.__all__) == {"Job", "TransferError", "TransferResult", "copy_artifact", "main", "send_objects"}
    store_names = {"ArtifactRef", "ArtifactStore", "Manifest", "ObjectEntry", "file_url", "file_urls"}
    assert store_names <= set(artifacts.__all__)
    assert not hasattr(artifacts.ArtifactStore, "publish")  # publishing needs the engine: data.publish
