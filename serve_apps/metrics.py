"""The ADC app's own metrics, through Ray's metrics API (`ray.util.metrics`), so that they appear
on the site's Ray metrics endpoint (and in a site Prometheus scraping it) next to Ray's own.

Ray exports an application metric named `adc_requests` as `ray_adc_requests` (counters gain
`_total`, histograms `_bucket`/`_sum`/`_count`); `EXPORTED` lists the names as they appear there,
which the coordinator's collector and `monitoring/grafana-adc.json` rely on.

`AppMetrics` creates its Ray metric objects lazily, on the first record, so building it (and the
HTTP app that holds it) needs no Ray; the Serve replica passes one, unit tests pass none.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["EXPORTED", "LATENCY_BOUNDARIES_MS", "AppMetrics", "RecorderMetrics", "route_of"]

#: Histogram bucket upper bounds (ms): a one-image request takes ~5-50 ms, a 256-image batch ~1 s.
LATENCY_BOUNDARIES_MS = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000]

#: Name in `ray.util.metrics` -> the name on the Prometheus endpoint (Ray adds the `ray_` prefix).
EXPORTED = {
    "adc_requests": "ray_adc_requests_total",
    "adc_images": "ray_adc_images_total",
    "adc_decisions": "ray_adc_decisions_total",
    "adc_latency_ms": "ray_adc_latency_ms",
    "adc_model_info": "ray_adc_model_info",
    # The review recorder (serve_apps.recorder): images queued for review, failures, drops.
    "adcp_review_recorded": "ray_adcp_review_recorded_total",
    "adcp_review_record_errors": "ray_adcp_review_record_errors_total",
    "adcp_review_dropped": "ray_adcp_review_dropped_total",
}

_ROUTES = ("/v1/classify/batch", "/v1/classify", "/v2/models")


def route_of(path: str) -> str:
    """A bounded route tag for a request path (no ids, no versions): one of the inference routes,
    or "other"."""
    for route in _ROUTES:
        if path == route or path.startswith(route + "/") or (route == "/v2/models" and path.startswith(route)):
            return "/v2/infer" if route == "/v2/models" else route
    return "other"


class AppMetrics:
    """Counters, a latency histogram and a model-version gauge of one replica."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._m: dict[str, Any] | None = None
        self._model: str | None = None

    def _metrics(self) -> dict[str, Any]:
        with self._lock:
            if self._m is None:
                from ray.util import metrics as rm

                self._m = {
                    "requests": rm.Counter("adc_requests",
                                           description="HTTP requests to the ADC app by route and status.",
                                           tag_keys=("route", "status")),
                    "images": rm.Counter("adc_images", description="Images in ADC requests by route and status.",
                                         tag_keys=("route", "status")),
                    "decisions": rm.Counter("adc_decisions", description="ADC answers by class and decision "
                                            "(defect / false_defect are automatic, review goes to a person).",
                                            tag_keys=("class", "decision")),
                    "latency": rm.Histogram("adc_latency_ms", description="ADC request latency in the replica (ms).",
                                            boundaries=LATENCY_BOUNDARIES_MS, tag_keys=("route",)),
                    "model": rm.Gauge("adc_model_info", description="1 for the model version the replica serves.",
                                      tag_keys=("model",)),
                }
            return self._m

    def request(self, path: str, status: int, seconds: float, images: int) -> None:
        """Count one finished request to `path` that answered `status` with `images` images."""
        route = route_of(path)
        if route == "other":
            return  # health checks and metadata: not inference traffic
        m = self._metrics()
        tags = {"route": route, "status": str(status)}
        m["requests"].inc(1, tags=tags)
        if images:
            m["images"].inc(images, tags=tags)
        m["latency"].observe(seconds * 1000.0, tags={"route": route})
        self.refresh()

    def answers(self, answers: Iterable[Mapping[str, Any]]) -> None:
        """Count each answer by its class and decision."""
        counts: dict[tuple[str, str], int] = {}
        for a in answers:
            key = (str(a.get("class")), str(a.get("decision")))
            counts[key] = counts.get(key, 0) + 1
        if not counts:
            return
        m = self._metrics()
        for (cls, decision), n in counts.items():
            m["decisions"].inc(n, tags={"class": cls, "decision": decision})

    def model(self, model_id: str | None) -> None:
        """Set the served model version (the previous one drops to 0)."""
        if model_id == self._model:
            return
        m = self._metrics()
        if self._model is not None:
            m["model"].set(0, tags={"model": self._model})
        if model_id is not None:
            m["model"].set(1, tags={"model": model_id})
        self._model = model_id

    def refresh(self) -> None:
        """Record the model gauge again. Ray exports a gauge only in the export windows in which it
        was recorded (Serve re-records its own gauges periodically for the same reason), so a value
        set once at model load would vanish from the metrics endpoint; the replica calls this from
        its periodic health check and every request does too."""
        if self._model is not None:
            self._metrics()["model"].set(1, tags={"model": self._model})


class RecorderMetrics:
    """The review recorder's counters on the Ray metrics endpoint (`ray_adcp_review_*_total`),
    created on first use; `serve_apps.recorder.Recorder` takes any object with these methods."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._m: dict[str, Any] | None = None

    def _counter(self, key: str) -> Any:
        with self._lock:
            if self._m is None:
                from ray.util import metrics as rm

                self._m = {
                    "recorded": rm.Counter("adcp_review_recorded", description="Decisions written to the site "
                                           "review queue (image in the site store, row in the review DB)."),
                    "errors": rm.Counter("adcp_review_record_errors", description="Decisions the review "
                                         "recorder failed to write (store or DB errors)."),
                    "dropped": rm.Counter("adcp_review_dropped", description="Decisions not recorded because "
                                          "the recorder's queue was full."),
                }
            return self._m[key]

    def recorded(self, n: int) -> None:
        if n:
            self._counter("recorded").inc(n)

    def errors(self, n: int) -> None:
        if n:
            self._counter("errors").inc(n)

    def dropped(self, n: int) -> None:
        if n:
            self._counter("dropped").inc(n)
