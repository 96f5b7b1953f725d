"""The site review DB (serve_apps.review_db) on SQLite: queue, leases, verdicts, undo, stats.

`ReviewDBContract` holds the behaviours every backend must show; this module runs it on a SQLite
file, tests/integration/test_review_db_postgres.py on a real PostgreSQL. Time is injected (`now=`),
so lease expiry needs no waiting.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pytest

from configs.errors import ConfigError, ConflictError, InputError, NotFoundError
from serve_apps.review_db import QueuedItem, ReviewDB, normalize_url

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=timezone.utc)
CLASSES = ["particle", "scratch", "mura", "line_defect", "pinhole", "false_defect"]


def make_item(i: int, *, decision: str = "review", why: str = "low_confidence", product: str = "p1",
              model_version: str = "adc@1", predicted: str = "scratch") -> QueuedItem:
    return QueuedItem(
        id=f"{i:032x}", image_sha256=f"{i:064x}", image_uri=f"file:///store/review/objects/sha256/{i:064x}",
        site="fab-a", product=product, aoi_machine="aoi-7", panel_id=f"P{i}", model_version=model_version,
        dataset="synth-a", predicted=predicted, confidence=0.55,
        top3=[{"class": predicted, "confidence": 0.55}, {"class": "mura", "confidence": 0.3},
              {"class": "particle", "confidence": 0.1}],
        decision=decision, why=why, created_at=T0 + timedelta(seconds=i), classes=CLASSES)


def ids(items: list[dict]) -> list[str]:
    return [it["id"] for it in items]


class ReviewDBContract:
    """Behaviours of ReviewDB; a subclass provides the `db` fixture."""

    def test_record_and_claim_oldest_first(self, db):
        db.record([make_item(i) for i in (3, 1, 2, 0, 4)])
        lease_id, until, items = db.claim("alice", 3, lease_s=60, now=T0)
        assert ids(items) == [f"{i:032x}" for i in (0, 1, 2)]
        assert until == T0 + timedelta(seconds=60) and len(lease_id) == 32
        first = items[0]
        assert first["state"] == "claimed" and first["second_opinion"] is False
        assert first["top3"][0] == {"class": "scratch", "confidence": 0.55}
        assert first["product"] == "p1" and first["aoi_machine"] == "aoi-7" and first["created_at"] == T0.isoformat()
        assert db.queue_stats(now=T0) == {"total": 5, "by_product": [
            {"product": "p1", "queued": 2, "claimed": 3, "oldest_age_s": 0.0}]}

    def test_two_reviewers_never_overlap(self, db):
        db.record([make_item(i) for i in range(7)])
        _, _, a = db.claim("alice", 3, lease_s=60, now=T0)
        _, _, b = db.claim("bob", 10, lease_s=60, now=T0)
        assert len(a) == 3 and len(b) == 4 and not set(ids(a)) & set(ids(b))
        assert db.claim("carol", 5, lease_s=60, now=T0)[2] == []

    def test_concurrent_claims_never_overlap(self, db):
        n_items, n_threads = 60, 6
        db.record([make_item(i) for i in range(n_items)])
        got: dict[str, list[str]] = {f"r{k}": [] for k in range(n_threads)}
        errors: list[BaseException] = []
        start = threading.Barrier(n_threads)

        def reviewer(name: str) -> None:
            try:
                start.wait()
                while True:
                    _, _, items = db.claim(name, 4, lease_s=600, now=T0)
                    if not items:
                        return
                    got[name].extend(ids(items))
            except BaseException as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=reviewer, args=(name,)) for name in got]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors
        every = [i for claimed in got.values() for i in claimed]
        assert len(every) == len(set(every)) == n_items

    def test_expired_lease_returns_items(self, db):
        db.record([make_item(i) for i in range(2)])
        _, _, a = db.claim("alice", 2, lease_s=10, now=T0)
        later = T0 + timedelta(seconds=11)
        assert db.items(state="queued", now=later) and db.queue_stats(now=later)["by_product"][0]["claimed"] == 0
        _, _, b = db.claim("bob", 5, lease_s=10, now=later)
        assert ids(b) == ids(a)
        with pytest.raises(ConflictError) as err:
            db.verdict(a[0]["id"], "alice", "reviewer", "mura", now=later)
        assert err.value.http_status == 409
        assert db.verdict(b[0]["id"], "bob", "reviewer", "mura", now=later)["reviewer"] == "bob"

    def test_verdict_needs_the_lease_a_known_item_and_a_known_label(self, db):
        db.record([make_item(0), make_item(1)])
        _, _, items = db.claim("alice", 1, lease_s=60, now=T0)
        with pytest.raises(ConflictError):
            db.verdict(f"{1:032x}", "alice", "reviewer", "mura", now=T0)  # never claimed
        with pytest.raises(ConflictError):
            db.verdict(items[0]["id"], "bob", "reviewer", "mura", now=T0)  # alice holds it
        with pytest.raises(NotFoundError):
            db.verdict("f" * 32, "alice", "reviewer", "mura", now=T0)
        with pytest.raises(InputError) as err:
            db.verdict(items[0]["id"], "alice", "reviewer", "dog", now=T0)
        assert "false_defect" in err.value.allowed and "unsure" in err.value.allowed and "pinhole" in err.value.allowed
        ev = db.verdict(items[0]["id"], "alice", "reviewer", "false_defect", now=T0)
        assert ev["kind"] == "verdict" and ev["verdict_id"] == ev["event_id"] and ev["label"] == "false_defect"
        assert (ev["item_id"], ev["role"], ev["at"], ev["dataset"]) == (items[0]["id"], "reviewer", T0.isoformat(),
                                                                       "synth-a")
        assert db.items(state="done", now=T0)[0]["id"] == items[0]["id"]
        with pytest.raises(ConflictError):  # judged: the lease is spent
            db.verdict(items[0]["id"], "alice", "reviewer", "mura", now=T0)

    def test_labels_fall_back_to_top3_when_classes_unknown(self, db):
        item = make_item(0)
        item.classes = []
        db.record([item])
        _, _, items = db.claim("alice", 1, lease_s=60, now=T0)
        with pytest.raises(InputError) as err:
            db.verdict(items[0]["id"], "alice", "reviewer", "pinhole", now=T0)
        assert err.value.allowed == "scratch, mura, particle, false_defect, unsure"

    def test_undo_appends_an_event_and_leases_the_item_back(self, db):
        db.record([make_item(0), make_item(1)])
        _, _, items = db.claim("alice", 2, lease_s=60, now=T0)
        v1 = db.verdict(items[0]["id"], "alice", "reviewer", "mura", now=T0)
        v2 = db.verdict(items[1]["id"], "alice", "reviewer", "scratch", now=T0)
        undo = db.undo("alice", now=T0 + timedelta(seconds=1))
        assert undo["kind"] == "undo" and undo["verdict_id"] == v2["event_id"] and undo["seq"] > v2["seq"] > v1["seq"]
        assert undo["item_id"] == items[1]["id"] and undo["label"] == "scratch"
        assert [it["id"] for it in db.items(state="claimed", now=T0)] == [items[1]["id"]]
        again = db.verdict(items[1]["id"], "alice", "reviewer", "mura", now=T0 + timedelta(seconds=2))
        assert again["seq"] > undo["seq"]
        assert db.undo("alice", now=T0)["verdict_id"] == again["event_id"]
        assert db.undo("alice", now=T0)["verdict_id"] == v1["event_id"]
        with pytest.raises(NotFoundError):
            db.undo("alice", now=T0)
        with pytest.raises(NotFoundError):
            db.undo("bob", now=T0)

    def test_second_opinion_goes_to_someone_else(self, db):
        db.record([make_item(0)])
        _, _, items = db.claim("alice", 1, lease_s=60, now=T0)
        item_id = items[0]["id"]
        db.verdict(item_id, "alice", "reviewer", "mura", now=T0)
        with pytest.raises(ConflictError):
            db.second_opinion(item_id, "bob", now=T0)  # bob never saw it
        back = db.second_opinion(item_id, "alice", now=T0)
        assert back["state"] == "queued" and back["second_opinion"] is True
        assert db.claim("alice", 5, lease_s=60, now=T0)[2] == []
        _, _, bobs = db.claim("bob", 5, lease_s=60, now=T0)
        assert ids(bobs) == [item_id] and bobs[0]["second_opinion"] is True
        with pytest.raises(NotFoundError):
            db.second_opinion("0" * 31 + "9", "alice", now=T0)

    def test_unsure_escalates_to_another_reviewer(self, db):
        db.record([make_item(0, decision="defect", why="audit")])
        _, _, items = db.claim("alice", 1, lease_s=60, now=T0)
        ev = db.verdict(items[0]["id"], "alice", "reviewer", "unsure", now=T0)
        assert ev["label"] == "unsure" and ev["why"] == "audit"
        queued = db.items(state="queued", now=T0)
        assert ids(queued) == ids(items) and queued[0]["why"] == "escalated"
        assert db.claim("alice", 5, lease_s=60, now=T0)[2] == []
        _, _, senior = db.claim("sam", 5, lease_s=60, now=T0)
        assert senior[0]["why"] == "escalated"
        assert db.verdict(senior[0]["id"], "sam", "engineer", "false_defect", now=T0)["why"] == "escalated"
        row = db.stats(now=T0)[0]
        assert (row["audited_defect"], row["overkill"], row["backlog"]) == (1, 1, 0)

    def test_release_gives_back_claimed_items(self, db):
        db.record([make_item(i) for i in range(3)])
        db.claim("alice", 2, lease_s=60, now=T0)
        assert db.release("alice", now=T0) == 2 and db.release("alice", now=T0) == 0
        assert len(db.claim("bob", 5, lease_s=60, now=T0)[2]) == 3

    def test_claim_renews_held_items_and_returns_them_on_request(self, db):
        db.record([make_item(i) for i in range(4)])
        _, _, first = db.claim("alice", 2, lease_s=60, now=T0)
        lease_id, until, more = db.claim("alice", 1, lease_s=60, now=T0 + timedelta(seconds=30))
        assert not set(ids(first)) & set(ids(more)) and len(more) == 1
        later = T0 + timedelta(seconds=70)  # past the first lease, inside the renewed one
        _, _, held = db.claim("alice", 0, lease_s=60, include_held=True, now=later)
        assert ids(held) == ids(first) + ids(more)
        assert db.claim("bob", 5, lease_s=60, now=later)[2][0]["id"] == f"{3:032x}"

    def test_claim_by_product(self, db):
        db.record([make_item(0, product="p1"), make_item(1, product="p2")])
        _, _, items = db.claim("alice", 5, lease_s=60, product="p2", now=T0)
        assert [it["product"] for it in items] == ["p2"]
        with pytest.raises(InputError):
            db.claim("alice", -1, lease_s=60, now=T0)

    def test_events_after_pages_in_seq_order(self, db):
        db.record([make_item(i) for i in range(5)])
        _, _, items = db.claim("alice", 5, lease_s=60, now=T0)
        for it in items:
            db.verdict(it["id"], "alice", "reviewer", "mura", now=T0)
        db.undo("alice", now=T0)
        page1, last1 = db.events_after(0, limit=4)
        page2, last2 = db.events_after(last1, limit=4)
        assert len(page1) == 4 and len(page2) == 2 and last2 == page2[-1]["seq"]
        seqs = [e["seq"] for e in page1 + page2]
        assert seqs == sorted(seqs) and len(set(seqs)) == 6
        assert [e["kind"] for e in page2] == ["verdict", "undo"]
        assert db.events_after(last2) == ([], last2)

    def test_stats_figures_counted_by_hand(self, db):
        p, mv = "p1", "adc@1"
        db.count_decisions({("fab-a", p, mv, "defect"): 30, ("fab-a", p, mv, "false_defect"): 40,
                            ("fab-a", p, mv, "review"): 8, ("fab-a", "p2", mv, "review"): 3})
        db.count_decisions({("fab-a", p, mv, "defect"): 20})  # added to the 30
        # Audit items of automatic "defect" calls: 10 overkill, 11 real, 12 unsure, 13 undone,
        # 14 overkill by alice but bob's second opinion says real (the latest standing verdict counts).
        # Audit items of automatic "false_defect" calls: 20 escape, 21 agreed, 22 no verdict yet.
        # Review (low confidence) items: 30 judged, 31 not yet.
        db.record([make_item(i, decision="defect", why="audit") for i in (10, 11, 12, 13, 14)]
                  + [make_item(i, decision="false_defect", why="audit", predicted="false_defect") for i in (20, 21, 22)]
                  + [make_item(i) for i in (30, 31)])
        _, _, items = db.claim("alice", 20, lease_s=600, now=T0)
        by = {int(it["id"], 16): it["id"] for it in items}
        labels = {10: "false_defect", 11: "scratch", 12: "unsure", 13: "mura", 14: "false_defect",
                  20: "particle", 21: "false_defect", 30: "mura"}
        for i, label in labels.items():
            db.verdict(by[i], "alice", "reviewer", label, now=T0)
            if i == 13:
                db.undo("alice", now=T0)
        db.second_opinion(by[14], "alice", now=T0)
        _, _, bobs = db.claim("bob", 5, lease_s=600, now=T0)
        assert by[14] in ids(bobs)
        db.verdict(by[14], "bob", "reviewer", "scratch", now=T0)
        db.release("bob", now=T0)
        now = T0 + timedelta(seconds=100)
        rows = db.stats(now=now)
        assert rows == [
            {"product": "p1", "model_version": mv, "classified": 98, "automatic": 90, "review": 8,
             "audited_defect": 3, "overkill": 1, "audited_false_defect": 2, "escapes": 1,
             # backlog: 12 (escalated), 13 (undone, leased back), 22 and 31 (no verdict)
             "backlog": 4, "oldest_age_s": 100.0 - 12},
            {"product": "p2", "model_version": mv, "classified": 3, "automatic": 0, "review": 3,
             "audited_defect": 0, "overkill": 0, "audited_false_defect": 0, "escapes": 0,
             "backlog": 0, "oldest_age_s": 0.0},
        ]

    def test_annotations_load_and_query(self, db):
        table = pa.table({"image_id": ["a" * 64, "b" * 64, "c" * 64], "label": ["mura", "scratch", "mura"],
                          "annotator": ["lee", "lee", "kim"],
                          "annotated_at": pa.array([T0] * 3, pa.timestamp("ms", tz="UTC"))})
        assert db.load_annotations("annotations/line-a@1", table, now=T0) == 3
        assert [r["image_id"] for r in db.query_annotations(label="mura")] == ["a" * 64, "c" * 64]
        # a new version of the same line replaces its rows; another line adds its own
        assert db.load_annotations("annotations/line-a@2", table.slice(0, 1).set_column(
            1, "label", pa.array(["pinhole"])), now=T0) == 1
        rows = db.query_annotations(image_id="a" * 64)
        assert [(r["label"], r["artifact"], r["annotated_at"]) for r in rows] == [
            ("pinhole", "annotations/line-a@2", T0.isoformat())]
        with_product = pa.table({"image_id": ["a" * 64], "label": ["mura"], "product": ["p9"]})
        db.load_annotations("annotations/line-b@1", with_product, now=T0)
        assert [r["source"] for r in db.query_annotations(image_id="a" * 64)] == ["annotations/line-a",
                                                                                  "annotations/line-b"]
        assert [r["label"] for r in db.query_annotations(product="p9")] == ["mura"]
        with pytest.raises(InputError):
            db.load_annotations("x@1", pa.table({"label": ["mura"]}))

    def test_station_state_and_image_lookup(self, db):
        assert db.get_state("disabled") is None
        db.set_state("disabled", '["eve"]')
        db.set_state("disabled", '["eve", "mal"]')
        assert db.get_state("disabled") == '["eve", "mal"]'
        db.record([make_item(5)])
        assert db.image(f"{5:064x}")["image_uri"].endswith(f"{5:064x}")
        assert db.image("0" * 64) is None

    def test_items_filters_by_state(self, db):
        db.record([make_item(i) for i in range(3)])
        _, _, items = db.claim("alice", 2, lease_s=60, now=T0)
        db.verdict(items[0]["id"], "alice", "reviewer", "mura", now=T0)
        assert [len(db.items(state=s, now=T0)) for s in ("queued", "claimed", "done")] == [1, 1, 1]
        assert len(db.items(now=T0)) == 3 and len(db.items(limit=2, now=T0)) == 2
        with pytest.raises(InputError):
            db.items(state="lost")

    # ---- priority and shadow results (issue 13) ------------------------------------------
    def test_claims_take_higher_priority_first_then_oldest(self, db):
        db.record([make_item(i) for i in range(4)])
        urgent = [make_item(i, why="shadow_disagree") for i in (10, 11)]
        for it in urgent:
            it.priority = 1
        db.record(urgent)
        _, _, items = db.claim("alice", 3, lease_s=60, now=T0)
        assert ids(items) == [f"{i:032x}" for i in (10, 11, 0)]
        assert [it["priority"] for it in items] == [1, 1, 0] and items[0]["why"] == "shadow_disagree"

    def test_a_priority_item_of_a_waiting_image_raises_that_item(self, db):
        db.record([make_item(1)])
        again = make_item(2, why="shadow_disagree")
        again.image_sha256, again.priority = f"{1:064x}", 1
        db.record([make_item(0), again])
        queued = db.items(state="queued", now=T0)
        assert sorted(ids(queued)) == [f"{i:032x}" for i in (0, 1)]  # no second item for image 1
        assert ids(db.claim("alice", 1, lease_s=60, now=T0)[2]) == [f"{1:032x}"]

    def test_shadow_stats_against_verdicts(self, db):
        from serve_apps.review_shadow import ShadowResult

        def pair(i: int, champ: tuple[str, str], chall: tuple[str, str], challenger: str = "adc@2"):
            return ShadowResult(id=f"s{i}", image_sha256=f"{i:064x}", site="fab-a", product="p1",
                                champion_version="adc@1", champion_class=champ[0], champion_decision=champ[1],
                                challenger_version=challenger, challenger_class=chall[0],
                                challenger_decision=chall[1], at=T0 + timedelta(seconds=i))

        defect, false = ("scratch", "defect"), ("particle", "false_defect")
        db.record([], None, [pair(0, defect, defect), pair(1, false, defect), pair(2, defect, false),
                             pair(3, ("scratch", "review"), defect), pair(4, defect, defect),
                             pair(5, defect, false, challenger="adc@3")])
        db.record([make_item(i) for i in (0, 1, 2, 4, 5)])
        _, _, items = db.claim("alice", 10, lease_s=60, now=T0)
        labels = {f"{0:032x}": "scratch", f"{1:032x}": "scratch", f"{2:032x}": "false_defect",
                  f"{4:032x}": "unsure", f"{5:032x}": "scratch"}
        for it in items:
            db.verdict(it["id"], "alice", "reviewer", labels[it["id"]], now=T0)
        stats = db.shadow_stats("adc@2")
        assert stats == {
            "challenger": "adc@2", "champion": "adc@1", "shadowed": 5, "agreement": 0.4, "with_verdicts": 3,
            "challenger_figures": {"escapes": 0, "audited_false_defect": 1, "overkill": 0, "audited_defect": 2,
                                   "escape_rate": 0.0, "overkill_rate": 0.0},
            "champion_figures": {"escapes": 1, "audited_false_defect": 1, "overkill": 1, "audited_defect": 2,
                                 "escape_rate": 1.0, "overkill_rate": 0.5}}
        assert db.shadow_stats("adc@9") == {
            "challenger": "adc@9", "champion": None, "shadowed": 0, "agreement": None, "with_verdicts": 0,
            "challenger_figures": {"escapes": 0, "audited_false_defect": 0, "overkill": 0, "audited_defect": 0,
                                   "escape_rate": None, "overkill_rate": None},
            "champion_figures": {"escapes": 0, "audited_false_defect": 0, "overkill": 0, "audited_defect": 0,
                                 "escape_rate": None, "overkill_rate": None}}
        assert [r["id"] for r in db.shadow_results("adc@2", limit=2)] == ["s4", "s3"]

    def test_a_schema_1_database_is_upgraded(self, db):
        db.record([make_item(0)])
        with db._engine.begin() as c:  # what issue 12's code created
            c.exec_driver_sql("ALTER TABLE review_items DROP COLUMN priority")
            c.exec_driver_sql("DROP TABLE shadow_results")
        db.set_state("schema_version", "1")
        again = ReviewDB(db.url)
        try:
            assert again.get_state("schema_version") == "2"
            assert again.claim("alice", 1, lease_s=60, now=T0)[2][0]["priority"] == 0
            assert again.shadow_stats("adc@2")["shadowed"] == 0
            ReviewDB(db.url).close()  # opening an upgraded DB again changes nothing
        finally:
            again.close()


class TestSQLite(ReviewDBContract):
    @pytest.fixture
    def db(self, tmp_path):
        db = ReviewDB(f"sqlite:///{tmp_path}/sub/review.db")
        yield db
        db.close()

    def test_a_newer_schema_is_refused(self, tmp_path):
        url = f"sqlite:///{tmp_path}/review.db"
        ReviewDB(url).set_state("schema_version", "99")
        with pytest.raises(ConfigError, match="schema version 99"):
            ReviewDB(url)

    def test_wal_mode(self, db):
        with db._engine.connect() as c:
            assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_urls():
    assert normalize_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("sqlite:///x.db") == "sqlite:///x.db"
    with pytest.raises(ConfigError, match="names database 'mysql'"):
        ReviewDB("mysql://u@h/db")
    with pytest.raises(ConfigError, match="not a SQLAlchemy URL"):
        ReviewDB("no url at all")


def test_naive_now_is_refused(tmp_path):
    db = ReviewDB(f"sqlite:///{tmp_path}/r.db")
    with pytest.raises(InputError, match="no time zone"):
        db.claim("alice", 1, lease_s=5, now=datetime(2026, 1, 1))
