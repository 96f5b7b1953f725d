"""A real image registry for tests: the CNCF distribution registry (`docker-registry`) on 127.0.0.1.

    from tests.registry_server import registry_server  # noqa: F401   (session-scoped pytest fixture)

    def test_x(registry_server):
        push_to_registry(archive, registry_server.address, "adcp/operator", "1")

Plain HTTP, no auth, filesystem storage in a temp dir removed at stop; the port is picked free
at start; the process group is stopped by pid at teardown. `RegistryServer.start()` / `.stop()`
work without pytest too.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.waiting import wait_for

#: Debian's package installs the registry as `docker-registry`; upstream names it `registry`.
BINARY_NAMES = ("docker-registry", "registry")


def registry_binary() -> str:
    for name in BINARY_NAMES:
        found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
        if found:
            return found
    pytest.skip("the distribution registry (Debian package docker-registry) is not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RegistryServer:
    """A running registry: `address` is HOST:PORT (what skopeo's docker:// names take)."""

    address: str = ""
    workdir: Path | None = None
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def config(self, port: int) -> dict:
        assert self.workdir is not None
        return {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.workdir / "data")},
                "delete": {"enabled": True},
            },
            "http": {"addr": f"127.0.0.1:{port}"},
        }

    def start(self, timeout_s: float = 30.0) -> RegistryServer:
        binary = registry_binary()
        self.workdir = Path(tempfile.mkdtemp(prefix="adcp-registry-"))
        (self.workdir / "data").mkdir()
        port = _free_port()
        config = self.workdir / "config.yml"
        config.write_text(yaml.safe_dump(self.config(port)))
        with open(self.workdir / "registry.log", "wb") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [binary, "serve", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                start_new_session=True,
            )
        self.address = f"127.0.0.1:{port}"
        try:
            wait_for(self._ready, timeout_s, f"the registry at {self.url}/v2/", 0.1)
        except BaseException:
            tail = (self.workdir / "registry.log").read_text(errors="replace")[-3000:]
            self.stop()
            raise RuntimeError(f"docker-registry did not come up; log tail:\n{tail}") from None
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited with {self.proc.returncode}")
        return httpx.get(f"{self.url}/v2/", timeout=2.0).status_code == 200

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        self.proc = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> RegistryServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@pytest.fixture(scope="session")
def registry_server():
    """One registry for the whole session; use a fresh repository name per test."""
    with RegistryServer() as server:
        yield server
