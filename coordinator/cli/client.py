"""The CLI's client of the running coordinator, for what only the coordinator process does
(runs jobs that outlive the CLI). Reads the coordinator's address and API token from the home."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from configs.errors import AdcpError, InputError, NotFoundError, SiteError
from coordinator.center.core import read_token
from coordinator.server import running

_ERRORS = {400: InputError, 404: NotFoundError, 422: InputError}


class CoordinatorClient:
    def __init__(self, home: Path, timeout_s: float = 120) -> None:
        info = running(home)
        if info is None:
            raise SiteError("The coordinator is not running.", hint="Start it with `adcp up`.")
        self.http = httpx.Client(base_url=info["url"] + "/api/v1", timeout=timeout_s,
                                 headers={"Authorization": f"Bearer {read_token(home)}"})

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            r = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise SiteError(f"Cannot reach the coordinator: {e}.", hint="Check `adcp status`.") from e
        if r.status_code >= 400:
            try:
                body = r.json()
            except ValueError:
                body = {"detail": r.text}
            detail = body.get("detail")
            if body.get("problems"):
                detail = "; ".join(f"{p['where']}: {p['problem']}" for p in body["problems"])
            error = _ERRORS.get(r.status_code, AdcpError)
            raise error(str(detail), allowed=body.get("allowed"), hint=body.get("hint"))
        return r.text if r.headers.get("content-type", "").startswith("text/plain") else r.json()

    def close(self) -> None:
        self.http.close()
