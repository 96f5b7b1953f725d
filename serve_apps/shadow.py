"""Shadow at the site: a challenger model beside the champion, off the caller's path (issue 13 §S).

`ShadowRunner` holds the shadow model named by `user_config.shadow_model_uri` (loaded on
reconfigure, in a worker thread, like the champion; a shadow that fails to load is logged and
counted and never touches the champion). After the champion's answers for a request are ready,
`offer` picks a `shadow_rate` share of its images and puts them, with the champion's preprocessed
input, on a bounded queue; it never blocks and never raises, and drops (counted) when the queue is
full. One daemon thread, at a lower CPU priority than the replica's request path, runs the shadow
model on what is queued (one forward pass per batch of queued requests) and hands (image,
champion answer, challenger answer, metadata) to the sink: the review recorder's `shadow`, which
stores the pair and queues disagreements for review. The caller's answer is always the champion's
and waits for nothing of the shadow's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import random
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from configs.models import ServeUserConfig
from data.preprocess import decode_image
from serve_apps.classifier import LoadedModel, Prepared, answers, load_model, preprocess, to_channels
from serve_apps.recorder import RequestMeta

__all__ = ["MAX_QUEUE", "NICE", "ShadowRunner", "ShadowSink"]

logger = logging.getLogger("ray.serve")

#: Requests the shadow queue holds. A shadow costs about one forward pass per image; when the
#: replica cannot keep up (shadow_rate near 1 on a busy line) dropping is the point: the caller's
#: path must not pay for the challenger.
MAX_QUEUE = 256
#: Requests run in one shadow forward pass, at most.
BATCH = 16
#: How much nicer than the request path the shadow thread runs (Linux thread priority): on a
#: replica with one CPU the champion's forward passes get the CPU first.
NICE = 10


class ShadowSink(Protocol):
    """Where shadow answers go (serve_apps.recorder.Recorder.shadow)."""

    def shadow(self, images: Sequence[Any], champion: Sequence[Mapping[str, Any]],
               challenger: Sequence[Mapping[str, Any]], metas: Sequence[RequestMeta] | RequestMeta | None = None, *,
               champion_version: str, challenger_version: str, classes: Sequence[str] = (),
               dataset: str = "") -> None: ...


@dataclass(eq=False)
class _Job:
    model: LoadedModel  # the shadow model when offered
    x: np.ndarray | None  # the champion's input rows, when the shadow takes the same input
    images: list[Any]
    champion: list[Mapping[str, Any]]
    metas: list[RequestMeta]
    champion_version: str
    classes: list[str]
    dataset: str


def _same_input(a: LoadedModel, b: LoadedModel) -> bool:
    sa, sb = a.meta.input, b.meta.input
    return (sa.size, sa.channels, sa.normalization, sa.scale, sa.resize) == (
        sb.size, sb.channels, sb.normalization, sb.scale, sb.resize)


class ShadowRunner:
    """The shadow model of one replica, its queue and worker thread, and what it counted."""

    def __init__(self, sink: ShadowSink | None, *, device: str = "cpu", rng: random.Random | None = None,
                 max_queue: int = MAX_QUEUE, batch: int = BATCH, nice: int = NICE) -> None:
        self.sink = sink
        self.device = device
        self.model: LoadedModel | None = None
        self.rate = 0.0
        #: Why the last shadow load failed (None when the shadow loaded or none is asked for).
        self.error: dict[str, Any] | None = None
        self.counts = {"offered": 0, "shadowed": 0, "dropped": 0, "errors": 0, "load_errors": 0}
        self._rng = rng or random.Random()
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=max_queue)
        self._batch = batch
        self._nice = nice
        self._lock = threading.Lock()  # guards counts, the rng and _pending
        self._idle = threading.Condition(self._lock)
        self._pending = 0
        self._thread: threading.Thread | None = None
        self._closed = False

    # ---- configuration (a worker thread of reconfigure) -------------------------------------
    def configure(self, cfg: ServeUserConfig, champion: LoadedModel | None = None) -> None:
        """Load the shadow model `cfg` names (reusing the loaded one, or the champion's program, for
        the same URI) with its thresholds; never raises: a failure is logged, counted and kept in
        `error`, and shadowing stops until a configuration loads."""
        uri = cfg.shadow_model_uri
        try:
            if uri is None:
                new = None
            elif self.model is not None and self.model.uri == uri:
                new = self.model.with_thresholds(cfg.shadow_thresholds)
            elif champion is not None and champion.uri == uri:
                new = champion.with_thresholds(cfg.shadow_thresholds)  # the same program
            else:
                new = load_model(uri, self.device).with_thresholds(cfg.shadow_thresholds)
        except Exception as e:  # noqa: BLE001 - a broken challenger must never break the champion
            logger.exception("ADC shadow: cannot load %s; shadowing is off", uri)
            with self._lock:
                self.counts["load_errors"] += 1
            self.error = {"error": type(e).__name__, "detail": str(e), "model_uri": uri,
                          "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            self.model, self.rate = None, 0.0
            return
        if new is not None and new is not self.model:
            logger.info("ADC shadow model: %s at rate %s", new.model_id, cfg.shadow_rate)
        self.model, self.rate, self.error = new, cfg.shadow_rate, None

    def status(self) -> dict[str, Any]:
        """The `shadow` part of `GET /v1/model`."""
        model = self.model
        with self._lock:
            counts = dict(self.counts)
        body: dict[str, Any] = {"model_version": model.model_id if model else None,
                                "uri": model.uri if model else None, "rate": self.rate,
                                "thresholds": model.meta.thresholds if model else None,
                                "queued": self._queue.qsize(), **counts}
        if self.error:
            body["error"] = self.error
        return body

    # ---- the request path ------------------------------------------------------------------
    def offer(self, prep: Prepared, images: Sequence[Any], champion: Sequence[Mapping[str, Any]],
              metas: Sequence[RequestMeta] | RequestMeta | None = None, *, dataset: str = "") -> int:
        """Queue a `rate` share of these answered images for the shadow model; the number queued.
        Never blocks, never raises."""
        model, rate = self.model, self.rate
        if model is None or rate <= 0 or self.sink is None or self._closed:
            return 0
        try:
            with self._lock:
                picked = [i for i in range(len(champion)) if rate >= 1.0 or self._rng.random() < rate]
            if not picked:
                return 0
            if metas is None or isinstance(metas, RequestMeta):
                metas = [metas or RequestMeta()] * len(champion)
            x = prep.x[picked] if _same_input(prep.model, model) else None
            job = _Job(model, x, [images[i] for i in picked], [champion[i] for i in picked],
                       [metas[i] for i in picked], prep.model.model_id, list(prep.model.meta.classes), dataset)
            self._start()
            with self._lock:
                self.counts["offered"] += len(picked)
                self._pending += 1
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                with self._lock:
                    self.counts["dropped"] += len(picked)
                    self._pending -= 1
                    self._idle.notify_all()
                return 0
            return len(picked)
        except Exception:  # noqa: BLE001 - shadowing must never fail a classification
            logger.exception("ADC shadow: offer failed")
            with self._lock:
                self.counts["errors"] += 1
            return 0

    # ---- the worker thread -----------------------------------------------------------------
    def _start(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._loop, name="adcp-shadow", daemon=True)
                    self._thread.start()

    def _loop(self) -> None:
        with contextlib.suppress(AttributeError, OSError):  # Linux: this thread only
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self._nice)
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs = [first]
            while len(jobs) < self._batch:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    self._queue.put_nowait(None)  # stop after this batch
                    break
                jobs.append(job)
            try:
                self._run(jobs)
            except Exception:  # noqa: BLE001 - the worker must outlive any failure
                logger.exception("ADC shadow: running %d requests failed", len(jobs))
                with self._lock:
                    self.counts["errors"] += sum(len(j.champion) for j in jobs)
            with self._lock:
                self._pending -= len(jobs)
                self._idle.notify_all()

    def _input(self, job: _Job) -> np.ndarray:
        if job.x is not None:
            return job.x
        channels = job.model.meta.input.channels
        pixels = [decode_image(bytes(img), channels=channels) if isinstance(img, (bytes, bytearray, memoryview))
                  else to_channels(img, channels) for img in job.images]
        return preprocess(pixels, job.model.meta)

    def _run(self, jobs: list[_Job]) -> None:
        sink = self.sink
        if sink is None:  # offer queues nothing without one
            return
        groups: dict[int, list[_Job]] = {}
        for job in jobs:
            groups.setdefault(id(job.model), []).append(job)
        for group in groups.values():
            model = group[0].model
            xs = [self._input(j) for j in group]
            probs = model.forward(xs[0] if len(xs) == 1 else np.concatenate(xs))
            start = 0
            for job, x in zip(group, xs):
                said = answers(probs[start:start + len(x)], model.meta)
                start += len(x)
                sink.shadow(job.images, job.champion, said, job.metas, champion_version=job.champion_version,
                                 challenger_version=model.model_id, classes=job.classes, dataset=job.dataset)
                with self._lock:
                    self.counts["shadowed"] += len(x)

    # ---- flush and close -------------------------------------------------------------------
    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything offered so far went to the sink (or failed); False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending <= 0, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Run what is queued, then stop the worker thread."""
        self._closed = True
        self.flush(timeout)
        if self._thread is not None:
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(None)
            self._thread.join(timeout)
