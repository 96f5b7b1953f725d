"""Versioned annotations: the upsert rules, their validation, and a publish/read round trip."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pytest

from configs import SynthConfig
from configs.errors import InputError, IntegrityError, NotFoundError
from data import annotations as ann
from data.annotations import (
    CHANGELOG_SCHEMA,
    annotations_from_dataset,
    upsert,
)
from data.artifacts import ArtifactStore
from data.schema import ANNOTATION_SCHEMA, DEFECT_CLASSES

T0 = datetime(2025, 3, 1, 8, 0, tzinfo=timezone.utc)
T1 = T0 + timedelta(hours=1)


def _base() -> pa.Table:
    return pa.Table.from_pylist(
        [
            {"image_id": "img-1", "label": "particle", "annotator": "synth", "annotated_at": T0,
             "box": {"x": 1, "y": 2, "w": 3, "h": 4}},
            {"image_id": "img-2", "label": "scratch", "annotator": "synth", "annotated_at": T0,
             "box": {"x": 5, "y": 5, "w": 9, "h": 1}},
            {"image_id": "img-3", "label": "false_defect", "annotator": "synth", "annotated_at": T0,
             "box": None},
        ],
        schema=ANNOTATION_SCHEMA,
    )


def _rows(table: pa.Table) -> dict[str, dict]:
    return {r["image_id"]: r for r in table.to_pylist()}


def test_changed_label_is_replaced_and_logged():
    updates = pa.table({"image_id": ["img-2"], "label": ["mura"]})
    table, log = upsert(_base(), updates, author="kim", note="recheck line 4", version="2", at=T1)
    assert table.column("image_id").to_pylist() == ["img-1", "img-2", "img-3"]  # order kept
    rows = _rows(table)
    assert rows["img-2"]["label"] == "mura"
    assert rows["img-2"]["box"] == {"x": 5, "y": 5, "w": 9, "h": 1}  # no box column: box kept
    assert (rows["img-2"]["annotator"], rows["img-2"]["annotated_at"]) == ("kim", T1)
    assert rows["img-1"] == _rows(_base())["img-1"]
    assert log.schema.equals(CHANGELOG_SCHEMA)
    assert log.to_pylist() == [
        {"image_id": "img-2", "field": "label", "old_value": "scratch", "new_value": "mura",
         "author": "kim", "note": "recheck line 4", "version": "2", "changed_at": T1}
    ]


def test_new_ids_are_appended_and_logged_without_old_value():
    updates = pa.Table.from_pylist(
        [{"image_id": "img-9", "label": "pinhole", "box": {"x": 0, "y": 0, "w": 2, "h": 2}},
         {"image_id": "img-8", "label": "false_defect", "box": None}]
    )
    table, log = upsert(_base(), updates, author="lee", version="2", at=T1)
    assert table.column("image_id").to_pylist() == ["img-1", "img-2", "img-3", "img-9", "img-8"]
    assert table.schema.equals(ANNOTATION_SCHEMA, check_metadata=True)
    assert _rows(table)["img-8"]["box"] is None
    assert [(r["image_id"], r["field"], r["old_value"], r["new_value"]) for r in log.to_pylist()] == [
        ("img-9", "label", None, "pinhole"),
        ("img-9", "box", None, '{"x":0,"y":0,"w":2,"h":2}'),
        ("img-8", "label", None, "false_defect"),
    ]


def test_unchanged_rows_are_not_logged_or_touched():
    updates = pa.table({"image_id": ["img-1", "img-3"], "label": ["particle", "mura"]})
    table, log = upsert(_base(), updates, author="kim", version="2", at=T1)
    assert [r["image_id"] for r in log.to_pylist()] == ["img-3"]
    assert _rows(table)["img-1"]["annotator"] == "synth"  # untouched, keeps its annotator and time
    again, log2 = upsert(table, updates, author="kim", version="3", at=T1)
    assert log2.num_rows == 0 and again.equals(table)


def test_box_change_and_clear():
    updates = pa.Table.from_pylist(
        [{"image_id": "img-1", "label": "particle", "box": {"x": 1, "y": 2, "w": 30, "h": 40}},
         {"image_id": "img-2", "label": "scratch", "box": None}],
        schema=pa.schema(
            [("image_id", pa.string()), ("label", pa.string()), ("box", ANNOTATION_SCHEMA.field("box").type)]
        ),
    )
    table, log = upsert(_base(), updates, author="kim", version="2", at=T1)
    assert _rows(table)["img-2"]["box"] is None
    assert [(r["image_id"], r["field"], r["old_value"], r["new_value"]) for r in log.to_pylist()] == [
        ("img-1", "box", '{"x":1,"y":2,"w":3,"h":4}', '{"x":1,"y":2,"w":30,"h":40}'),
        ("img-2", "box", '{"x":5,"y":5,"w":9,"h":1}', None),
    ]


def test_first_version_from_nothing():
    table, log = upsert(None, _base(), author="synth", version="1", at=T0)
    assert table.equals(_base())
    assert log.num_rows == 5  # 3 labels + 2 boxes; img-3 has none
    assert set(log.column("version").to_pylist()) == {"1"}


def test_annotator_column_is_kept_author_is_logged():
    updates = pa.table({"image_id": ["img-1"], "label": ["mura"], "annotator": ["line-engineer-7"]})
    table, log = upsert(_base(), updates, author="import-bot", version="2", at=T1)
    assert _rows(table)["img-1"]["annotator"] == "line-engineer-7"
    assert log.column("author").to_pylist() == ["import-bot"]


@pytest.mark.parametrize(
    "updates, words",
    [
        (pa.table({"label": ["mura"]}), "no image_id column"),
        (pa.table({"image_id": ["img-1"], "label": ["dust"]}), "Unknown label classes: dust"),
        (pa.table({"image_id": ["img-1", "img-1"], "label": ["mura", "scratch"]}), "more than once: img-1"),
        (pa.table({"image_id": ["img-1"], "colour": ["red"]}), "Unknown annotation update columns: colour"),
        (pa.table({"image_id": ["img-new"]}), "without a label column"),
        (pa.table({"image_id": [None, "img-2"], "label": ["mura", "mura"]}), "empty or null image_id"),
        (pa.table({"image_id": ["img-1"], "label": pa.array([None], pa.string())}), "null label"),
        (pa.table({"image_id": ["img-1"], "box": ["big"]}), "column `box`"),
    ],
)
def test_invalid_updates(updates, words):
    with pytest.raises(InputError, match=words):
        upsert(_base(), updates, author="kim", version="2", at=T1)


def test_unknown_label_names_the_allowed_classes():
    with pytest.raises(InputError) as err:
        upsert(_base(), pa.table({"image_id": ["img-1"], "label": ["Particle"]}), author="kim", version="2")
    for cls in DEFECT_CLASSES:
        assert cls in str(err.value)


def test_bad_base_and_author():
    dup = pa.concat_tables([_base(), _base().slice(0, 1)])
    with pytest.raises(IntegrityError, match="duplicate"):
        upsert(dup, pa.table({"image_id": ["img-1"], "label": ["mura"]}), author="kim", version="2")
    with pytest.raises(InputError, match="author"):
        upsert(_base(), pa.table({"image_id": ["img-1"], "label": ["mura"]}), author="", version="2")


def test_initial_table_from_a_synthetic_dataset(tmp_path):
    from data.dataset import write_synthetic

    ds = write_synthetic(tmp_path.as_uri() + "/d", SynthConfig(images=12, seed=3), name="d", version="1")
    table = annotations_from_dataset(ds)
    assert table.schema.equals(ANNOTATION_SCHEMA, check_metadata=False)
    assert dict(zip(table.column("image_id").to_pylist(), table.column("label").to_pylist())) == ds.labels()


def test_exported_names():
    assert set(ann.__all__) == {
        "CHANGELOG_SCHEMA", "CLASS_NAME_RE", "TRACKED_FIELDS", "UPDATE_COLUMNS", "annotations_from_dataset",
        "check_class_names", "publish_annotations", "read_annotations", "read_annotations_url", "read_changelog",
        "upsert",
    }


# ---------------------------------------------------------------------------------------------
# Round trip through an artifact store


@pytest.fixture(params=["file", "memory"])
def store(request, tmp_path):
    url = tmp_path.as_uri() + "/store" if request.param == "file" else f"memory://adcp-ann-{uuid.uuid4().hex}"
    return ArtifactStore(url)


def test_publish_three_versions_and_read_back(store, tmp_path):
    from data.dataset import write_synthetic

    ds = write_synthetic(tmp_path.as_uri() + "/d", SynthConfig(images=10, seed=4), name="d", version="1")
    first = annotations_from_dataset(ds)
    ids = first.column("image_id").to_pylist()
    labels = first.column("label").to_pylist()

    m1 = ann.publish_annotations(store, "aoi", first, author="synth", dataset=ds.dataset_id)
    assert (m1.version, m1.meta["rows"], m1.meta["base_version"]) == ("1", 10, None)
    assert m1.meta["dataset"] == ds.dataset_id

    relabel = next(c for c in DEFECT_CLASSES if c != labels[0])
    m2 = ann.publish_annotations(
        store, "aoi", pa.table({"image_id": [ids[0]], "label": [relabel]}), author="kim", note="review"
    )
    m3 = ann.publish_annotations(
        store, "aoi", pa.table({"image_id": ["new-1"], "label": ["mura"]}), author="lee"
    )
    assert (m2.version, m2.meta["changed"], m2.meta["base_version"]) == ("2", 1, "1")
    assert (m3.version, m3.meta["rows"], m3.meta["added"], m3.meta["base_version"]) == ("3", 11, 1, "2")
    assert m3.meta["dataset"] == ds.dataset_id  # carried from the base
    assert store.versions("annotations", "aoi") == ["1", "2", "3"]

    assert ann.read_annotations(store, "aoi", "1").equals(first)
    v2 = ann.read_annotations(store, "aoi", "2")
    assert v2.column("label").to_pylist() == [relabel, *labels[1:]]
    latest = ann.read_annotations(store, "aoi")
    assert latest.column("image_id").to_pylist() == [*ids, "new-1"]

    log = ann.read_changelog(store, "aoi")
    assert log.schema.equals(CHANGELOG_SCHEMA)
    assert log.filter(pa.compute.equal(log["version"], "2")).to_pylist()[0] | {"changed_at": None} == {
        "image_id": ids[0], "field": "label", "old_value": labels[0], "new_value": relabel,
        "author": "kim", "note": "review", "version": "2", "changed_at": None,
    }
    assert log.filter(pa.compute.equal(log["version"], "3")).column("image_id").to_pylist() == ["new-1"]
    assert ann.read_changelog(store, "aoi", "2").num_rows == log.num_rows - 1  # cumulative

    # No change: nothing is published.
    again = pa.table({"image_id": ["new-1"], "label": ["mura"]})
    same = ann.publish_annotations(store, "aoi", again, author="lee")
    assert same.version == "3" and store.versions("annotations", "aoi") == ["1", "2", "3"]

    # A branch from an older version records it as its base.
    m4 = ann.publish_annotations(
        store, "aoi", pa.table({"image_id": [ids[1]], "label": ["pinhole"]}), author="kim", base_version="1"
    )
    assert (m4.version, m4.meta["base_version"], m4.meta["rows"]) == ("4", "1", 10)


def test_reading_a_missing_version(store):
    with pytest.raises(NotFoundError):
        ann.read_annotations(store, "nothing-here")
    with pytest.raises(NotFoundError):
        ann.publish_annotations(store, "nothing-here", pa.table({"image_id": ["a"], "label": ["mura"]}),
                                author="kim", base_version="7")
