"""The verdict sync against the real review station app (serve_apps.review_api over a SQLite
ReviewDB, mounted at /review and served by uvicorn on 127.0.0.1; no Ray): the center's token is
accepted, events, undo, images from the site store, the disabled list and an annotations load all
match what the station does."""

from __future__ import annotations

import functools
import hashlib
import io
import socket
import threading
from datetime import UTC, datetime

import pyarrow as pa
import pytest
import uvicorn
import yaml
from PIL import Image
from starlette.applications import Starlette
from starlette.routing import Mount

from configs.platform import load_platform
from coordinator.center.core import Center
from coordinator.center.station_keys import StationKeys
from coordinator.jobs import review_sync
from coordinator.state.users import Users
from data.annotations import publish_annotations, read_annotations
from serve_apps.review_api import build_review_api
from serve_apps.review_db import QueuedItem, ReviewDB
from tests.waiting import wait_for

CLASSES = ["particle", "scratch", "false_defect"]


def png(n: int) -> bytes:
    out = io.BytesIO()
    Image.new("L", (8, 8), color=n).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
def site(tmp_path):
    """(center, station db, site store) with fab-a's real station served."""
    home = tmp_path / "home"
    pem = StationKeys(home).public_pem()
    store = tmp_path / "fab-a-store"
    db = ReviewDB(f"sqlite:///{tmp_path / 'review.db'}")
    items = []
    for i in range(3):
        data = png(i + 1)
        sha = hashlib.sha256(data).hexdigest()
        path = store / "review" / "objects" / "sha256" / sha[:2] / sha
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        items.append(QueuedItem(
            id=f"item{i}", image_sha256=sha, image_uri=path.as_uri(), site="fab-a", product="p1",
            aoi_machine="aoi-7", panel_id=f"PNL{i}", model_version="adc@2", dataset="aoi", predicted="particle",
            confidence=0.4, top3=[], decision="review", why="low_confidence", created_at=datetime.now(UTC),
            classes=CLASSES))
    db.record(items)
    api = build_review_api(db, site="fab-a", public_key_pem=pem, store_options={})
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(Starlette(routes=[Mount("/review", app=api)]), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 30, "the station", poll_s=0.02)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        doc = {"center": {"state_db": "{home}/coordinator.db", "store": {"url": "{home}/store"}},
               "sites": [{"name": "fab-a", "store": {"url": str(store)},
                          "gateway": {"kind": "direct", "dashboard": "http://127.0.0.1:9", "serve": url}}]}
        (tmp_path / "platform.yaml").write_text(yaml.safe_dump(doc))
        center = Center(load_platform(tmp_path / "platform.yaml", home), home)
        try:
            yield center, db, store
        finally:
            center.close()
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
        db.close()


def test_sync_against_the_real_station(site):
    center, db, _ = site
    _, _, claimed = db.claim("li", 10, lease_s=300)
    by_id = {it["id"]: it for it in claimed}
    db.verdict("item0", "li", "reviewer", "scratch")
    db.undo("li")  # a slip, judged again
    db.verdict("item0", "li", "reviewer", "particle")
    db.verdict("item1", "li", "reviewer", "false_defect")
    db.verdict("item2", "li", "reviewer", "unsure")  # escalated: no label from it
    Users(center.state).add("bob", "reviewer", ["fab-a"], by="admin")
    Users(center.state).disable("bob")

    first = review_sync.sync(center, timeout_s=5)
    row = first["sites"][0]
    assert row["ok"], row
    assert row["disabled"] == 1
    assert (first["verdicts_new"], first["undos_new"]) == (3, 1)
    assert first["annotations"] == "reviewed-aoi@1"
    labels = {r["image_id"]: r["label"] for r in read_annotations(center.central, "reviewed-aoi").to_pylist()}
    assert labels == {by_id["item0"]["image_sha256"]: "particle", by_id["item1"]["image_sha256"]: "false_defect"}
    assert review_sync.sync(center, timeout_s=5)["verdicts_new"] == 0
    assert first["dataset"] == "reviewed-aoi@1"


def test_an_annotations_push_is_loaded_into_the_station_db(site):
    center, db, _ = site
    sha = hashlib.sha256(png(1)).hexdigest()
    m = publish_annotations(center.central, "factory", pa.table({"image_id": [sha], "label": ["scratch"]}),
                            author="eng")
    center.push_hooks.append(functools.partial(review_sync.load_site_db, center))
    (outcome,) = center.push(f"annotations/factory@{m.version}", ["fab-a"])
    assert outcome.to_dict()["site_db"] == {"rows": 1}
    (row,) = db.query_annotations(image_id=sha)
    assert row["label"] == "scratch"
