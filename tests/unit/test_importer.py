"""Importing a factory's images: every layout, every format, bad files listed (never aborting),
duplicates stored once, re-imports that publish only what changed, and the result readable as a
dataset by training."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from configs.errors import InputError, NotFoundError
from data.annotations import read_annotations, read_changelog
from data.artifacts import ArtifactRef, ArtifactStore
from data.dataset import open_dataset
from data.image_datasets import ImageRecord, publish_images
from data.importer import import_source
from data.preprocess import decode_image


def encode(pixels: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()


def grey(seed: int, size: int = 24) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8)


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def store(tmp_path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "store")


def dataset_of(store: ArtifactStore, name: str, version: str | None = None):
    m = store.manifest(ArtifactRef("dataset", name, version))
    return open_dataset(store.manifest_url(m.ref))


def rows_by_source(ds) -> dict[str, dict]:
    table = ds.read_images(["image_id", "source", "format", "bit_depth", "width", "height", "channels", "image"])
    return {r["source"]: r for r in table.to_pylist()}


def test_folder_per_class_all_formats(tmp_path, store):
    src = tmp_path / "src"
    wide = (np.arange(32 * 48, dtype=np.uint32).reshape(32, 48) * 40).astype(np.uint16)
    colour = np.stack([grey(3), grey(4), grey(5)], axis=2)
    files = {
        "short/a.png": encode(grey(1), "PNG"),
        "short/b.bmp": encode(grey(2), "BMP"),
        "open/c.jpg": encode(colour, "JPEG"),
        "open/deep/d.tif": encode(wide, "TIFF"),
    }
    for rel, data in files.items():
        write(src / rel, data)
    good = encode(grey(9, 64), "PNG")
    write(src / "open/cut.png", good[: len(good) // 2])
    write(src / "stray.png", encode(grey(10), "PNG"))  # at the root: no class
    write(src / "short/notes.txt", b"hello")

    report = import_source(store, str(src), "fab-a")

    assert report["dataset"] == "fab-a@1" and report["annotations"] == "fab-a@1"
    assert report["images"] == 4 and report["new"] == 4 and report["changed"] is True
    assert {r["path"]: r["reason"] for r in report["rejected"]} == {
        "open/cut.png": "truncated",
        "short/notes.txt": "not an image file (.txt)",
        "stray.png": "unlabelled: not in a class folder",
    }
    ds = dataset_of(store, "fab-a")
    ds.verify()
    assert ds.classes == ["open", "short"]
    rows = rows_by_source(ds)
    for rel, data in files.items():
        assert rows[rel]["image"] == data  # stored as given
        assert rows[rel]["image_id"] == hashlib.sha256(data).hexdigest()
    assert (rows["open/deep/d.tif"]["format"], rows["open/deep/d.tif"]["bit_depth"]) == ("tiff", 16)
    assert (rows["open/c.jpg"]["format"], rows["open/c.jpg"]["channels"]) == ("jpeg", 3)
    assert (rows["short/b.bmp"]["format"], rows["short/b.bmp"]["width"]) == ("bmp", 24)
    labels = ds.labels()
    assert labels[rows["open/deep/d.tif"]["image_id"]] == "open"
    assert labels[rows["short/a.png"]["image_id"]] == "short"
    decoded = decode_image(rows["open/deep/d.tif"]["image"])
    np.testing.assert_array_equal(decoded, (wide >> 8).astype(np.uint8))
    table = read_annotations(store, "fab-a")
    assert dict(zip(table.column("image_id").to_pylist(), table.column("label").to_pylist())) == labels
    assert report["bytes"] == store.manifest(ArtifactRef("dataset", "fab-a", "1")).total_bytes


def test_duplicate_stored_once(tmp_path, store):
    src = tmp_path / "src"
    same = encode(grey(1), "PNG")
    write(src / "short/a.png", same)
    write(src / "short/a-copy.png", same)
    write(src / "short/b.png", encode(grey(2), "PNG"))
    report = import_source(store, str(src), "dups")
    assert report["images"] == 2 and report["duplicates"] == 1 and report["rejected"] == []
    ids = dataset_of(store, "dups").read_images(["image_id"]).column("image_id").to_pylist()
    assert len(ids) == len(set(ids)) == 2


def _objects(store: ArtifactStore) -> set[str]:
    return {p.name for p in Path(store.root, "objects").rglob("*") if p.is_file()}


def test_reimport_unchanged_then_two_new(tmp_path, store):
    src = tmp_path / "src"
    for i in range(6):
        write(src / ("short" if i % 2 else "open") / f"{i}.png", encode(grey(i), "PNG"))
    first = import_source(store, str(src), "line")
    assert first["dataset"] == "line@1"
    before = _objects(store)

    again = import_source(store, str(src), "line")
    assert again["changed"] is False and again["dataset"] == "line@1"
    assert again["new"] == 0 and again["unchanged"] == 6 and again["images"] == 6
    assert store.versions("dataset", "line") == ["1"] and _objects(store) == before

    new_files = [write(src / "short" / f"new{i}.png", encode(grey(100 + i), "PNG")) for i in range(2)]
    third = import_source(store, str(src), "line")
    assert third["dataset"] == "line@2" and third["changed"] is True
    assert (third["new"], third["unchanged"], third["images"]) == (2, 6, 8)
    v1 = store.manifest(ArtifactRef("dataset", "line", "1"))
    v2 = store.manifest(ArtifactRef("dataset", "line", "2"))
    old_shards = {o.path: o for o in v1.objects if o.path.startswith("images/")}
    new_shards = [o for o in v2.objects if o.path.startswith("images/") and o.path not in old_shards]
    assert all(o in v2.objects for o in old_shards.values())  # the same objects: nothing sent again
    assert len(new_shards) == 1
    shard = pq.read_table(store.path(new_shards[0].key))
    assert sorted(shard.column("image_id").to_pylist()) == sorted(
        hashlib.sha256(p.read_bytes()).hexdigest() for p in new_files)
    added = _objects(store) - before
    # the new shard, the new label table, the dataset's manifest.json and the annotations' files
    assert new_shards[0].key.rsplit("/", 1)[1] in added
    assert all(o.key.rsplit("/", 1)[1] not in added for o in old_shards.values())
    assert third["bytes_sent"] < third["bytes"]
    ds = dataset_of(store, "line")
    ds.verify()
    assert ds.manifest["rows"] == 8 and len(ds.labels()) == 8
    assert third["annotations"] == "line@2"


def test_reimport_with_a_changed_label(tmp_path, store):
    src = tmp_path / "src"
    data = encode(grey(1), "PNG")
    write(src / "open/a.png", data)
    write(src / "short/b.png", encode(grey(2), "PNG"))
    import_source(store, str(src), "relabel")
    (src / "open/a.png").unlink()
    write(src / "short/a.png", data)
    report = import_source(store, str(src), "relabel")
    assert report["changed"] is True and report["new"] == 0 and report["labels_changed"] == 1
    image_id = hashlib.sha256(data).hexdigest()
    assert dataset_of(store, "relabel").labels()[image_id] == "short"
    log = read_changelog(store, "relabel").to_pylist()
    assert [(r["old_value"], r["new_value"]) for r in log if r["image_id"] == image_id][-1] == ("open", "short")


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_manifest_layout(tmp_path, store, kind):
    src = tmp_path / "src"
    write(src / "img/1.png", encode(grey(1), "PNG"))
    write(src / "img/2.bmp", encode(grey(2), "BMP"))
    write(src / "img/3.png", encode(grey(3), "PNG"))
    write(src / "img/unlisted.png", encode(grey(4), "PNG"))
    rows = {
        "path": ["img/1.png", "img/2.bmp", "img/3.png", "img/gone.png"],
        "label": ["short", "open", None, "short"],
        "product": ["p1", "p2", "p1", "p1"],
        "lot": ["L1", "L2", "L3", "L4"],
        "panel_id": ["P-1", "P-2", "P-3", "P-4"],
        "aoi_machine": ["aoi-7", "aoi-8", "aoi-7", "aoi-7"],
        "captured_at": ["2026-01-02T03:04:05Z", "2026-01-02T03:04:06", "", ""],
    }
    if kind == "csv":
        lines = [",".join(rows)] + [",".join("" if rows[c][i] is None else rows[c][i] for c in rows)
                                    for i in range(4)]
        write(src / "manifest.csv", "\n".join(lines).encode())
    else:
        pq.write_table(pa.table(rows), src / "labels.parquet")
    report = import_source(store, str(src), f"m-{kind}")
    assert report["layout"] == "manifest" and report["images"] == 2
    assert {r["path"]: r["reason"] for r in report["rejected"]} == {
        "img/3.png": "unlabelled: no label in the manifest",
        "img/gone.png": "missing file",
        "img/unlisted.png": "unlabelled: not in the manifest",
    }
    ds = dataset_of(store, f"m-{kind}")
    table = ds.read_images(["source", "product", "lot", "panel_id", "aoi_machine", "captured_at"])
    got = {r["source"]: r for r in table.to_pylist()}
    assert got["img/1.png"]["lot"] == "L1" and got["img/2.bmp"]["panel_id"] == "P-2"
    assert got["img/1.png"]["aoi_machine"] == "aoi-7" and got["img/2.bmp"]["product"] == "p2"
    assert got["img/1.png"]["captured_at"].isoformat() == "2026-01-02T03:04:05+00:00"


def test_labels_file_given(tmp_path, store):
    src = tmp_path / "src"
    write(src / "a.png", encode(grey(1), "PNG"))
    write(src / "b.png", encode(grey(2), "PNG"))
    labels = write(tmp_path / "elsewhere.csv", b"path,label\na.png,short\nb.png,open\n")
    report = import_source(store, str(src), "given", labels_url=str(labels))
    assert report["layout"] == "manifest" and report["images"] == 2 and report["rejected"] == []
    with pytest.raises(NotFoundError):
        import_source(store, str(src), "given", labels_url=str(tmp_path / "nope.csv"))


def test_unlabelled_images(tmp_path, store):
    src = tmp_path / "src"
    for i in range(3):
        write(src / f"{i}.png", encode(grey(i), "PNG"))
    report = import_source(store, str(src), "to-review")
    assert report["layout"] == "unlabelled" and report["images"] == 3 and report["annotations"] is None
    ds = dataset_of(store, "to-review")
    assert ds.manifest["rows"] == 3 and ds.labels() == {} and ds.classes == []
    assert not store.exists(ArtifactRef("annotations", "to-review"))


def test_bad_requests(tmp_path, store):
    with pytest.raises(InputError):
        import_source(store, str(tmp_path), "Bad Name")
    with pytest.raises(NotFoundError):
        import_source(store, str(tmp_path / "missing"), "x")
    write(tmp_path / "empty/readme.txt", b"nothing here")
    with pytest.raises(InputError, match="No image files"):
        import_source(store, str(tmp_path / "empty"), "x")
    write(tmp_path / "allbad/short/a.png", b"not a png")
    with pytest.raises(InputError, match="No usable images"):
        import_source(store, str(tmp_path / "allbad"), "x")
    assert store.list() == []  # nothing half-published


def test_memory_store_and_source():
    import fsspec

    fs = fsspec.filesystem("memory")
    for i in range(3):
        fs.pipe_file(f"/factory-src/short/{i}.png", encode(grey(i), "PNG"))
    store = ArtifactStore("memory://import-store")
    report = import_source(store, "memory://factory-src", "mem")
    assert report["images"] == 3 and report["dataset"] == "mem@1"
    assert dataset_of(store, "mem").labels()


def test_publish_images_direct_and_bounded_shards(store, monkeypatch):
    import data.image_datasets as imgds

    monkeypatch.setattr(imgds, "SHARD_ROWS", 4)
    seen = []
    records = (ImageRecord(encode(grey(i, 8), "PNG"), label="short" if i % 3 else None, source=f"r{i}")
               for i in range(10))
    result = publish_images(store, "direct", records, source={"by": "test"}, annotator="alice",
                            on_progress=seen.append, workers=2)
    assert result.images == 10 and sum(seen) == 10
    ds = dataset_of(store, "direct")
    assert [s["rows"] for s in ds.manifest["shards"]] == [4, 4, 2]
    assert len(ds.labels()) == 6  # unlabelled images are stored, without an annotation row
    assert set(read_annotations(store, "direct").column("annotator").to_pylist()) == {"alice"}


def test_training_reads_an_import(tmp_path, store):
    from train_jobs.pipeline import DecodeAndLabel

    src = tmp_path / "src"
    write(src / "short/a.png", encode(grey(1), "PNG"))
    write(src / "open/b.tif", encode((grey(2).astype(np.uint16) << 8), "TIFF"))
    write(src / "open/c.jpg", encode(np.stack([grey(3)] * 3, axis=2), "JPEG"))
    import_source(store, str(src), "train-me")
    ds = dataset_of(store, "train-me")
    batch = ds.read_images(["image_id", "image"])
    out = DecodeAndLabel(ds.labels(), ds.classes, 16)(batch)
    assert out["pixels"].shape == (3, 16, 16) and sorted(out["label"].tolist()) == [0, 0, 1]


def test_annotation_class_vocabulary():
    from data.annotations import upsert

    updates = pa.table({"image_id": ["a", "b"], "label": ["short", "open"]})
    with pytest.raises(InputError, match="Unknown label classes: open, short"):
        upsert(None, updates, author="x", version="1")  # the default stays DEFECT_CLASSES
    table, log = upsert(None, updates, author="x", version="1", classes=["short", "open"])
    assert table.column("label").to_pylist() == ["short", "open"] and log.num_rows == 2
    with pytest.raises(InputError, match="is not a class name"):
        upsert(None, updates, author="x", version="1", classes=["Short Circuit"])
    with pytest.raises(InputError, match="is not a class name"):
        upsert(None, updates, author="x", version="1", classes=["x" * 65])


def test_a_bad_label_is_refused_not_fatal(tmp_path, store):
    src = tmp_path / "src"
    write(src / "Short Circuit/a.png", encode(grey(1), "PNG"))
    write(src / "open/b.png", encode(grey(2), "PNG"))
    report = import_source(store, str(src), "labels")
    assert report["images"] == 1
    (bad,) = report["rejected"]
    assert bad["path"] == "Short Circuit/a.png" and "is not a class name" in bad["reason"]
