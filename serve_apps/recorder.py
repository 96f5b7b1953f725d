"""Recording decisions for review, off the request path (issue 12, contract §6).

The ADC app hands every answered request to `Recorder.submit`, which only counts the decisions and
puts the ones to record (every `review`, and an `audit_rate` share of automatic ones, why="audit")
on a bounded in-memory queue; it never blocks, never raises, and drops (counted) when the queue is
full. One daemon thread writes, in batches: each image into the site store, content-addressed
(`<store>/review/objects/sha256/<aa>/<sha>`, written to a temp name and moved, skipped when
present), then the rows and the decision counts in one `ReviewDB.record` transaction.
Failures are counted (`errors`), never raised. `flush(timeout)` waits until everything submitted
so far is written (tests, shutdown).

`Recorder.shadow` takes what a shadow (challenger) model said beside the champion on the same
images (serve_apps.shadow): each becomes a `shadow_results` row, and an image where the two differ
(class or decision) is queued for review with why="shadow_disagree" and priority 1.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

import numpy as np
from PIL import Image

from data.artifacts import ArtifactStore
from serve_apps.review_db import QueuedItem, ReviewDB
from serve_apps.review_shadow import ShadowResult

__all__ = ["ENV_DB_URL", "ENV_SITE", "ENV_STORE", "ENV_STORE_OPTIONS", "SHADOW_DISAGREE", "Counters", "Recorder",
           "RequestMeta", "dataset_line", "from_env", "object_key"]

logger = logging.getLogger("ray.serve")

ENV_DB_URL = "ADCP_REVIEW_DB_URL"
ENV_STORE = "ADCP_SITE_STORE"
ENV_STORE_OPTIONS = "ADCP_SITE_STORE_OPTIONS"
ENV_SITE = "ADCP_SITE"
#: Decisions the queue may hold: at ~100 KB an AOI image, ~1 GB at worst, and minutes of a
#: busy line's review share while the DB is slow.
MAX_QUEUE = 10_000
#: Rows per DB transaction: large enough that a 512-image batch request is a few transactions.
BATCH = 256
#: How often the writer wakes with nothing queued, to write the decision counts.
INTERVAL_S = 0.5
#: How long the writer lets a batch fill after its first item: one DB transaction per ~0.1 s
#: instead of one per request (each costs the replica's event loop GIL time).
LINGER_S = 0.1
#: Why and priority of an image the champion and its shadow answered differently.
SHADOW_DISAGREE = "shadow_disagree"
SHADOW_PRIORITY = 1
_WAKE = object()


class Counters(Protocol):
    """Where the recorder counts (serve_apps.metrics.RecorderMetrics on Ray; a plain object in tests)."""

    def recorded(self, n: int) -> None: ...
    def errors(self, n: int) -> None: ...
    def dropped(self, n: int) -> None: ...


class _NoCounters:
    def recorded(self, n: int) -> None:
        pass

    errors = dropped = recorded


@dataclass(frozen=True)
class RequestMeta:
    """What an AOI machine said about an image (all optional)."""

    product: str = ""
    aoi_machine: str = ""
    panel_id: str = ""


@dataclass
class _Pending:
    image: bytes | np.ndarray  # an encoded file, or raw uint8 pixels (Open Inference Protocol)
    answer: Mapping[str, Any]
    meta: RequestMeta
    model_version: str
    classes: list[str]
    dataset: str
    why: str
    at: datetime


@dataclass
class _ShadowPending:
    image: bytes | np.ndarray
    champion: Mapping[str, Any]
    challenger: Mapping[str, Any]
    meta: RequestMeta
    champion_version: str
    challenger_version: str
    classes: list[str]
    dataset: str
    at: datetime


def _png(pixels: np.ndarray) -> bytes:
    """Raw uint8 pixels (H, W) or (H, W, 1|3|4) as a PNG file."""
    pixels = np.asarray(pixels)
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def object_key(sha256: str) -> str:
    """The store key of a review image."""
    return f"review/objects/sha256/{sha256[:2]}/{sha256}"


def dataset_line(lineage: Mapping[str, Any] | None) -> str:
    """The training dataset's name (no kind, no version) from a model's lineage; "" when unknown."""
    ref = str((lineage or {}).get("dataset") or "")
    return ref.split("@", 1)[0].removeprefix("dataset/")


class Recorder:
    """Queues decisions for review and writes them from one background thread."""

    def __init__(self, db: ReviewDB | Callable[[], ReviewDB], store: ArtifactStore, *, site: str,
                 audit_rate: float = 0.02, counters: Counters | None = None, rng: random.Random | None = None,
                 max_queue: int = MAX_QUEUE, batch: int = BATCH, interval_s: float = INTERVAL_S,
                 linger_s: float = LINGER_S) -> None:
        self._db_or_factory = db
        self._db: ReviewDB | None = db if hasattr(db, "record") else None  # else a factory
        self.store = store
        self.site = site
        self.audit_rate = audit_rate
        self.counters = counters or _NoCounters()
        self._rng = rng or random.Random()
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._batch = batch
        self._interval_s = interval_s
        self._linger_s = linger_s
        self._dirs: set[str] = set()
        self._counts: dict[tuple[str, str, str, str], int] = {}
        self._lock = threading.Lock()  # guards _counts and the rng (submit runs on many threads)
        self._cond = threading.Condition()
        self._flush_asked = 0
        self._flush_done = 0
        self._stop = False
        #: CPU seconds the writer thread has used (what recording costs besides `submit`).
        self.writer_cpu_s = 0.0
        self._thread = threading.Thread(target=self._loop, name="adcp-review-recorder", daemon=True)
        self._thread.start()

    # ---- the request path ---------------------------------------------------------------------
    def submit(self, images: Sequence[bytes | Any], answers: Sequence[Mapping[str, Any]],
               metas: Sequence[RequestMeta] | RequestMeta | None = None, *, model_version: str,
               classes: Sequence[str] = (), dataset: str = "", audit_rate: float | None = None) -> None:
        """Count these answers and queue the ones to review; never blocks, never raises.

        `images` are the encoded files (or raw uint8 pixels, stored as PNG); `audit_rate`
        (default: the recorder's) is the share of automatic decisions queued as audits.
        """
        try:
            rate = self.audit_rate if audit_rate is None else audit_rate
            self._submit(images, answers, metas, model_version, list(classes), dataset, rate)
        except Exception:  # noqa: BLE001 - recording must never fail a classification
            logger.exception("review recorder: submit failed")
            self.counters.errors(len(answers))

    def _submit(self, images: Sequence[Any], answers: Sequence[Mapping[str, Any]],
                metas: Sequence[RequestMeta] | RequestMeta | None, model_version: str, classes: list[str],
                dataset: str, audit_rate: float) -> None:
        if metas is None or isinstance(metas, RequestMeta):
            metas = [metas or RequestMeta()] * len(answers)
        at = datetime.now(timezone.utc)
        picked = []
        with self._lock:
            for image, answer, meta in zip(images, answers, metas):
                decision = str(answer.get("decision"))
                key = (self.site, meta.product, model_version, decision)
                self._counts[key] = self._counts.get(key, 0) + 1
                if decision == "review":
                    why = "low_confidence"
                elif audit_rate > 0 and self._rng.random() < audit_rate:
                    why = "audit"
                else:
                    continue
                if isinstance(image, (bytearray, memoryview)):
                    image = bytes(image)
                picked.append(_Pending(image, answer, meta, model_version, classes, dataset, why, at))
        dropped = 0
        for item in picked:
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                dropped += 1
        self.counters.dropped(dropped)

    def shadow(self, images: Sequence[bytes | Any], champion: Sequence[Mapping[str, Any]],
               challenger: Sequence[Mapping[str, Any]], metas: Sequence[RequestMeta] | RequestMeta | None = None, *,
               champion_version: str, challenger_version: str, classes: Sequence[str] = (),
               dataset: str = "") -> None:
        """Queue what the champion and the shadow model answered on these images (a row each, and
        the disagreements for review); never blocks, never raises, drops (counted) when full."""
        try:
            if metas is None or isinstance(metas, RequestMeta):
                metas = [metas or RequestMeta()] * len(champion)
            at = datetime.now(timezone.utc)
            dropped = 0
            for image, a, b, meta in zip(images, champion, challenger, metas):
                if isinstance(image, (bytearray, memoryview)):
                    image = bytes(image)
                try:
                    self._queue.put_nowait(_ShadowPending(image, a, b, meta, champion_version, challenger_version,
                                                          list(classes), dataset, at))
                except queue.Full:
                    dropped += 1
            self.counters.dropped(dropped)
        except Exception:  # noqa: BLE001 - recording must never fail a classification
            logger.exception("review recorder: shadow submit failed")
            self.counters.errors(len(champion))

    # ---- the writer thread -----------------------------------------------------------------
    def _take(self) -> list[_Pending]:
        items: list[_Pending] = []
        try:
            first = self._queue.get(timeout=self._interval_s)
        except queue.Empty:
            return items
        if first is _WAKE:
            return items  # a flush or close: write what there is now
        items.append(first)
        until = time.monotonic() + self._linger_s
        while len(items) < self._batch:
            try:
                item = self._queue.get(timeout=max(0.0, until - time.monotonic()))
            except queue.Empty:
                break
            if item is _WAKE:
                break
            items.append(item)
        return items

    def _loop(self) -> None:
        while True:
            items = self._take()
            # Asked after the take: whatever was submitted before a flush is now either written
            # or in `items` or still queued (then the queue is not empty and the flush waits on).
            with self._cond:
                asked, stopping = self._flush_asked, self._stop
            try:
                self._write(items)
            except Exception:  # noqa: BLE001 - the writer thread must outlive any failure
                logger.exception("review recorder: write failed")
            self.writer_cpu_s = time.thread_time()
            with self._cond:
                if self._queue.empty():
                    self._flush_done = max(self._flush_done, asked)
                    self._cond.notify_all()
            if stopping and self._queue.empty():
                return

    def _database(self) -> ReviewDB:
        if self._db is None:
            self._db = self._db_or_factory()  # type: ignore[operator]
        return self._db

    def _write(self, items: list[_Pending]) -> None:
        with self._lock:
            counts, self._counts = self._counts, {}
        rows: list[QueuedItem] = []
        shadow: list[ShadowResult] = []
        for item in items:
            try:
                if isinstance(item, _ShadowPending):
                    self._shadow_row(item, rows, shadow)
                else:
                    rows.append(self._store_image(item))
            except Exception:  # noqa: BLE001 - one bad write loses one item, counted
                logger.exception("review recorder: storing an image failed")
                self.counters.errors(1)
        try:
            if rows or counts or shadow:
                db = self._database()  # one transaction
                db.record(rows, counts, shadow) if shadow else db.record(rows, counts)
        except Exception:  # noqa: BLE001 - counted; the counts are kept for the next try
            logger.exception("review recorder: writing %d items to the review DB failed", len(rows))
            self.counters.errors(len(rows) or 1)
            with self._lock:
                for key, n in counts.items():
                    self._counts[key] = self._counts.get(key, 0) + n
            return
        self.counters.recorded(len(rows) + len(shadow))

    def _shadow_row(self, item: _ShadowPending, rows: list[QueuedItem], shadow: list[ShadowResult]) -> None:
        if not isinstance(item.image, bytes):
            item.image = _png(item.image)
        a, b = item.champion, item.challenger
        result = ShadowResult(
            id=uuid.uuid4().hex, image_sha256=hashlib.sha256(item.image).hexdigest(), site=self.site,
            product=item.meta.product, champion_version=item.champion_version, champion_class=str(a.get("class")),
            champion_decision=str(a.get("decision")), challenger_version=item.challenger_version,
            challenger_class=str(b.get("class")), challenger_decision=str(b.get("decision")), at=item.at)
        if result.disagree:  # the champion's answer goes to the reviewer, as for any queued image
            queued = self._store_image(_Pending(item.image, a, item.meta, item.champion_version, item.classes,
                                                item.dataset, SHADOW_DISAGREE, item.at))
            queued.priority = SHADOW_PRIORITY
            rows.append(queued)
        shadow.append(result)

    def _store_image(self, item: _Pending) -> QueuedItem:
        if not isinstance(item.image, bytes):
            item.image = _png(item.image)
        sha = hashlib.sha256(item.image).hexdigest()
        key = object_key(sha)
        path = self.store.path(key)
        fs = self.store.fs
        if self.store.local:
            if not os.path.exists(path):
                parent = os.path.dirname(path)
                if parent not in self._dirs:  # 256 of them: create each once
                    os.makedirs(parent, exist_ok=True)
                    self._dirs.add(parent)
                tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
                try:
                    f = open(tmp, "wb")  # noqa: SIM115 - closed below
                except FileNotFoundError:  # its folder was removed since: create it again
                    os.makedirs(parent, exist_ok=True)
                    f = open(tmp, "wb")  # noqa: SIM115
                with f:
                    f.write(item.image)
                os.replace(tmp, path)
        elif not fs.exists(path):
            if self.store.protocol in ("s3", "s3a", "gcs", "gs"):
                fs.pipe_file(path, item.image)  # one PUT: an object store never shows half of it
            else:
                tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
                fs.pipe_file(tmp, item.image)
                fs.mv(tmp, path)
        a = item.answer
        return QueuedItem(
            id=uuid.uuid4().hex, image_sha256=sha, image_uri=f"{self.store.url}/{key}", site=self.site,
            product=item.meta.product, aoi_machine=item.meta.aoi_machine, panel_id=item.meta.panel_id,
            model_version=item.model_version, dataset=item.dataset, predicted=str(a.get("class")),
            confidence=float(a.get("confidence", 0.0)),
            top3=[{"class": str(t["class"]), "confidence": float(t["confidence"])} for t in a.get("top3", [])],
            decision=str(a.get("decision")), why=item.why, created_at=item.at, classes=item.classes)

    # ---- flush and close ------------------------------------------------------------------
    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted before this call is written (or failed); False on timeout."""
        with self._cond:
            self._flush_asked += 1
            asked = self._flush_asked
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_WAKE)  # a full queue keeps the writer busy anyway
        with self._cond:
            return self._cond.wait_for(lambda: self._flush_done >= asked, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued and stop the writer thread."""
        self.flush(timeout)
        with self._cond:
            self._stop = True
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_WAKE)
        self._thread.join(timeout)
        if self._db is not None:
            self._db.close()

    @property
    def queued(self) -> int:
        return self._queue.qsize()


def from_env(audit_rate: float, counters: Counters | None = None,
             environ: Mapping[str, str] | None = None) -> Recorder | None:
    """A Recorder when ADCP_REVIEW_DB_URL and ADCP_SITE_STORE are set, else None (recording off).

    The DB is opened on the writer thread's first batch, so a bad URL never fails the replica:
    it is counted as errors and logged (and so are invalid store settings, which turn recording off).
    """
    env = os.environ if environ is None else environ
    url, store_url = env.get(ENV_DB_URL), env.get(ENV_STORE)
    if not url or not store_url:
        return None
    try:
        options = json.loads(env.get(ENV_STORE_OPTIONS) or "{}")
        lease_s = float(env.get("ADCP_REVIEW_LEASE_S") or 300)
        store = ArtifactStore(store_url, options)
    except Exception:  # noqa: BLE001 - a bad setting turns recording off (logged, counted), never the app
        logger.exception("review recorder: recording is off, its settings are invalid")
        (counters or _NoCounters()).errors(1)
        return None
    return Recorder(lambda: ReviewDB(url, lease_s=lease_s), store, site=env.get(ENV_SITE, ""),
                    audit_rate=audit_rate, counters=counters)
