from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from configs import IntegrityError, NotFoundError, SynthConfig
from data.dataset import open_dataset, write_synthetic
from data.schema import ANNOTATION_SCHEMA, IMAGE_SCHEMA


@pytest.fixture(params=["file", "memory"])
def base_url(request, tmp_path):
    if request.param == "file":
        return tmp_path.as_uri()
    import uuid

    return f"memory://adcp-test-{uuid.uuid4().hex}"


def test_write_then_read_back(base_url):
    ds = write_synthetic(f"{base_url}/ds/1", SynthConfig(images=50, shard_rows=20, seed=2), name="ds", version="1")
    again = open_dataset(f"{base_url}/ds/1")
    assert again.manifest == ds.manifest
    assert len(ds.manifest["shards"]) == 3 and ds.manifest["rows"] == 50
    images = again.read_images()
    assert images.schema.equals(IMAGE_SCHEMA, check_metadata=False) and images.num_rows == 50
    ann = again.read_annotations()
    assert ann.schema.equals(ANNOTATION_SCHEMA, check_metadata=False)
    labels = again.labels()
    assert sum(ds.manifest["class_counts"].values()) == 50 == len(labels)
    assert set(labels) == set(images.column("image_id").to_pylist())
    again.verify()


def test_shards_are_plain_parquet(tmp_path):
    ds = write_synthetic(tmp_path.as_uri() + "/d", SynthConfig(images=8, seed=1), name="d", version="1")
    table = pq.read_table(ds.shard_urls[0].removeprefix("file://"))
    assert table.column("width").to_pylist() == [64] * 8


def test_tampered_shard_is_detected(tmp_path):
    ds = write_synthetic(tmp_path.as_uri() + "/d", SynthConfig(images=8, seed=1), name="d", version="1")
    path = ds.shard_urls[0].removeprefix("file://")
    with open(path, "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with pytest.raises(IntegrityError, match="sha256"):
        ds.verify()


def test_no_manifest_means_no_dataset(tmp_path):
    (tmp_path / "half").mkdir()
    with pytest.raises(NotFoundError, match="No dataset"):
        open_dataset((tmp_path / "half").as_uri())


def test_refuses_to_overwrite(tmp_path):
    url = tmp_path.as_uri() + "/d"
    write_synthetic(url, SynthConfig(images=6, seed=1), name="d", version="1")
    with pytest.raises(IntegrityError, match="already exists"):
        write_synthetic(url, SynthConfig(images=6, seed=1), name="d", version="1")


def test_same_seed_gives_same_dataset_hash(tmp_path):
    a = write_synthetic(tmp_path.as_uri() + "/a", SynthConfig(images=10, seed=9), name="a", version="1")
    b = write_synthetic(tmp_path.as_uri() + "/b", SynthConfig(images=10, seed=9), name="a", version="1")
    assert [s["sha256"] for s in a.manifest["shards"]] == [s["sha256"] for s in b.manifest["shards"]]
