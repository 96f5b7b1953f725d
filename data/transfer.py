"""The transfer engine: copy an artifact between stores, verified, resumable and incremental.

Objects the destination already holds (right key and size) are skipped; the others are streamed
in parallel and land at their final key only once their bytes were verified at the destination
(how, per kind of store, is `data.object_copy`). Transient errors are retried with exponential
backoff, a hash mismatch is sent again, and the manifest is written last, so an interrupted copy
leaves no partial artifact and the next one sends only what is missing.

    python -m data.transfer --src URL --dst URL --ref KIND/NAME[@VERSION]

prints one line `ADCP_TRANSFER {...}` (the TransferResult); this is what a pull-mode Ray job
runs at a site, so the module imports nothing heavier than fsspec.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from typing import Any

from configs.errors import AdcpError, IntegrityError, NotFoundError
from configs.protocol import Marker, format_line
from data.artifacts import ArtifactRef, ArtifactStore
from data.manifests import require_same_content
from data.object_copy import Job, Mismatch, writer_for

__all__ = ["Job", "TransferError", "TransferResult", "copy_artifact", "main", "send_objects"]

#: Longest single wait between two attempts of one object, whatever `backoff_s` and the attempt.
MAX_BACKOFF_S = 30.0

Progress = Callable[[int, int], None]


class TransferError(AdcpError):
    """An object could not be copied between two stores (after its retries)."""

    http_status = 502


@dataclass
class TransferResult:
    """What a copy did. Bytes and objects are counted once per distinct object."""

    ref: str
    source: str
    destination: str
    bytes_sent: int = 0
    bytes_skipped: int = 0
    objects_sent: int = 0
    objects_skipped: int = 0
    objects_verified: int = 0
    objects_repaired: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["seconds"] = round(self.seconds, 4)
        return d


class _Cancelled(Exception):
    """Another object failed for good: stop this one between chunks."""


# --- pacing ------------------------------------------------------------------------------


def _wait(stop: threading.Event, seconds: float) -> bool:
    """Sleep up to `seconds`; True (at once) when the transfer is being stopped."""
    return stop.wait(seconds)


class _Pace:
    """Shared between workers: an optional bandwidth cap, and the stop signal."""

    def __init__(self, bytes_per_s: float | None, stop: threading.Event) -> None:
        self.rate = bytes_per_s if bytes_per_s and bytes_per_s > 0 else None
        self.stop = stop
        self.lock = threading.Lock()
        self.next = time.monotonic()

    def __call__(self, n: int) -> None:
        if self.stop.is_set():
            raise _Cancelled
        if self.rate is None:
            return
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next)
            self.next = start + n / self.rate
        if start > now and _wait(self.stop, start - now):
            raise _Cancelled


# --- the engine ---------------------------------------------------------------------------


def _transient(e: BaseException) -> bool:
    if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(e, (OSError, ConnectionError, TimeoutError)):  # s3fs maps S3 errors to OSError
        return True
    module = type(e).__module__.split(".")[0]
    if module in ("botocore", "aiobotocore", "aiohttp", "urllib3", "requests", "httpx"):
        status = (getattr(e, "response", None) or {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
        return status is None or status >= 500 or status in (408, 429)
    return False


class _Engine:
    def __init__(
        self,
        dst: ArtifactStore,
        *,
        chunk_bytes: int,
        check_existing: bool,
        verify_existing: bool,
        retries: int,
        backoff_s: float,
        on_progress: Progress | None,
        max_bytes_per_s: float | None,
        result: TransferResult,
    ) -> None:
        self.dst = dst
        self.chunk = max(1 << 16, int(chunk_bytes))
        self.check_existing = check_existing
        self.verify_existing = verify_existing
        self.retries = max(0, int(retries))
        self.backoff_s = max(0.0, float(backoff_s))
        self.on_progress = on_progress
        self.stop = threading.Event()
        self.pace = _Pace(max_bytes_per_s, self.stop)
        self.result = result
        self.lock = threading.Lock()
        self.write = writer_for(dst)

    def _count(self, **deltas: int) -> None:
        with self.lock:
            for name, n in deltas.items():
                setattr(self.result, name, getattr(self.result, name) + n)

    def _progress(self, nbytes: int, nobjects: int) -> None:
        if self.on_progress is not None and (nbytes or nobjects):
            self.on_progress(nbytes, nobjects)

    def run(self, job: Job) -> None:
        entry = job.entry
        repair = False
        last: BaseException | None = None
        for attempt in range(self.retries + 1):
            if self.stop.is_set():
                raise _Cancelled
            reported = 0

            def sent(n: int) -> None:
                nonlocal reported
                reported += n
                self._progress(n, 0)

            try:
                if self.check_existing and self.dst.has_object(entry):
                    if not self.verify_existing:
                        self._count(bytes_skipped=entry.size, objects_skipped=1)
                        self._progress(entry.size, 1)
                        return
                    if self.dst.object_digest(entry) == entry.sha256:
                        self._count(bytes_skipped=entry.size, objects_skipped=1, objects_verified=1)
                        self._progress(entry.size, 1)
                        return
                    repair = True
                self.write(job, self.dst, self.chunk, sent, self.pace)
                self._count(
                    bytes_sent=entry.size, objects_sent=1, objects_verified=1, objects_repaired=int(repair)
                )
                self._progress(0, 1)
                return
            except _Cancelled:
                raise
            except Mismatch as e:
                last = e
            except Exception as e:
                if not _transient(e):
                    mapped = self._permanent(job, e)
                    if mapped is e:
                        raise
                    raise mapped from e
                last = e
            self._progress(-reported, 0)  # the failed attempt's bytes are sent again
            if attempt < self.retries and _wait(self.stop, min(MAX_BACKOFF_S, self.backoff_s * 2**attempt)):
                raise _Cancelled
        raise self._exhausted(job, last)

    def _permanent(self, job: Job, e: Exception) -> Exception:
        entry = job.entry
        if isinstance(e, AdcpError):
            return e
        if isinstance(e, FileNotFoundError):
            return NotFoundError(
                f"{entry.path} (object {entry.key}) could not be copied to {self.dst.url}: {e}.",
                hint="When the source store lacks it, verify the artifact there with a repair store.",
            )
        if isinstance(e, PermissionError):
            return TransferError(
                f"Permission denied copying {entry.path} (object {entry.key}) to {self.dst.url}: {e}.",
                hint="Check the credentials (storage options) of both stores.",
            )
        return e

    def _exhausted(self, job: Job, last: BaseException | None) -> AdcpError:
        entry = job.entry
        attempts = self.retries + 1
        if isinstance(last, Mismatch):
            return IntegrityError(
                f"{entry.path} (object {entry.key}) did not arrive intact at {self.dst.url} in {attempts} "
                f"attempts: got {last}, expected sha256 {entry.sha256[:12]}..., {entry.size} bytes.",
                hint="The source copy may be damaged or changed: verify it and copy again.",
            )
        return TransferError(
            f"Copying {entry.path} (object {entry.key}) to {self.dst.url} failed {attempts} times: {last}.",
            hint="Check that both stores are reachable, then copy again: objects already copied are skipped.",
        )


def send_objects(
    jobs: Iterable[Job],
    dst: ArtifactStore,
    *,
    workers: int = 8,
    chunk_bytes: int = 8 << 20,
    check_existing: bool = True,
    verify_existing: bool = False,
    retries: int = 4,
    backoff_s: float = 0.2,
    on_progress: Progress | None = None,
    max_bytes_per_s: float | None = None,
    result: TransferResult | None = None,
) -> TransferResult:
    """Put each job's object into `dst`, verified, in parallel; returns the counts (in `result`
    when given). `check_existing=False` sends even objects that look present (a repair).

    Raises the first permanent failure (an AdcpError naming the object) after stopping the rest.
    """
    jobs = list(jobs)
    if result is None:
        result = TransferResult(ref="", source="", destination=dst.url)
    if not jobs:
        return result
    engine = _Engine(
        dst,
        chunk_bytes=chunk_bytes,
        check_existing=check_existing,
        verify_existing=verify_existing,
        retries=retries,
        backoff_s=backoff_s,
        on_progress=on_progress,
        max_bytes_per_s=max_bytes_per_s,
        result=result,
    )
    pool = ThreadPoolExecutor(max(1, min(int(workers), len(jobs))), thread_name_prefix="adcp-transfer")
    try:
        futures = [pool.submit(engine.run, job) for job in jobs]
        for future in as_completed(futures):
            future.result()
    except BaseException:
        engine.stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()
    return result


def copy_artifact(
    src: ArtifactStore,
    dst: ArtifactStore,
    ref: ArtifactRef,
    *,
    workers: int = 8,
    chunk_bytes: int = 8 << 20,
    verify_existing: bool = False,
    retries: int = 4,
    backoff_s: float = 0.2,
    on_plan: Callable[[int, int], None] | None = None,
    on_progress: Progress | None = None,
    max_bytes_per_s: float | None = None,
) -> TransferResult:
    """Copy `ref` (the latest version when it names none) from `src` to `dst`.

    `on_plan(total_bytes, total_objects)` is called once the manifest is read;
    `on_progress(bytes_delta, objects_delta)` from worker threads as bytes land (negative bytes
    when a failed attempt is rolled back), so the deltas add up to the plan. `max_bytes_per_s`
    caps the bandwidth (None: no cap). Raises NotFoundError when `src` lacks `ref`,
    IntegrityError when `dst` holds this version with other content or an object does not
    arrive intact, TransferError when an object cannot be sent; no manifest is written then.
    """
    started = time.perf_counter()
    manifest = src.manifest(ref)
    ref = manifest.ref
    existing = dst.manifest(ref) if dst.exists(ref) else None
    if existing is not None:
        require_same_content(existing, manifest, dst.url)
    unique = manifest.unique_objects()
    if on_plan is not None:
        on_plan(sum(e.size for e in unique), len(unique))
    result = TransferResult(ref=str(ref), source=src.url, destination=dst.url)
    send_objects(
        [Job(e, src.fs, src.path(e.key)) for e in unique],
        dst,
        workers=workers,
        chunk_bytes=chunk_bytes,
        verify_existing=verify_existing,
        retries=retries,
        backoff_s=backoff_s,
        on_progress=on_progress,
        max_bytes_per_s=max_bytes_per_s,
        result=result,
    )
    if existing is None:
        dst.write_manifest(manifest)
    result.seconds = time.perf_counter() - started
    return result


# --- command line -------------------------------------------------------------------------


def _options(text: str | None, flag: str) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as e:
        raise AdcpError(
            f"{flag} is not JSON: {e}.", allowed='a JSON object, e.g. {"key": "...", "secret": "..."}'
        ) from e
    if not isinstance(value, dict):
        raise AdcpError(f"{flag} must be a JSON object, got {type(value).__name__}.")
    return value


def list_main(argv: list[str]) -> int:
    """`python -m data.transfer list --store URL [--kind KIND]`: the complete artifacts of a store,
    printed as one `ADCP_ARTIFACTS <json>` line (what a pull-mode site's job reports to the center)."""
    p = argparse.ArgumentParser(prog="python -m data.transfer list", description="List complete artifacts.")
    p.add_argument("--store", required=True, help="store URL")
    p.add_argument("--store-options", help="fsspec storage options (JSON object)")
    p.add_argument("--kind", default=None, help="only this kind")
    args = p.parse_args(argv)
    try:
        store = ArtifactStore(args.store, _options(args.store_options, "--store-options"))
        rows = [{"kind": m.kind, "name": m.name, "version": m.version, "bytes": m.total_bytes,
                 "objects": len(m.objects), "created": m.created} for m in store.list(args.kind)]
    except AdcpError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_line(Marker.ARTIFACTS, {"artifacts": rows}), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["list"]:
        return list_main(argv[1:])
    p = argparse.ArgumentParser(
        prog="python -m data.transfer", description="Copy one artifact between stores."
    )
    p.add_argument("--src", required=True, help="source store URL")
    p.add_argument("--dst", required=True, help="destination store URL")
    p.add_argument("--ref", required=True, help="KIND/NAME or KIND/NAME@VERSION (latest when no version)")
    p.add_argument(
        "--verify-existing", action="store_true", help="rehash objects already there; resend bad ones"
    )
    p.add_argument("--src-options", help="fsspec storage options of the source (JSON object)")
    p.add_argument("--dst-options", help="fsspec storage options of the destination (JSON object)")
    p.add_argument("--workers", type=int, default=8, help="objects in flight (default 8)")
    p.add_argument("--chunk-mb", type=float, default=8.0, help="read/part size in MiB (default 8)")
    p.add_argument("--retries", type=int, default=4, help="attempts after the first, per object (default 4)")
    p.add_argument("--max-mbps", type=float, default=None, help="bandwidth cap in MB/s (default: none)")
    args = p.parse_args(argv)
    try:
        src = ArtifactStore(args.src, _options(args.src_options, "--src-options"))
        dst = ArtifactStore(args.dst, _options(args.dst_options, "--dst-options"))
        result = copy_artifact(
            src,
            dst,
            ArtifactRef.parse(args.ref),
            workers=args.workers,
            chunk_bytes=int(args.chunk_mb * (1 << 20)),
            verify_existing=args.verify_existing,
            retries=args.retries,
            max_bytes_per_s=args.max_mbps * 1e6 if args.max_mbps else None,
        )
    except AdcpError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_line(Marker.TRANSFER, result.to_dict()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

