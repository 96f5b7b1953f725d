"""This machine's ports and processes, as local sites need them: free ports, worker-port blocks
that no running Ray uses, and a process table read from Linux's /proc.

/proc rather than psutil: psutil is only vendored inside Ray (`ray/thirdparty_files`), and
importing Ray to get it would cost a second per CLI call. Local sites run on Linux only.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from configs.errors import SiteError


def free_ports(n: int, exclude: set[int] | frozenset[int] = frozenset()) -> list[int]:
    """`n` distinct ports that are free now on every local address, none of them in `exclude`.

    Binds the wildcard address rather than 127.0.0.1: Ray's GCS and raylet listen on all
    addresses, so a port must be free on all of them. All sockets stay open until every port is
    picked, so the ports differ from each other.
    """
    socks: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind(("", 0))
            port = s.getsockname()[1]
            if port not in exclude:
                ports.append(port)
    finally:
        for s in socks:
            s.close()
    return ports


def bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def pick_worker_range(
    claimed: list[tuple[int, int]],
    *,
    size: int,
    lo: int,
    hi: int,
    is_free: Callable[[int], bool] = bindable,
) -> tuple[int, int]:
    """A random block of `size` ports in [lo, hi) that overlaps no claimed range and is all free.

    Raises SiteError when every block is taken.
    """
    blocks = [(s, s + size - 1) for s in range(lo, hi - size + 1, size)]
    open_blocks = [b for b in blocks if not any(b[0] <= c[1] and c[0] <= b[1] for c in claimed)]
    secrets.SystemRandom().shuffle(open_blocks)
    for first, last in open_blocks:
        if all(is_free(p) for p in range(first, last + 1)):
            return first, last
    raise SiteError(
        f"No free block of {size} worker ports between {lo} and {hi}.",
        hint="Stop sites you no longer need (`adcp site down NAME`).",
    )


def port_options(args: list[str]) -> dict[str, int]:
    """Port options in a command line (`--x-port=N`, `--x_port N`), keyed with dashes."""
    found: dict[str, int] = {}
    for i, arg in enumerate(args):
        if not arg.startswith("-"):
            continue
        key, sep, value = arg.lstrip("-").partition("=")
        if not sep and i + 1 < len(args):
            value = args[i + 1]
        key = key.replace("_", "-")
        if key.endswith("port") and value.isdigit():
            found[key] = int(value)
    return found


def claimed_by_ray() -> tuple[set[int], list[tuple[int, int]]]:
    """Ports and worker-port ranges named in the command lines of Ray processes running now."""
    ports: set[int] = set()
    ranges: list[tuple[int, int]] = []
    for proc in processes():
        if not any("ray" in a for a in proc.cmdline[:3]):
            continue
        opts = port_options(proc.cmdline)
        if "min-worker-port" in opts and "max-worker-port" in opts:
            ranges.append((opts.pop("min-worker-port"), opts.pop("max-worker-port")))
        ports.update(opts.values())
    return ports, ranges


@dataclass(frozen=True)
class Proc:
    """One process as /proc shows it. `start_ticks` (clock ticks after boot) tells a process from
    a later one that reuses its pid."""

    pid: int
    state: str  # "Z" is a zombie: dead, waiting to be reaped
    pgid: int
    sid: int
    start_ticks: int
    cmdline: list[str]

    def environ(self) -> dict[str, str]:
        """The process's environment; empty if it is gone or not ours to read."""
        try:
            with open(f"/proc/{self.pid}/environ", "rb") as f:
                raw = f.read()
        except OSError:
            return {}
        pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
        return {k: v for k, _, v in pairs}


def read_proc(pid: int) -> Proc | None:
    """The process `pid`, or None if there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return None
    # The command name (field 2) sits in parentheses and may hold spaces and parentheses itself.
    rest = stat[stat.rindex(")") + 2 :].split()
    return Proc(pid, rest[0], int(rest[2]), int(rest[3]), int(rest[19]), cmdline)


def processes() -> Iterator[Proc]:
    """Every process that is alive now, zombies excluded."""
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            proc = read_proc(int(entry.name))
            if proc is not None and proc.state != "Z":
                yield proc


def _signal(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            continue


def terminate(
    find: Callable[[], list[Proc]],
    leader: int | None,
    timeout_s: float,
    *,
    reap: Callable[[], None] = lambda: None,
    poll_s: float = 0.25,
) -> tuple[bool, list[Proc]]:
    """Stop the processes `find` returns: SIGTERM, wait, SIGKILL, wait.

    SIGTERM goes to `leader` alone when given (it stops the rest), else to all. SIGKILL comes
    when the grace time (`timeout_s` less up to 5 s kept for the kill) runs out: to the leader's
    process group and to every process still found. `reap` runs on each poll to collect zombies.
    Returns (whether any process was found, the processes that survived).
    """
    start = time.monotonic()

    def wait(deadline: float) -> list[Proc]:
        while True:
            reap()
            left = find()
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(poll_s)

    left = find()
    if not left:
        reap()
        return False, []
    _signal([leader] if leader else [p.pid for p in left], signal.SIGTERM)
    left = wait(start + max(timeout_s - min(5.0, timeout_s / 3), 0))
    if left:
        if leader and any(p.pgid == leader for p in left):
            try:
                os.killpg(leader, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        _signal([p.pid for p in left], signal.SIGKILL)
        left = wait(max(start + timeout_s, time.monotonic() + 5))
    return True, left
