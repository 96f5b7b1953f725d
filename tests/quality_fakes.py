"""A fake review station for the quality tests: a small FastAPI app on 127.0.0.1 (a free port, in
a thread) that answers `GET /review/api/stats` with the §7 stats rows it is given, to the center's
station token only; `mode` makes it fail ("error": HTTP 503) or not answer in time ("hang")."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from configs.errors import UnauthorizedError
from configs.station_tokens import CENTER_SUBJECT, verify
from tests.waiting import wait_for

__all__ = ["CENTER_TOKEN", "FakeStation", "center_signed", "row"]

CENTER_TOKEN = "center-token-for-tests"


def row(product: str = "p1", model_version: str = "adc@1", **counts: Any) -> dict[str, Any]:
    """A stats row (review station §7) with zero counts but those given."""
    base = {"classified": 0, "automatic": 0, "review": 0, "audited_defect": 0, "overkill": 0,
            "audited_false_defect": 0, "escapes": 0, "backlog": 0, "oldest_age_s": 0.0}
    return {"product": product, "model_version": model_version, **base, **counts}


def center_signed(public_key_pem: Callable[[], str]) -> Callable[[str | None], bool]:
    """A token check as the real station's: signed by the center's key, subject `center`."""

    def accepts(token: str | None) -> bool:
        try:
            return verify(public_key_pem(), token or "").sub == CENTER_SUBJECT
        except UnauthorizedError:
            return False
    return accepts


class FakeStation:
    """The stats route of one site's review station. `rows`, `mode`, `site` and `accepts` (the
    token check; default: the token is CENTER_TOKEN) may change while it runs; `seen_tokens` holds
    the station token of every request."""

    def __init__(self, site: str, rows: list[dict[str, Any]] | None = None) -> None:
        self.site, self.rows, self.mode = site, list(rows or []), "ok"
        self.accepts: Callable[[str | None], bool] = lambda token: token == CENTER_TOKEN
        self.seen_tokens: list[str | None] = []
        self._release = asyncio.Event()
        app = FastAPI()

        @app.get("/review/api/stats")
        async def stats(request: Request) -> Any:
            token = request.headers.get("x-adcp-station-token")
            self.seen_tokens.append(token)
            if self.mode == "hang":  # a site that does not answer: held until the station stops
                try:
                    await asyncio.wait_for(self._release.wait(), timeout=30)
                except asyncio.TimeoutError:
                    pass
            if not self.accepts(token):
                return JSONResponse({"error": "UnauthorizedError", "detail": "no station token"}, status_code=401)
            if self.mode == "error":
                return JSONResponse({"error": "SiteError", "detail": "review DB unavailable"}, status_code=503)
            return {"site": self.site, "rows": self.rows}

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._release = asyncio.Event()
        self._loop.run_until_complete(self._server.serve(sockets=[self._sock]))

    def __enter__(self) -> FakeStation:
        self._thread.start()
        wait_for(lambda: self._server.started, 30, f"the fake station of {self.site}")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._release.set)
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self._sock.close()
