"""Copy one object into an artifact store, verified at the destination before it takes its
final key: the per-store ways of doing it, used by the transfer engine (`data.transfer`).

- local folder: copied to `<key>.part-<id>` (in the kernel when the source is local too), hashed
  from the destination file, then renamed into place;
- S3 (servers that check `x-amz-checksum-sha256`): sent straight to the final key with the
  expected sha256, so that the server itself refuses bytes that do not match;
- anything else (memory://, S3 without checksum support): a temporary key, read back and hashed,
  then moved.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import os
import threading
import uuid
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from data.artifacts import ArtifactStore
from data.manifests import ObjectEntry, fs_digest, is_local, local_digest

__all__ = ["S3_MIN_PART", "Job", "Mismatch", "Pacer", "Writer", "writer_for"]

#: S3's smallest multipart part (except the last one).
S3_MIN_PART = 5 << 20

#: Called with the bytes about to be sent; sleeps to keep a bandwidth cap, raises to stop.
Pacer = Callable[[int], None]


@dataclass(frozen=True)
class Job:
    """One object to put into a store: its entry and where its bytes are read from."""

    entry: ObjectEntry
    src_fs: Any
    src_path: str


class Mismatch(Exception):
    """The bytes that arrived do not hash to the object's sha256 (or have another size)."""

    def __init__(self, sha256: str, size: int) -> None:
        super().__init__(f"sha256 {sha256[:12]}..., {size} bytes")
        self.sha256 = sha256
        self.size = size


# --- reading a source ---------------------------------------------------------------------


class _Source:
    """Sequential reads of one object: a plain fd for local files, ranged reads elsewhere."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.size = job.entry.size
        self.offset = 0
        self.fd = os.open(job.src_path, os.O_RDONLY) if is_local(job.src_fs) else None

    def read(self, n: int) -> bytes:
        if self.fd is not None:
            return os.read(self.fd, n)
        end = min(self.size, self.offset + n)
        if end <= self.offset:
            return b""
        blob = self.job.src_fs.cat_file(self.job.src_path, start=self.offset, end=end)
        self.offset += len(blob)
        return blob

    def read_full(self, n: int) -> bytes:
        """Up to `n` bytes, fewer only at the end of the object."""
        parts, got = [], 0
        while got < n:
            blob = self.read(n - got)
            if not blob:
                break
            parts.append(blob)
            got += len(blob)
        return b"".join(parts)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> _Source:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_KERNEL_COPY = hasattr(os, "copy_file_range")


def _copy_fd(src: int, dst: int, n: int) -> int:
    """Copy up to `n` bytes between the current offsets of two fds; 0 at end of file."""
    global _KERNEL_COPY
    if _KERNEL_COPY:
        try:
            return os.copy_file_range(src, dst, n)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM):
                raise
            _KERNEL_COPY = False  # e.g. an old kernel or a filesystem without it: plain reads
    blob = os.read(src, n)
    view, done = memoryview(blob), 0
    while done < len(blob):
        done += os.write(dst, view[done:])
    return len(blob)


def _part_path(final: str) -> str:
    return f"{final}.part-{uuid.uuid4().hex[:12]}"


def _check(entry: ObjectEntry, sha256: str, size: int) -> None:
    if sha256 != entry.sha256 or size != entry.size:
        raise Mismatch(sha256, size)


def _write_local(job: Job, dst: ArtifactStore, chunk: int, sent: Callable[[int], None], pace: Pacer) -> None:
    entry = job.entry
    final = dst.path(entry.key)
    os.makedirs(os.path.dirname(final), exist_ok=True)
    tmp = _part_path(final)
    try:
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            with _Source(job) as src:
                while True:
                    if src.fd is not None:
                        n = _copy_fd(src.fd, out, chunk)
                    else:
                        blob = src.read(chunk)
                        n = len(blob)
                        view, done = memoryview(blob), 0
                        while done < n:
                            done += os.write(out, view[done:])
                    if n == 0:
                        break
                    sent(n)
                    pace(n)
        finally:
            os.close(out)
        # The check reads the destination file (from the page cache), not the source bytes.
        _check(entry, local_digest(tmp), os.stat(tmp).st_size)
        os.replace(tmp, final)
    finally:
        with suppress(FileNotFoundError):
            os.unlink(tmp)


def _b64(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


_CHECKSUM_SERVERS: dict[tuple, bool] = {}
_CHECKSUM_LOCK = threading.Lock()


def _s3_checks_sha256(dst: ArtifactStore) -> bool:
    """Whether this S3 endpoint checks `x-amz-checksum-sha256` (it then echoes it on a PUT).

    Asked once per endpoint and bucket with a tiny probe object; the answer is remembered for
    the life of the process.
    """
    bucket, prefix, _ = dst.fs.split_path(dst.root)
    endpoint = (dst.storage_options.get("client_kwargs") or {}).get(
        "endpoint_url"
    ) or dst.storage_options.get("endpoint_url")
    cache_key = (endpoint, bucket)
    with _CHECKSUM_LOCK:
        if cache_key in _CHECKSUM_SERVERS:
            return _CHECKSUM_SERVERS[cache_key]
        blob = b"adcp checksum probe"
        digest = _b64(hashlib.sha256(blob).hexdigest())
        key = "/".join(p for p in (prefix, f"objects/.probe-{uuid.uuid4().hex[:12]}") if p)
        try:
            reply = dst.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=blob, ChecksumSHA256=digest)
        except Exception:  # noqa: BLE001 - no answer now: the safe path, and ask again next time
            return False
        finally:
            with suppress(Exception):
                dst.fs.call_s3("delete_object", Bucket=bucket, Key=key)
        ok = reply.get("ChecksumSHA256") == digest
        _CHECKSUM_SERVERS[cache_key] = ok
        return ok


def _write_s3(job: Job, dst: ArtifactStore, chunk: int, sent: Callable[[int], None], pace: Pacer) -> None:
    """Send to the final key with the sha256 the server must find; it refuses anything else."""
    entry = job.entry
    bucket, key, _ = dst.fs.split_path(dst.path(entry.key))
    part = max(chunk, S3_MIN_PART)
    with _Source(job) as src:
        if entry.size <= part:
            blob = src.read_full(part + 1)
            pace(len(blob))
            _check(entry, hashlib.sha256(blob).hexdigest(), len(blob))  # the source is intact
            reply = dst.fs.call_s3(
                "put_object", Bucket=bucket, Key=key, Body=blob, ChecksumSHA256=_b64(entry.sha256)
            )
            if reply.get("ChecksumSHA256", _b64(entry.sha256)) != _b64(entry.sha256):
                raise Mismatch("(refused by the server)", len(blob))
            sent(len(blob))
            return
        upload = dst.fs.call_s3("create_multipart_upload", Bucket=bucket, Key=key, ChecksumAlgorithm="SHA256")
        upload_id = upload["UploadId"]
        try:
            whole, parts, size = hashlib.sha256(), [], 0
            while True:
                blob = src.read_full(part)
                if not blob:
                    break
                pace(len(blob))
                whole.update(blob)
                size += len(blob)
                digest = base64.b64encode(hashlib.sha256(blob).digest()).decode()
                reply = dst.fs.call_s3(
                    "upload_part",
                    Bucket=bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=len(parts) + 1,
                    Body=blob,
                    ChecksumSHA256=digest,
                )
                parts.append({"PartNumber": len(parts) + 1, "ETag": reply["ETag"], "ChecksumSHA256": digest})
                sent(len(blob))
            # Every part was checked by the server against the hash of exactly the bytes sent,
            # and those bytes hash to the object's sha256: complete only then.
            _check(entry, whole.hexdigest(), size)
            dst.fs.call_s3(
                "complete_multipart_upload",
                Bucket=bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            with suppress(Exception):
                dst.fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)
            raise


def _write_generic(
    job: Job, dst: ArtifactStore, chunk: int, sent: Callable[[int], None], pace: Pacer
) -> None:
    """A temporary key, read back and hashed at the destination, then moved into place."""
    entry = job.entry
    final = dst.path(entry.key)
    tmp = _part_path(final)
    moved = False
    try:
        with _Source(job) as src, dst.fs.open(tmp, "wb") as out:
            while True:
                blob = src.read(chunk)
                if not blob:
                    break
                out.write(blob)
                sent(len(blob))
                pace(len(blob))
        size = dst.fs.size(tmp)
        _check(entry, fs_digest(dst.fs, tmp, size, chunk), size)
        dst.fs.mv(tmp, final)
        moved = True
    finally:
        if not moved:
            with suppress(Exception):
                dst.fs.rm_file(tmp)


#: Puts one job's object into a store: (job, store, chunk bytes, sent(n), pace(n)).
Writer = Callable[[Job, ArtifactStore, int, Callable[[int], None], Pacer], None]


def writer_for(dst: ArtifactStore) -> Writer:
    """The way objects are written into `dst`, by its kind of store."""
    if dst.local:
        return _write_local
    if dst.protocol in ("s3", "s3a") and _s3_checks_sha256(dst):
        return _write_s3
    return _write_generic
