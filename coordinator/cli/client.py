"""The CLI's client of the coordinator API, and how it finds the coordinator, the way kubectl
finds its apiserver:

1. `ADCP_API` and `ADCP_TOKEN` (or `ADCP_TOKEN_FILE`) in the environment win (`ADCP_CA_FILE` for
   a coordinator with a private CA);
2. else a context named with `--context`, or the current one, saved by `adcp login` in
   `~/.adcp/config.yaml` (mode 0600; `$ADCP_CONFIG` names another file) — unless `--home` was
   given on the command line, which names a local coordinator explicitly;
3. else the coordinator `adcp up` started under `$ADCP_HOME` (default `~/.adcp`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from configs.errors import (
    AdcpError,
    ConfigError,
    ForbiddenError,
    InputError,
    IntegrityError,
    NotFoundError,
    SiteError,
    UnauthorizedError,
)
from configs.yaml_files import read_yaml

__all__ = ["Coordinator", "CoordinatorClient", "config_path", "load_config", "resolve", "save_config"]

_ERRORS: dict[int, type[AdcpError]] = {400: InputError, 401: UnauthorizedError, 403: ForbiddenError,
                                       404: NotFoundError, 409: IntegrityError, 422: InputError}


@dataclass(frozen=True)
class Coordinator:
    """Where the coordinator is and how to authenticate; `source` says how it was found."""

    url: str
    token: str
    source: str
    ca_file: str | None = None


def config_path() -> Path:
    return Path(os.environ.get("ADCP_CONFIG") or Path.home() / ".adcp" / "config.yaml")


def load_config() -> dict[str, Any]:
    path = config_path()
    if not path.exists():
        return {"contexts": {}, "current": None}
    doc = read_yaml(path, "Client config", hint="Fix or delete it, then `adcp login` again.") or {}
    if not isinstance(doc, dict) or not isinstance(doc.get("contexts", {}), dict):
        raise ConfigError(f"{path} is not an adcp client config.", hint="Delete it and `adcp login` again.")
    doc.setdefault("contexts", {})
    doc.setdefault("current", None)
    return doc


def save_config(doc: dict[str, Any]) -> Path:
    """Write the client config, readable by its owner only (it names token files)."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=True)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def _read_token_file(path: str, what: str) -> str:
    try:
        token = Path(path).expanduser().read_text().strip()
    except OSError as e:
        raise ConfigError(f"Cannot read the token file {path} ({what}): {e.strerror}.") from e
    if not token:
        raise ConfigError(f"The token file {path} ({what}) is empty.")
    return token


def resolve(home: Path, *, home_given: bool, context: str | None = None) -> Coordinator:
    """The coordinator this CLI call talks to (see the module docstring for the order)."""
    env_url = os.environ.get("ADCP_API")
    if env_url:
        token = os.environ.get("ADCP_TOKEN")
        if not token and os.environ.get("ADCP_TOKEN_FILE"):
            token = _read_token_file(os.environ["ADCP_TOKEN_FILE"], "ADCP_TOKEN_FILE")
        if not token:
            raise ConfigError("ADCP_API is set but neither ADCP_TOKEN nor ADCP_TOKEN_FILE is.",
                              hint="Set one of them to your token (see `adcp user token`).")
        return Coordinator(env_url.rstrip("/"), token, "environment (ADCP_API)", os.environ.get("ADCP_CA_FILE"))
    if context or not home_given:
        doc = load_config()
        name = context or doc.get("current")
        if context and context not in doc["contexts"]:
            raise NotFoundError(f"No context {context}.", allowed=", ".join(doc["contexts"]) or "none yet",
                                hint="Save one with `adcp login URL --token-file F --name NAME`.")
        if name and name in doc["contexts"]:
            c = doc["contexts"][name]
            return Coordinator(c["api"].rstrip("/"), _read_token_file(c["token_file"], f"context {name}"),
                               f"context {name} ({config_path()})", c.get("ca_file"))
    from coordinator.process import read_token, running

    info = running(home)
    if info is None:
        raise SiteError(f"No coordinator is running under {home}.",
                        hint="Start one with `adcp up`, or name one with `adcp login URL --token-file F` "
                        "or ADCP_API + ADCP_TOKEN.")
    return Coordinator(info["url"], read_token(home), f"local coordinator under {home}")


def _error(r: httpx.Response) -> AdcpError:
    try:
        body = r.json()
    except ValueError:
        body = {"detail": r.text[:500]}
    if not isinstance(body, dict):
        body = {"detail": body}
    detail = body.get("detail") or body.get("error") or f"HTTP {r.status_code}"
    if body.get("problems"):
        detail = "; ".join(f"{p['where']}: {p['problem']}" for p in body["problems"])
    allowed = body.get("allowed")
    if r.status_code == 403 and body.get("roles_allowed"):
        allowed = "roles " + ", ".join(body["roles_allowed"])
    error = _ERRORS.get(r.status_code, SiteError if r.status_code >= 500 else AdcpError)
    extra = {k: v for k, v in body.items() if k not in ("detail", "allowed", "hint", "error", "problems")}
    return error(str(detail), allowed=allowed, hint=body.get("hint"), **extra)


class CoordinatorClient:
    """Calls `/api/v1/...` of one coordinator; 4xx/5xx become AdcpErrors with the body's words."""

    def __init__(self, coordinator: Coordinator, timeout_s: float = 300) -> None:
        self.coordinator = coordinator
        verify: Any = coordinator.ca_file or True
        self.http = httpx.Client(base_url=coordinator.url + "/api/v1", timeout=timeout_s, verify=verify,
                                 headers={"Authorization": f"Bearer {coordinator.token}"})

    @property
    def url(self) -> str:
        return self.coordinator.url

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            r = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise SiteError(f"Cannot reach the coordinator at {self.url}: {e}.",
                            hint=f"Found it through {self.coordinator.source}; is it running?") from e
        if r.status_code >= 400:
            raise _error(r)
        return r

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        r = self.request(method, path, **kwargs)
        if r.status_code == 204 or not r.content:
            return None
        return r.text if r.headers.get("content-type", "").startswith("text/plain") else r.json()

    def wait_task(self, task_id: str, *, timeout_s: float, on_update: Callable[[dict[str, Any]], None],
                  poll_s: float = 0.3) -> dict[str, Any]:
        """Poll a task until it ends (or `timeout_s`); `on_update(task)` after each poll."""
        import time

        deadline = time.monotonic() + timeout_s
        while True:
            task = self.call("GET", f"/tasks/{task_id}")
            on_update(task)
            if task["state"] != "running":
                return task
            if time.monotonic() > deadline:
                raise SiteError(f"Task {task_id} still running after {timeout_s:.0f} s; it goes on in the coordinator.",
                                hint=f"Re-attach with `adcp attach {task_id}`.")
            time.sleep(poll_s)  # poll interval of a deadline-bounded wait

    def close(self) -> None:
        self.http.close()

