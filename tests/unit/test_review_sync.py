"""The verdict sync (coordinator.jobs.review_sync) against fake review stations served on
127.0.0.1: verdicts counted once, a sync failing half-way resumes, undo, the conflict rule, the
disabled list, image fetching from the store or the station, annotation loads on push."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io

import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from configs.platform import load_platform
from coordinator.center.core import Center
from coordinator.center.station_keys import StationKeys
from coordinator.jobs import review_sync
from coordinator.jobs.review_sync import conflicts, resolve, sync
from coordinator.state.review import ReviewRecords
from coordinator.state.users import Users
from data.annotations import publish_annotations, read_annotations
from data.artifacts import ArtifactRef
from tests.fake_station import FakeStation, serve_station


@functools.cache
def png(n: int) -> bytes:
    """A small grey PNG, different for each n."""
    out = io.BytesIO()
    Image.new("L", (8, 8), color=n % 256).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
def world(tmp_path):
    """A center with fab-a (push: the center reads its store) and fab-b (pull: images come from
    the station), each with a fake station; and fab-c whose station never answers."""
    home = tmp_path / "home"
    pem = StationKeys(home).public_pem()
    stores = {s: tmp_path / "sites" / s / "store" for s in ("fab-a", "fab-b", "fab-c")}
    with contextlib.ExitStack() as stack:
        a = stack.enter_context(serve_station(FakeStation(pem, "fab-a", stores["fab-a"])))
        b = stack.enter_context(serve_station(FakeStation(pem, "fab-b", stores["fab-b"])))
        doc = {"center": {"state_db": "{home}/coordinator.db", "store": {"url": "{home}/store"}},
               "sites": [{"name": name, "transfer": transfer, "store": {"url": str(stores[name])},
                          "gateway": {"kind": "direct", "dashboard": "http://127.0.0.1:9", "serve": url}}
                         for name, transfer, url in (("fab-a", "push", a.url), ("fab-b", "pull", b.url),
                                                     ("fab-c", "push", "http://127.0.0.1:9"))]}
        platform = tmp_path / "platform.yaml"
        platform.write_text(yaml.safe_dump(doc))
        center = Center(load_platform(platform, home), home)
        try:
            yield center, a, b
        finally:
            center.close()


def site_row(result, site):
    return next(r for r in result["sites"] if r["site"] == site)


def test_new_verdicts_are_counted_once_across_syncs(world):
    center, a, b = world
    for i in range(3):
        a.verdict(png(i), "scratch", reviewer=f"r{i}")
    b.verdict(png(10), "particle", reviewer="line1")
    first = sync(center, timeout_s=2)
    assert first["verdicts_new"] == 4 and first["annotations"] == "reviewed-aoi@1"
    assert site_row(first, "fab-a")["ok"] and site_row(first, "fab-b")["ok"]
    fab_c = site_row(first, "fab-c")
    assert not fab_c["ok"] and "fab-c" in fab_c["error"]  # reported, not fatal
    table = read_annotations(center.central, "reviewed-aoi")
    rows = {r["image_id"]: r for r in table.to_pylist()}
    assert rows[hashlib.sha256(png(10)).hexdigest()]["label"] == "particle"
    assert rows[hashlib.sha256(png(0)).hexdigest()]["annotator"] == "r0"
    assert len(rows) == 4

    again = sync(center, timeout_s=2)
    assert again["verdicts_new"] == 0
    assert center.central.versions("annotations", "reviewed-aoi") == ["1"]  # nothing new: no new version
    a.verdict(png(3), "mura", reviewer="r3")
    third = sync(center, timeout_s=2)
    assert third["verdicts_new"] == 1 and third["annotations"] == "reviewed-aoi@2"
    assert read_annotations(center.central, "reviewed-aoi").num_rows == 5
    assert ReviewRecords(center.state).count() == 5


def test_the_artifact_carries_every_verdict_with_who_when_where_and_why(world, tmp_path):
    center, a, _ = world
    a.verdict(png(1), "scratch", reviewer="ann", why="audit", decision="defect", model_version="adc@7")
    v = a.verdict(png(2), "mura", reviewer="ann")
    a.undo(v)
    sync(center, timeout_s=2)
    folder = center.central.download(ArtifactRef("annotations", "reviewed-aoi", "1"), tmp_path / "dl")
    verdicts = pq.read_table(folder / "verdicts.parquet").to_pylist()
    by_label = {r["label"]: r for r in verdicts}
    assert set(by_label) == {"scratch", "mura"}
    assert by_label["scratch"]["reviewer"] == "ann" and by_label["scratch"]["site"] == "fab-a"
    assert (by_label["scratch"]["model_version"], by_label["scratch"]["decision"],
            by_label["scratch"]["why"]) == ("adc@7", "defect", "audit")
    assert by_label["scratch"]["counts"] and by_label["scratch"]["undone_at"] is None
    assert not by_label["mura"]["counts"] and by_label["mura"]["undone_at"] is not None


def test_a_sync_failing_half_way_resumes_without_counting_twice(world):
    center, a, _ = world
    for i in range(5):
        a.verdict(png(i), "scratch", reviewer=f"r{i}")
    a.fail_after_pages = 1
    first = sync(center, ["fab-a"], page=2, timeout_s=2)
    row = site_row(first, "fab-a")
    assert not row["ok"] and "500" in row["error"]
    assert (first["verdicts_new"], row["last_seq"]) == (2, 2)  # the stored page moved the cursor, no more
    assert read_annotations(center.central, "reviewed-aoi").num_rows == 2
    a.fail_after_pages = None
    second = sync(center, ["fab-a"], page=2, timeout_s=2)
    assert second["verdicts_new"] == 3 and site_row(second, "fab-a")["last_seq"] == 5
    assert ReviewRecords(center.state).count() == 5
    assert read_annotations(center.central, "reviewed-aoi").num_rows == 5


def test_a_page_stored_twice_is_stored_once(world):
    center, a, _ = world
    events = [a.verdict(png(i), "scratch") for i in range(3)]
    records = ReviewRecords(center.state)
    assert len(records.store_page("fab-a", events, 3)) == 3
    assert records.store_page("fab-a", events, 3) == []  # e.g. a sync killed before its cursor moved
    assert records.count() == 3 and records.cursor("fab-a") == 3


def test_undo_removes_a_verdict(world):
    center, a, _ = world
    v = a.verdict(png(1), "scratch", reviewer="ann")
    a.undo(v)
    a.verdict(png(2), "mura", reviewer="ann")
    a.verdict(png(2), "mura", reviewer="ann")  # judged again after an undo at the station: one verdict
    a.undo(a.events[-1])
    a.verdict(png(2), "mura", reviewer="ann")
    result = sync(center, ["fab-a"], timeout_s=2)
    assert (result["verdicts_new"], result["verdict_events_new"], result["undos_new"]) == (2, 4, 2)
    ids = set(read_annotations(center.central, "reviewed-aoi").column("image_id").to_pylist())
    assert ids == {hashlib.sha256(png(2)).hexdigest()}
    # undone after it was published, then judged again: the new verdict wins
    v3 = a.verdict(png(2), "particle", reviewer="bob")
    sync(center, ["fab-a"], timeout_s=2)
    a.undo(v3)
    sync(center, ["fab-a"], timeout_s=2)
    row = {r["image_id"]: r for r in read_annotations(center.central, "reviewed-aoi").to_pylist()}
    assert row[hashlib.sha256(png(2)).hexdigest()]["label"] == "mura"


def ev(label, reviewer, role="reviewer", minute=0, kind="verdict", verdict_id=None, seq=0):
    vid = verdict_id or f"{reviewer}-{minute}"
    return {"kind": kind, "event_id": f"e-{vid}-{kind}", "verdict_id": vid, "label": label, "reviewer": reviewer,
            "role": role, "at": f"2026-12-01T08:{minute:02d}:00+00:00", "seq": seq or minute}


def test_conflict_rule_majority():
    res = resolve([ev("scratch", "a", minute=1), ev("particle", "b", "admin", minute=2),
                   ev("scratch", "c", minute=3)])
    assert (res["label"], res["rule"], res["labels"]) == ("scratch", "majority", {"particle": 1, "scratch": 2})
    assert res["annotator"] == "c"


def test_conflict_rule_tie_goes_to_the_senior_role():
    res = resolve([ev("scratch", "a", "reviewer", 5), ev("particle", "b", "engineer", 1)])
    assert (res["label"], res["rule"], res["annotator"]) == ("particle", "senior_role", "b")
    res = resolve([ev("scratch", "a", "operator", 5), ev("particle", "b", "reviewer", 9)])
    assert (res["label"], res["rule"]) == ("scratch", "senior_role")


def test_conflict_rule_still_tied_goes_to_the_latest():
    res = resolve([ev("scratch", "a", "reviewer", 5), ev("particle", "b", "reviewer", 9)])
    assert (res["label"], res["rule"]) == ("particle", "latest")
    res = resolve([ev("particle", "a", "reviewer", 9), ev("scratch", "b", "reviewer", 5)])
    assert (res["label"], res["rule"]) == ("particle", "latest")


def test_unsure_never_counts_undo_removes_and_a_reviewer_counts_once():
    assert resolve([ev("unsure", "a", minute=1)]) is None
    res = resolve([ev("unsure", "a", "admin", 1), ev("scratch", "b", minute=2)])
    assert (res["label"], res["rule"]) == ("scratch", "single")
    undone = ev("particle", "c", "admin", 3)
    res = resolve([ev("scratch", "b", minute=2), undone,
                   {**undone, "kind": "undo", "event_id": "u1", "at": "2026-12-01T08:04:00+00:00"}])
    assert (res["label"], res["rule"]) == ("scratch", "single")
    res = resolve([ev("scratch", "b", minute=1), ev("particle", "b", minute=2), ev("particle", "c", minute=3)])
    assert (res["label"], res["rule"], res["verdicts"]) == ("particle", "unanimous", 2)


def test_disagreeing_sites_are_listed_as_conflicts(world):
    center, a, b = world
    a.verdict(png(7), "scratch", reviewer="ann", role="reviewer")
    b.verdict(png(7), "particle", reviewer="eng", role="engineer")
    a.verdict(png(8), "mura", reviewer="ann")
    result = sync(center, ["fab-a", "fab-b"], timeout_s=2)
    assert result["conflicts"] == 1
    (c,) = conflicts(center)
    assert c["image"] == hashlib.sha256(png(7)).hexdigest()
    assert (c["label"], c["rule"]) == ("particle", "senior_role")
    assert {(v["reviewer"], v["site"], v["label"]) for v in c["verdicts"]} == {
        ("ann", "fab-a", "scratch"), ("eng", "fab-b", "particle")}
    assert conflicts(center, ("fab-z",)) == []


def test_images_come_from_the_site_store_or_else_the_station(world):
    center, a, b = world
    a.verdict(png(1), "scratch")
    b.verdict(png(2), "scratch")
    sync(center, ["fab-a", "fab-b"], timeout_s=2)
    assert a.image_requests == 0  # fab-a's store is the center's to read
    assert b.image_requests == 1  # fab-b is a pull site: its station hands the image over
    for n in (1, 2):
        sha = hashlib.sha256(png(n)).hexdigest()
        assert (center.home / "coordinator" / "review-images" / sha[:2] / sha).read_bytes() == png(n)


def test_the_reviewed_images_become_a_dataset_artifact(world):
    center, a, b = world
    a.verdict(png(1), "scratch")
    b.verdict(png(2), "mura")
    result = sync(center, ["fab-a", "fab-b"], timeout_s=2)
    assert (result["annotations"], result["dataset"]) == ("reviewed-aoi@1", "reviewed-aoi@1")
    manifest = center.central.manifest(ArtifactRef("dataset", "reviewed-aoi", "1"))
    assert manifest.meta["rows"] == 2 and manifest.meta["annotations"] == "reviewed-aoi@1"
    # the dataset's labels are the sync's annotations version (with its verdicts), not a copy
    assert center.central.versions("annotations", "reviewed-aoi") == ["1"]
    a.verdict(png(3), "particle")
    result = sync(center, ["fab-a"], timeout_s=2)
    assert (result["annotations"], result["dataset"]) == ("reviewed-aoi@2", "reviewed-aoi@2")
    assert center.central.manifest(ArtifactRef("dataset", "reviewed-aoi", "2")).meta["rows"] == 3


def test_each_line_gets_its_own_artifacts(world):
    center, a, _ = world
    a.verdict(png(1), "scratch", dataset="aoi")
    a.verdict(png(2), "mura", dataset="")
    result = sync(center, ["fab-a"], timeout_s=2)
    assert set(result["annotations"].split(", ")) == {"reviewed-aoi@1", "reviewed@1"}


def test_the_disabled_list_reaches_every_station_on_sync(world):
    center, a, b = world
    users = Users(center.state)
    users.add("bob", "reviewer", ["fab-a"], by="admin")
    users.add("ann", "reviewer", ["fab-a"], by="admin")
    users.disable("bob")
    result = sync(center, timeout_s=2)
    assert a.disabled[-1] == ["bob"] and b.disabled[-1] == ["bob"]
    assert site_row(result, "fab-a")["disabled"] == 1
    users.disable("ann")
    assert review_sync.push_disabled(center, ["fab-a"]) == {"fab-a": {"disabled": 2}}
    assert a.disabled[-1] == ["ann", "bob"]
    assert "error" in review_sync.push_disabled(center, ["fab-c"])["fab-c"]


def test_an_annotations_push_loads_the_site_db(world):
    import pyarrow as pa

    center, a, _ = world
    updates = pa.table({"image_id": ["x1"], "label": ["scratch"]})
    m = publish_annotations(center.central, "line-a", updates, author="eng")
    center.push_hooks.append(functools.partial(review_sync.load_site_db, center))
    (outcome,) = center.push(f"annotations/line-a@{m.version}", ["fab-a"])
    assert outcome.to_dict()["site_db"] == {"rows": 1}
    (loaded,) = a.loaded
    assert loaded["artifact"] == f"line-a@{m.version}"
    assert loaded["url"].startswith("file://") and loaded["url"].endswith(m.entry("annotations.parquet").key)
    (outcome,) = center.push(f"annotations/line-a@{m.version}", ["fab-c"])  # the station does not answer
    assert "error" in outcome.to_dict()["site_db"]
