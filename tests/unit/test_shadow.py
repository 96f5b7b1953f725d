"""Shadow at the site (serve_apps.shadow) and threshold overrides, through the ADC app's HTTP layer
around a plain AdcService (no Ray), with the real recorder over a SQLite review DB and a local
store. The caller's answer is always the champion's; waiting is `flush`, never a sleep."""

from __future__ import annotations

import hashlib
import random

import pytest
from fastapi.testclient import TestClient

from configs.models import ServeUserConfig
from data.artifacts import ArtifactStore
from data.schema import DEFECT_CLASSES
from serve_apps.api import build_api
from serve_apps.classifier import AdcService
from serve_apps.recorder import SHADOW_DISAGREE, Recorder
from serve_apps.review_db import ReviewDB
from serve_apps.shadow import ShadowRunner
from tests.serve_fixtures import b64, export_tiny_model, synth_png

N = 12
ALL_REVIEW = {c: 1.0 for c in DEFECT_CLASSES}  # every answer below 1.0 confidence goes to review


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"v1": export_tiny_model(root / "v1", "1", seed=1)[0],
            "v2": export_tiny_model(root / "v2", "2", seed=2)[0]}


class Site:
    """One ADC app (champion + shadow runner) recording into a fresh review DB and store."""

    def __init__(self, tmp, models, *, rng: random.Random | None = None, **user) -> None:
        self.db = ReviewDB(f"sqlite:///{tmp}/review.db")
        self.recorder = Recorder(self.db, ArtifactStore(str(tmp / "store")), site="fab-a", audit_rate=0.0,
                                 interval_s=0.05)
        self.service = AdcService()
        self.shadow = ShadowRunner(self.recorder, rng=rng)
        self.configure(models, **user)
        self.client = TestClient(build_api(self.service, recorder=self.recorder, shadow=self.shadow))

    def configure(self, models, **user) -> None:
        cfg = self.service.reconfigure({"model_uri": models["v1"], "audit_rate": 0.0, **user})  # no random audits
        self.shadow.configure(cfg, self.service.model)

    def classify(self, n: int = N, start: int = 0) -> list[dict]:
        images = [{"id": f"img-{i}", "data": b64(synth_png(i))} for i in range(start, start + n)]
        r = self.client.post("/v1/classify/batch", json={"images": images, "product": "p1"})
        assert r.status_code == 200, r.text
        return r.json()["results"]

    def settle(self) -> None:
        assert self.shadow.flush(20) and self.recorder.flush(20)

    def close(self) -> None:
        self.client.close()
        self.shadow.close()
        self.recorder.close()


@pytest.fixture
def site(tmp_path, models):
    made: list[Site] = []

    def make(sub: str = "a", **kw) -> Site:
        (tmp_path / sub).mkdir()
        s = Site(tmp_path / sub, models, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def test_thresholds_override_the_models_own_without_a_reload(site, models):
    s = site()
    program = s.service.model.module
    assert {a["decision"] for a in s.classify()} <= {"defect", "false_defect"}  # the model's thresholds: 0
    s.configure(models, thresholds=ALL_REVIEW)
    assert s.service.model.module is program
    assert {a["decision"] for a in s.classify()} == {"review"}
    info = s.client.get("/v1/model").json()
    assert info["thresholds"] == ALL_REVIEW and set(info["model_thresholds"].values()) == {0.0}
    s.configure(models, thresholds={"scratch": 1.0})  # only the classes named change
    assert s.service.model.meta.thresholds == {**{c: 0.0 for c in DEFECT_CLASSES}, "scratch": 1.0}
    s.configure(models)
    assert s.service.model.meta.thresholds == {c: 0.0 for c in DEFECT_CLASSES}
    assert s.client.get("/v1/model").json()["config"] == ServeUserConfig(model_uri=models["v1"],
                                                                         audit_rate=0.0).fingerprint()


def test_answers_are_the_champions_with_and_without_a_shadow(site, models):
    plain = site("plain").classify()
    shadowed = site("shadowed", shadow_model_uri=models["v2"], shadow_rate=1.0)
    got = shadowed.classify()
    assert got == plain
    assert {a["model_version"] for a in got} == {"adc-test@1"}
    shadowed.settle()
    rows = shadowed.db.shadow_results()
    assert len(rows) == N and {r["challenger_version"] for r in rows} == {"adc-test@2"}
    assert {r["champion_version"] for r in rows} == {"adc-test@1"}
    # the rows say what each model answered: the champion's is what the caller got
    by_sha = {r["image_sha256"]: r for r in rows}
    for i, a in enumerate(got):
        row = by_sha[hashlib.sha256(synth_png(i)).hexdigest()]
        assert (row["champion_class"], row["champion_decision"]) == (a["class"], a["decision"])
        assert row["product"] == "p1"
    status = shadowed.client.get("/v1/model").json()["shadow"]
    assert status["model_version"] == "adc-test@2" and status["shadowed"] == N and status["dropped"] == 0


def test_rate_zero_shadows_nothing_and_rate_one_every_image(site, models):
    s = site(shadow_model_uri=models["v2"], shadow_rate=0.0)
    s.classify()
    s.settle()
    assert s.db.shadow_results() == [] and s.shadow.counts["offered"] == 0
    s.configure(models, shadow_model_uri=models["v2"], shadow_rate=1.0)
    s.classify(start=100)
    s.settle()
    assert len(s.db.shadow_results()) == N


def test_a_share_is_shadowed_with_an_injected_rng(site, models):
    draws = random.Random(4)
    want = sum(1 for _ in range(N) if draws.random() < 0.5)
    s = site(shadow_model_uri=models["v2"], shadow_rate=0.5, rng=random.Random(4))
    s.classify()
    s.settle()
    assert 0 < want < N and len(s.db.shadow_results()) == want


def test_disagreements_are_queued_with_priority_and_claimed_first(site, models):
    # The champion decides everything (thresholds 0); the same program with thresholds 1.0 as the
    # shadow sends everything to review: every image disagrees on the decision.
    s = site(thresholds=ALL_REVIEW)
    s.classify(n=3, start=50)  # older low-confidence items, no shadow yet
    s.settle()
    # now the champion decides (its own thresholds) and the shadow, the same URI, reviews everything
    s.configure(models, shadow_model_uri=models["v1"], shadow_rate=1.0, shadow_thresholds=ALL_REVIEW)
    assert s.shadow.model.module is s.service.model.module  # the champion's program, not loaded again
    answers = s.classify(n=4, start=60)
    assert {a["decision"] for a in answers} <= {"defect", "false_defect"}
    s.settle()
    rows = s.db.shadow_results()
    assert len(rows) == 4 and {r["challenger_decision"] for r in rows} == {"review"}
    _, _, items = s.db.claim("alice", 10, lease_s=60)
    assert [it["why"] for it in items] == [SHADOW_DISAGREE] * 4 + ["low_confidence"] * 3
    assert [it["priority"] for it in items] == [1] * 4 + [0] * 3
    assert {it["decision"] for it in items[:4]} <= {"defect", "false_defect"}  # the champion's answer
    assert {it["model_version"] for it in items} == {"adc-test@1"}


def test_agreeing_images_are_not_queued(site, models):
    s = site(shadow_model_uri=models["v1"], shadow_rate=1.0)  # the same model: always agrees
    s.classify()
    s.settle()
    assert len(s.db.shadow_results()) == N and s.db.items() == []
    assert s.db.shadow_stats("adc-test@1")["agreement"] == 1.0


def test_a_shadow_that_fails_to_load_never_fails_a_request(site, models, tmp_path):
    s = site(shadow_model_uri=str(tmp_path / "missing"), shadow_rate=1.0)
    assert s.service.model.model_id == "adc-test@1"
    assert all(a["model_version"] == "adc-test@1" for a in s.classify())
    s.settle()
    status = s.client.get("/v1/model").json()["shadow"]
    assert status["model_version"] is None and status["load_errors"] == 1
    assert status["error"]["model_uri"] == str(tmp_path / "missing") and status["error"]["error"] == "NotFoundError"
    assert s.db.shadow_results() == []
    assert s.client.get("/healthz").json()["status"] == "ok"  # the champion is fine


def test_a_shadow_that_fails_to_run_never_fails_a_request(site, models):
    s = site(shadow_model_uri=models["v2"], shadow_rate=1.0)

    def broken(x):
        raise RuntimeError("the challenger's kernel crashed")

    object.__setattr__(s.shadow.model, "forward", broken)
    plain = site("plain").classify()
    assert s.classify() == plain
    s.settle()
    assert s.shadow.counts["errors"] == N and s.db.shadow_results() == []
    assert s.classify(start=200)[0]["model_version"] == "adc-test@1"  # the worker lives on
    s.settle()
    assert s.shadow.counts["errors"] == 2 * N


def test_a_full_shadow_queue_drops_and_counts(site, models):
    s = site(shadow_model_uri=models["v2"], shadow_rate=1.0)
    s.shadow._queue.maxsize = 1
    s.shadow._start = lambda: None  # no worker: the queue only fills
    s.shadow._thread = None
    for i in range(3):
        s.client.post("/v1/classify", content=synth_png(i), headers={"content-type": "image/png"})
    assert s.shadow.counts["dropped"] == 2 and s.shadow.counts["offered"] == 3
    del s.shadow._start  # the worker again: it runs what was queued
    s.shadow._start()
    s.settle()
    assert len(s.db.shadow_results()) == 1


def test_the_station_route_gives_shadow_stats_to_the_center_only(tmp_path):
    from tests.unit.test_review_api import Station

    station = Station(tmp_path)
    try:
        r = station.get("/api/shadow", station.center(), model_version="adc@2")
        assert r.status_code == 200, r.text
        assert r.json()["site"] == "fab-a" and r.json()["challenger"] == "adc@2" and r.json()["shadowed"] == 0
        assert station.get("/api/shadow", station.as_("li.wei"), model_version="adc@2").status_code == 403
        assert station.get("/api/shadow", station.center()).status_code == 422
    finally:
        station.client.close()
        station.db.close()


def test_shadow_config_fields_are_checked():
    with pytest.raises(ValueError, match="shadow_rate"):
        ServeUserConfig(shadow_rate=1.5)
    with pytest.raises(ValueError, match="A threshold is a confidence from 0 to 1"):
        ServeUserConfig(thresholds={"scratch": 2.0})
    assert ServeUserConfig().shadow_rate == 0.0 and ServeUserConfig().shadow_model_uri is None
