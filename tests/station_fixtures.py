"""A review station served for real on 127.0.0.1, without Ray: the browser test and the screenshot.

`served_station(tmp, site, n_items)` records `n_items` queued items (synthetic AOI PNGs written to a
temp site store, content-addressed like the recorder writes them) into a fresh SQLite ReviewDB,
builds the station's FastAPI app, mounts it at `/review` (as Ray Serve's proxy hands it: root_path
/review and the full path) and runs it with uvicorn in a thread on a free port.
"""

from __future__ import annotations

import hashlib
import random
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.applications import Starlette
from starlette.routing import Mount

from configs.station_tokens import public_pem, sign
from serve_apps.review_api import build_review_api
from serve_apps.review_db import QueuedItem, ReviewDB
from tests.serve_fixtures import synth_png
from tests.waiting import wait_for

__all__ = ["DISPLAY_NAMES", "ServedStation", "queue_items", "served_station"]

CLASSES = ["particle", "scratch", "mura", "line_defect", "pinhole", "false_defect"]
DISPLAY_NAMES = {
    "site": "北京一厂",
    "products": {"p55": "55寸面板", "p65": "65寸面板", "p32": "32寸面板"},
    "classes": {"particle": "颗粒", "scratch": "划伤", "mura": "色斑(Mura)", "line_defect": "线缺陷",
                "pinhole": "针孔", "false_defect": "假缺陷"},
}


@dataclass
class ServedStation:
    site: str
    url: str              # the page: http://127.0.0.1:PORT/review/
    db: ReviewDB
    key: Ed25519PrivateKey

    def token(self, sub: str, role: str = "reviewer", sites: tuple[str, ...] | None = None, ttl_s: int = 3600) -> str:
        return sign(self.key, sub=sub, role=role, sites=list(sites or (self.site,)), ttl_s=ttl_s)[0]


def queue_items(db: ReviewDB, store: Path, site: str, n: int, *, seed: int = 0, size: int = 128) -> list[str]:
    """Record n queued items with real PNGs in `store`; returns their ids, oldest first."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    items = []
    for i in range(n):
        data = synth_png(seed * 10_000 + i, size=size)
        sha = hashlib.sha256(data).hexdigest()
        path = store / "review" / "objects" / "sha256" / sha[:2] / sha
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        probs = sorted((rng.random() for _ in range(3)), reverse=True)
        total = sum(probs) / rng.uniform(0.7, 0.95)
        top = rng.sample(CLASSES, 3)
        items.append(QueuedItem(
            id=f"{seed:08x}{i:024x}", image_sha256=sha, image_uri=path.as_uri(), site=site,
            product=rng.choice(["p55", "p55", "p65", "p32"]), aoi_machine=f"AOI-{rng.randint(1, 6):02d}",
            panel_id=f"PNL{rng.randint(100000, 999999)}", model_version="adc@7", dataset="aoi",
            predicted=top[0], confidence=round(probs[0] / total, 3),
            top3=[{"class": c, "confidence": round(p / total, 3)} for c, p in zip(top, probs, strict=True)],
            decision="review", why="audit" if rng.random() < 0.15 else "low_confidence",
            created_at=now - timedelta(seconds=rng.randint(30, 5400)), classes=CLASSES))
    items.sort(key=lambda it: it.created_at)
    db.record(items)
    return [it.id for it in items]


@contextmanager
def served_station(tmp: Path, site: str, n_items: int = 0, *, key: Ed25519PrivateKey | None = None,
                   seed: int = 0, lease_s: float = 300) -> Iterator[ServedStation]:
    """A station for `site` with `n_items` queued, served on 127.0.0.1 until the block ends."""
    tmp.mkdir(parents=True, exist_ok=True)
    key = key or Ed25519PrivateKey.generate()
    db = ReviewDB(f"sqlite:///{tmp / 'review.db'}", lease_s=lease_s)
    if n_items:
        queue_items(db, tmp / "store", site, n_items, seed=seed)
    api = build_review_api(db, site=site, public_key_pem=public_pem(key), center_url=None,
                           display_names=DISPLAY_NAMES if site == "fab-a" else {"site": site},
                           lease_s=lease_s, store_options={})
    app = Starlette(routes=[Mount("/review", app=api)])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 30, f"the {site} station")
        yield ServedStation(site, f"http://127.0.0.1:{sock.getsockname()[1]}/review/", db, key)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
        db.close()
