"""A fake review station for the center's tests: the §7 center routes the verdict sync calls
(`/review/api/verdicts`, `/items`, `/images/{sha}`, `/disabled`, `/annotations`), checking the
center's station token, served by uvicorn on 127.0.0.1 in a thread.

    with serve_station(FakeStation(public_pem, "fab-a", store_dir)) as st:
        st.verdict(b"png...", "scratch", reviewer="ann")
        ... a site whose gateway serve URL is st.url ...
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse, Response

from configs.errors import UnauthorizedError
from configs.station_tokens import CENTER_SUBJECT, read_disabled, verify
from tests.waiting import wait_for

__all__ = ["FakeStation", "serve_station"]

_T0 = datetime(2026, 12, 1, 8, 0, tzinfo=timezone.utc)


class FakeStation:
    """The station's state: events (with seq), images, what the center sent; failure switches."""

    def __init__(self, public_pem: str, site: str, store_dir: Path | None = None) -> None:
        self.public_pem, self.site, self.store_dir = public_pem, site, store_dir
        self.events: list[dict[str, Any]] = []
        self.items: list[dict[str, Any]] = []
        self.images: dict[str, bytes] = {}
        self.disabled: list[list[str]] = []  # each list the center pushed
        self.loaded: list[dict[str, Any]] = []  # bodies of POST /annotations
        self.fail_after_pages: int | None = None  # answer 500 once this many verdict pages were served
        self.pages_served = 0
        self.image_requests = 0
        self.url = ""
        self._lock = threading.Lock()
        self._clock = 0

    # --- what reviewers did ----------------------------------------------------------------

    def verdict(self, image: bytes, label: str, *, reviewer: str = "ann", role: str = "reviewer",
                dataset: str = "aoi", minutes: float | None = None, model_version: str = "adc@3",
                why: str = "low_confidence", decision: str = "review") -> dict[str, Any]:
        sha = hashlib.sha256(image).hexdigest()
        self.images[sha] = image
        uri = ""
        if self.store_dir is not None:
            path = self.store_dir / "review" / "objects" / "sha256" / sha[:2] / sha
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(image)
            uri = path.as_uri()
        vid = uuid.uuid4().hex
        item = {"id": uuid.uuid4().hex, "image_sha256": sha, "image_uri": uri, "site": self.site, "product": "p1",
                "aoi_machine": "aoi-7", "panel_id": "PNL-1", "model_version": model_version, "dataset": dataset,
                "predicted": "particle", "confidence": 0.41, "top3": [], "decision": decision, "why": why,
                "created_at": _T0.isoformat(), "state": "done", "second_opinion": False}
        self.items.append(item)
        return self._add({"kind": "verdict", "event_id": vid, "verdict_id": vid, "item_id": item["id"],
                          "image_sha256": sha, "image_uri": uri, "label": label, "reviewer": reviewer, "role": role,
                          "product": "p1", "model_version": model_version, "dataset": dataset,
                          "predicted": "particle", "decision": decision, "why": why, "aoi_machine": "aoi-7",
                          "panel_id": "PNL-1"}, minutes)

    def undo(self, verdict: dict[str, Any]) -> dict[str, Any]:
        return self._add({**verdict, "kind": "undo", "event_id": uuid.uuid4().hex,
                          "verdict_id": verdict["verdict_id"]}, None)

    def _add(self, event: dict[str, Any], minutes: float | None) -> dict[str, Any]:
        with self._lock:
            self._clock += 1
            at = _T0 + timedelta(minutes=minutes if minutes is not None else self._clock)
            event = {**event, "seq": len(self.events) + 1, "site": self.site, "at": at.isoformat()}
            self.events.append(event)
        return event

    # --- the routes ------------------------------------------------------------------------

    def _check(self, token: str | None) -> None:
        claims = verify(self.public_pem, token or "")
        if claims.sub != CENTER_SUBJECT and claims.role != "admin":
            raise UnauthorizedError("center routes need the center's token")

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.exception_handler(UnauthorizedError)
        async def _unauthorized(request: Request, exc: UnauthorizedError) -> JSONResponse:
            return JSONResponse(exc.to_json(), status_code=401)

        @app.get("/review/api/verdicts")
        def verdicts(after: int = Query(0), limit: int = Query(1000),
                     x_adcp_station_token: str | None = Header(None)) -> Any:
            self._check(x_adcp_station_token)
            with self._lock:
                if self.fail_after_pages is not None and self.pages_served >= self.fail_after_pages:
                    return JSONResponse({"error": "SiteError", "detail": "database is locked"}, status_code=500)
                page = [e for e in self.events if e["seq"] > after][:limit]
                self.pages_served += 1
            return {"events": page, "last_seq": page[-1]["seq"] if page else after}

        @app.get("/review/api/items")
        def items(state: str | None = None, limit: int = 100,
                  x_adcp_station_token: str | None = Header(None)) -> Any:
            self._check(x_adcp_station_token)
            return {"items": [i for i in self.items if state in (None, i["state"])][:limit]}

        @app.get("/review/api/images/{sha}")
        def image(sha: str, x_adcp_station_token: str | None = Header(None)) -> Any:
            self._check(x_adcp_station_token)
            self.image_requests += 1
            if sha not in self.images:
                return JSONResponse({"error": "NotFoundError", "detail": f"no image {sha}"}, status_code=404)
            return Response(self.images[sha], media_type="image/png")

        @app.put("/review/api/disabled")
        def disabled(body: dict[str, Any], x_adcp_station_token: str | None = Header(None)) -> Any:
            self._check(x_adcp_station_token)
            names, _ = read_disabled(self.public_pem, body["token"])
            self.disabled.append(names)
            return {"disabled": len(names)}

        @app.post("/review/api/annotations")
        def annotations(body: dict[str, Any], x_adcp_station_token: str | None = Header(None)) -> Any:
            self._check(x_adcp_station_token)
            self.loaded.append(body)
            return {"rows": 1}

        return app


@contextlib.contextmanager
def serve_station(station: FakeStation) -> Iterator[FakeStation]:
    """Serve `station` on a free port of 127.0.0.1 until the block ends; `station.url` is its base."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(station.app(), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, timeout_s=10, what="the fake station to start", poll_s=0.02)
        station.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        yield station
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
