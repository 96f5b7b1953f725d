"""A real PostgreSQL server for tests: Debian's `postgresql` (15), `initdb` + `pg_ctl` in a temp dir.

    from tests.postgres_server import postgres_server, postgres_url  # noqa: F401   (pytest fixtures)

    def test_x(postgres_url):          # a fresh, empty database per test
        db = ReviewDB(postgres_url)

The server listens on a free port on 127.0.0.1 only (its Unix socket in the temp dir), trusts
local connections, and is stopped by pid at teardown (`pg_ctl stop -m fast`, then the postmaster's
pid from `postmaster.pid` is killed if it is still alive). PostgreSQL refuses to run as root, so
as root every server command runs as the Debian package's `postgres` user, which owns the temp dir.
`PostgresServer.start()` / `.stop()` work without pytest too.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.waiting import wait_for

__all__ = ["PostgresServer", "pg_bin", "postgres_server", "postgres_url"]

SUPERUSER = "adcp"
SERVER_USER = "postgres"  # created by Debian's postgresql-common


def pg_bin(tool: str) -> str:
    """Path of a PostgreSQL server binary (newest installed major version), or skip the test."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name)
                      if p.parent.name.isdigit() else 0)
    for bindir in reversed(versions):
        if (bindir / tool).exists():
            return str(bindir / tool)
    found = shutil.which(tool)
    if not found:
        pytest.skip(f"PostgreSQL's {tool} is not installed (apt-get install postgresql)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    """Whether pid runs (a zombie waiting to be reaped counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@dataclass
class PostgresServer:
    """A running PostgreSQL cluster in a temp dir; `url(db)` is a SQLAlchemy URL for one database."""

    port: int = 0
    workdir: Path | None = None

    @property
    def datadir(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "data"

    def _as_server_user(self) -> list[str]:
        return ["runuser", "-u", SERVER_USER, "--"] if os.geteuid() == 0 else []

    def _run(self, *cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run([*self._as_server_user(), *cmd], capture_output=True, text=True, timeout=120,
                              cwd=self.workdir)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def start(self, timeout_s: float = 60.0) -> PostgresServer:
        self.workdir = Path(tempfile.mkdtemp(prefix="adcp-pg-"))
        if os.geteuid() == 0:
            user = pwd.getpwnam(SERVER_USER)
            os.chown(self.workdir, user.pw_uid, user.pw_gid)
        self.port = _free_port()
        done = self._run(pg_bin("initdb"), "-D", str(self.datadir), "-U", SUPERUSER, "-A", "trust",
                         "-E", "UTF8", "--locale=C.UTF-8", "--no-sync")
        if done.returncode != 0:
            self.stop()
            raise RuntimeError(f"initdb failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        options = f"-h 127.0.0.1 -p {self.port} -k {self.workdir} -c fsync=off -c max_connections=100"
        done = self._run(pg_bin("pg_ctl"), "-D", str(self.datadir), "-l", str(self.workdir / "postgres.log"),
                         "-o", options, "-W", "start")
        if done.returncode != 0:
            self.stop()
            raise RuntimeError(f"pg_ctl start failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        try:
            wait_for(self._accepts, timeout_s, f"PostgreSQL on 127.0.0.1:{self.port}", 0.1)
        except BaseException:
            log = self.workdir / "postgres.log"
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            self.stop()
            raise RuntimeError(f"PostgreSQL did not come up; log tail:\n{tail}") from None
        return self

    def _connect(self, database: str = "postgres"):
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user=SUPERUSER, dbname=database,
                               connect_timeout=5, autocommit=True)

    def _accepts(self) -> bool:
        with self._connect() as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)

    def new_database(self) -> str:
        """Create a fresh, empty database; its SQLAlchemy URL."""
        name = "t_" + uuid.uuid4().hex[:16]
        with self._connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def _postmaster_pid(self) -> int | None:
        pidfile = self.datadir / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int(pidfile.read_text().splitlines()[0])
        return None

    def stop(self) -> None:
        if self.workdir is None:
            return
        pid = self._postmaster_pid()
        if pid is not None:
            self._run(pg_bin("pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w", "-t", "30", "stop")
            if _alive(pid):  # still there after the fast stop: kill the postmaster by pid
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                wait_for(lambda: not _alive(pid), 30, f"the postmaster (pid {pid}) to exit", 0.05)
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@pytest.fixture(scope="session")
def postgres_server():
    """One PostgreSQL server for the whole session."""
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A fresh, empty database on the session's PostgreSQL server (SQLAlchemy URL)."""
    return postgres_server.new_database()
