"""Recording decisions for review (serve_apps.recorder) and the ADC app's metadata fields.

The recorder writes into a real SQLite review DB and a real (local) site store; the HTTP layer is
the FastAPI app around a plain AdcService (no Ray). Waiting is `Recorder.flush` or `wait_for`.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from data.artifacts import ArtifactStore
from data.schema import DEFECT_CLASSES
from serve_apps.api import build_api
from serve_apps.classifier import AdcService
from serve_apps.recorder import Recorder, RequestMeta, dataset_line, from_env, object_key
from serve_apps.review_db import ReviewDB
from tests.serve_fixtures import b64, export_tiny_model, synth_png
from tests.waiting import wait_for


class Counts:
    """A Counters object that keeps the numbers."""

    def __init__(self) -> None:
        self.n = {"recorded": 0, "errors": 0, "dropped": 0}
        self._lock = threading.Lock()

    def _add(self, key: str, n: int) -> None:
        with self._lock:
            self.n[key] += n

    def recorded(self, n: int) -> None:
        self._add("recorded", n)

    def errors(self, n: int) -> None:
        self._add("errors", n)

    def dropped(self, n: int) -> None:
        self._add("dropped", n)


def answer(decision: str, cls: str = "scratch", confidence: float = 0.61) -> dict:
    return {"class": cls, "confidence": confidence, "decision": decision, "model_version": "adc@3",
            "top3": [{"class": cls, "confidence": confidence}, {"class": "mura", "confidence": 0.2},
                     {"class": "pinhole", "confidence": 0.1}]}


@pytest.fixture
def db(tmp_path):
    db = ReviewDB(f"sqlite:///{tmp_path}/review.db")
    yield db
    db.close()


@pytest.fixture
def store(tmp_path) -> ArtifactStore:
    return ArtifactStore(str(tmp_path / "site-store"))


@pytest.fixture
def make(db, store):
    made: list[Recorder] = []

    def make(**kw) -> tuple[Recorder, Counts]:
        counts = Counts()
        kw.setdefault("audit_rate", 0.0)
        rec = Recorder(kw.pop("db", db), store, site="fab-a", counters=counts, interval_s=0.05, **kw)
        made.append(rec)
        return rec, counts

    yield make
    for rec in made:
        rec.close(timeout=10)


def submit(rec: Recorder, images, answers, meta=None, **kw) -> None:
    rec.submit(images, answers, meta, model_version="adc@3", classes=list(DEFECT_CLASSES), dataset="synth-a", **kw)


def test_review_decision_recorded_with_image_and_row(make, db, store):
    rec, counts = make()
    image = synth_png(4)
    submit(rec, [image, synth_png(5)], [answer("review"), answer("defect")],
           RequestMeta(product="p1", aoi_machine="aoi-7", panel_id="PNL-42"))
    assert rec.flush(10)
    sha = hashlib.sha256(image).hexdigest()
    stored = Path(store.path(object_key(sha)))
    assert stored.read_bytes() == image
    assert not [p for p in stored.parent.iterdir() if ".tmp-" in p.name]
    [item] = db.items()
    assert {k: item[k] for k in ("image_sha256", "image_uri", "site", "product", "aoi_machine", "panel_id",
                                 "model_version", "dataset", "predicted", "confidence", "decision", "why",
                                 "state")} == {
        "image_sha256": sha, "image_uri": f"{store.url}/review/objects/sha256/{sha[:2]}/{sha}", "site": "fab-a",
        "product": "p1", "aoi_machine": "aoi-7", "panel_id": "PNL-42", "model_version": "adc@3",
        "dataset": "synth-a", "predicted": "scratch", "confidence": 0.61, "decision": "review",
        "why": "low_confidence", "state": "queued"}
    assert item["top3"][1] == {"class": "mura", "confidence": 0.2} and item["classes"] == list(DEFECT_CLASSES)
    assert db.image(sha)["id"] == item["id"]
    [row] = db.stats()
    assert (row["product"], row["classified"], row["automatic"], row["review"], row["backlog"]) == ("p1", 2, 1, 1, 1)
    assert counts.n == {"recorded": 1, "errors": 0, "dropped": 0}


def test_the_same_image_is_stored_once(make, db, store):
    rec, _ = make()
    image = synth_png(9)
    submit(rec, [image, image], [answer("review"), answer("review")])
    assert rec.flush(10)
    submit(rec, [image], [answer("review")])
    assert rec.flush(10)
    assert len(db.items()) == 3 and len({it["image_sha256"] for it in db.items()}) == 1
    files = [p for p in Path(store.path("review")).rglob("*") if p.is_file()]
    assert len(files) == 1


@pytest.mark.parametrize("rate, recorded", [(1.0, 4), (0.0, 0)])
def test_audit_sample_of_automatic_decisions(make, db, rate, recorded):
    rec, counts = make(audit_rate=rate)
    submit(rec, [synth_png(i) for i in range(4)],
           [answer("defect"), answer("false_defect", "false_defect"), answer("defect"), answer("defect")])
    assert rec.flush(10)
    items = db.items()
    assert len(items) == recorded and all(it["why"] == "audit" for it in items)
    assert db.stats()[0]["classified"] == 4 and db.stats()[0]["automatic"] == 4
    assert counts.n["recorded"] == recorded


def test_audit_draws_come_from_the_injected_rng(make, db):
    class Draws(random.Random):
        def __init__(self, values):
            super().__init__()
            self.values = list(values)

        def random(self):
            return self.values.pop(0)

    rec, _ = make(audit_rate=0.02, rng=Draws([0.5, 0.01, 0.019, 0.02]))
    images = [synth_png(i) for i in range(5)]
    # review decisions take no draw; the four automatic ones draw 0.5, 0.01, 0.019, 0.02
    submit(rec, images, [answer("defect"), answer("review"), answer("defect"), answer("defect"), answer("defect")])
    assert rec.flush(10)
    got = {it["image_sha256"]: it["why"] for it in db.items()}
    sha = [hashlib.sha256(i).hexdigest() for i in images]
    assert got == {sha[1]: "low_confidence", sha[2]: "audit", sha[3]: "audit"}


def test_request_audit_rate_overrides_the_recorder_default(make, db):
    rec, _ = make(audit_rate=0.0)
    submit(rec, [synth_png(1)], [answer("defect")], audit_rate=1.0)
    assert rec.flush(10)
    assert [it["why"] for it in db.items()] == ["audit"]


def test_raw_pixels_are_stored_as_png(make, db, store):
    rec, _ = make()
    pixels = np.arange(64 * 64, dtype=np.uint8).reshape(64, 64)
    submit(rec, [pixels], [answer("review")])
    assert rec.flush(10)
    [item] = db.items()
    with Image.open(store.path(object_key(item["image_sha256"]))) as img:
        assert img.format == "PNG" and np.array_equal(np.asarray(img), pixels)


def test_a_broken_db_counts_errors_and_keeps_the_counts_for_later(make, tmp_path):
    (tmp_path / "not-a-dir").write_text("x")
    broken = lambda: ReviewDB(f"sqlite:///{tmp_path}/not-a-dir/review.db")  # noqa: E731
    rec, counts = make(db=broken)
    submit(rec, [synth_png(1), synth_png(2)], [answer("review"), answer("review")])
    assert rec.flush(10)
    assert counts.n["errors"] == 2 and counts.n["recorded"] == 0
    assert sum(rec._counts.values()) == 2  # decision counts wait for the DB to come back


def test_full_queue_drops_and_counts(make, db):
    entered, release = threading.Event(), threading.Event()

    class SlowDB:
        def record(self, items, counts=None):
            entered.set()
            release.wait(30)
            db.record(items, counts)

        def count_decisions(self, counts):
            db.count_decisions(counts)

        def close(self):
            pass

    rec, counts = make(db=lambda: SlowDB(), max_queue=2)
    submit(rec, [synth_png(0)], [answer("review")])
    wait_for(entered.is_set, 10, "the writer to start on the first item", 0.01)
    submit(rec, [synth_png(i) for i in range(1, 6)], [answer("review")] * 5)  # 2 fit, 3 are dropped
    assert counts.n["dropped"] == 3
    release.set()
    assert rec.flush(10)
    assert len(db.items()) == 3 and counts.n["recorded"] == 3
    assert db.stats()[0]["review"] == 6  # every decision is counted, dropped or not


def test_submit_never_raises(make):
    rec, counts = make()

    class Bad(dict):
        def get(self, *a):
            raise RuntimeError("broken answer")

    rec.submit([b"x"], [Bad()], None, model_version="adc@3")
    assert counts.n["errors"] == 1


def test_from_env(tmp_path):
    assert from_env(0.02, environ={}) is None
    assert from_env(0.02, environ={"ADCP_REVIEW_DB_URL": "sqlite:///x.db"}) is None
    counts = Counts()
    env = {"ADCP_REVIEW_DB_URL": f"sqlite:///{tmp_path}/r.db", "ADCP_SITE_STORE": str(tmp_path / "s"),
           "ADCP_SITE_STORE_OPTIONS": "{not json"}
    assert from_env(0.02, counts, environ=env) is None and counts.n["errors"] == 1
    env["ADCP_SITE_STORE_OPTIONS"] = "{}"
    env["ADCP_SITE"] = "fab-b"
    rec = from_env(0.5, environ=env)
    try:
        assert (rec.site, rec.audit_rate, rec.store.url) == ("fab-b", 0.5, f"file://{tmp_path}/s")
    finally:
        rec.close()


def test_dataset_line():
    assert dataset_line({"dataset": "synth-a@3"}) == "synth-a"
    assert dataset_line({"dataset": "dataset/synth-a@3"}) == "synth-a"
    assert dataset_line({}) == "" and dataset_line(None) == ""


# --- the ADC app: metadata fields, and recording beside the answers -----------------------------


class Capture:
    """Stands in for a Recorder: keeps what the app hands over."""

    audit_rate = 0.0

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def submit(self, images, answers, metas, **kw) -> None:
        self.calls.append({"images": list(images), "answers": answers, "metas": metas, **kw})

    def metas(self) -> list[RequestMeta]:
        metas = self.calls[-1]["metas"]
        return [metas] * len(self.calls[-1]["images"]) if isinstance(metas, RequestMeta) else list(metas)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"auto": export_tiny_model(root / "auto", "1", seed=1),
            "review": export_tiny_model(root / "review", "2", seed=1, thresholds={c: 1.0 for c in DEFECT_CLASSES})}


def client_for(models, kind: str, recorder=None, **user) -> TestClient:
    svc = AdcService()
    svc.reconfigure({"model_uri": models[kind][0], **user})
    return TestClient(build_api(svc, recorder=recorder))


def test_metadata_from_headers_form_and_json(models):
    cap = Capture()
    c = client_for(models, "auto", cap)
    png = synth_png(3)
    headers = {"content-type": "image/png", "X-ADC-Product": "p1", "X-ADC-AOI-Machine": "aoi-7",
               "X-ADC-Panel-Id": "PNL-1"}
    assert c.post("/v1/classify", content=png, headers=headers).status_code == 200
    assert cap.metas() == [RequestMeta("p1", "aoi-7", "PNL-1")]
    assert cap.calls[-1]["images"] == [png] and cap.calls[-1]["model_version"] == "adc-test@1"
    assert cap.calls[-1]["classes"] == list(DEFECT_CLASSES) and cap.calls[-1]["dataset"] == "none"

    r = c.post("/v1/classify", files={"file": ("a.png", png, "image/png")},
               data={"product": "p2", "panel_id": "PNL-2"}, headers={"X-ADC-AOI-Machine": "aoi-9"})
    assert r.status_code == 200 and cap.metas() == [RequestMeta("p2", "aoi-9", "PNL-2")]

    r = c.post("/v1/classify", json={"image": b64(png), "product": "p3", "aoi_machine": "aoi-3", "panel_id": 77})
    assert r.status_code == 200 and cap.metas() == [RequestMeta("p3", "aoi-3", "77")]

    r = c.post("/v1/classify/batch", json={"product": "p4", "images": [
        b64(png), {"data": b64(png), "id": "x", "product": "p5", "panel_id": "PNL-5"}]},
        headers={"X-ADC-AOI-Machine": "aoi-4"})
    assert r.status_code == 200
    assert cap.metas() == [RequestMeta("p4", "aoi-4", ""), RequestMeta("p5", "aoi-4", "PNL-5")]

    files = [("files", (f"{i}.png", png, "image/png")) for i in range(3)]
    r = c.post("/v1/classify/batch", files=files, data={"product": "p6"})
    assert r.status_code == 200 and cap.metas() == [RequestMeta("p6", "", "")] * 3


@pytest.mark.parametrize("body, words", [
    ({"product": ["p1"]}, "product is a list"),
    ({"panel_id": "x" * 300}, "panel_id has 300 characters"),
    ({"aoi_machine": True}, "aoi_machine is a bool"),
])
def test_bad_metadata_is_a_400(models, body, words):
    c = client_for(models, "auto", Capture())
    r = c.post("/v1/classify", json={"image": b64(synth_png(1)), **body})
    assert r.status_code == 400 and words in r.json()["detail"], r.text


def test_answers_are_the_same_with_recording_on(models, make, db):
    rec, counts = make()
    png = synth_png(8)
    off = client_for(models, "review").post("/v1/classify", content=png, headers={"content-type": "image/png"})
    on = client_for(models, "review", rec).post("/v1/classify", content=png,
                                                headers={"content-type": "image/png", "X-ADC-Product": "p1"})
    assert on.status_code == off.status_code == 200 and on.json() == off.json()
    assert on.json()["decision"] == "review"
    assert rec.flush(10)
    [item] = db.items()
    assert (item["product"], item["model_version"], item["why"]) == ("p1", "adc-test@2", "low_confidence")
    assert item["classes"] == list(DEFECT_CLASSES) and counts.n["recorded"] == 1


def test_audit_rate_from_the_user_config(models, make, db):
    rec, _ = make(audit_rate=0.0)
    c = client_for(models, "auto", rec, audit_rate=1.0)
    r = c.post("/v1/classify/batch", json={"images": [b64(synth_png(i)) for i in range(3)], "product": "p1"})
    assert r.status_code == 200 and {a["decision"] for a in r.json()["results"]} <= {"defect", "false_defect"}
    assert rec.flush(10)
    assert [it["why"] for it in db.items()] == ["audit"] * 3


def test_a_broken_db_still_answers(models, make, tmp_path):
    (tmp_path / "file").write_text("x")
    env = {"ADCP_REVIEW_DB_URL": f"sqlite:///{tmp_path}/file/review.db", "ADCP_SITE_STORE": str(tmp_path / "s")}
    counts = Counts()
    rec = from_env(1.0, counts, environ=env)
    try:
        c = client_for(models, "review", rec)
        r = c.post("/v1/classify", content=synth_png(2), headers={"content-type": "image/png"})
        assert r.status_code == 200 and r.json()["decision"] == "review"
        assert rec.flush(10)
        assert counts.n["errors"] >= 1 and counts.n["recorded"] == 0
    finally:
        rec.close()


def test_oip_review_decisions_are_recorded(models, make, db):
    rec, _ = make()
    c = client_for(models, "review", rec)
    pixels = np.full((64, 64), 128, np.uint8)
    body = {"inputs": [{"name": "image", "shape": [1, 64, 64], "datatype": "UINT8", "data": pixels.ravel().tolist()}]}
    r = c.post("/v2/models/adc/infer", json=body, headers={"X-ADC-Product": "p7"})
    assert r.status_code == 200, r.text
    assert rec.flush(10)
    assert [it["product"] for it in db.items()] == ["p7"]


def test_recorder_metrics_names():
    from serve_apps.metrics import EXPORTED

    assert {EXPORTED[k] for k in ("adcp_review_recorded", "adcp_review_record_errors", "adcp_review_dropped")} == {
        "ray_adcp_review_recorded_total", "ray_adcp_review_record_errors_total", "ray_adcp_review_dropped_total"}
    assert json.dumps(EXPORTED)  # plain names only
