"""Sending a local file or folder to the central store through the coordinator's upload API
(`coordinator.api.upload_routes`): every file hashed while streamed, only the objects the store
lacks sent, each in chunks from where an earlier, interrupted upload stopped; the manifest is
written last by the coordinator. Nothing is ever read whole into memory."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from configs.errors import InputError, IntegrityError
from coordinator.cli.client import CoordinatorClient

__all__ = ["CHUNK_BYTES", "Upload", "files_of", "sha256_file"]

CHUNK_BYTES = 8 << 20
Progress = Callable[[int, int], None]  # (bytes, objects) just sent


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def files_of(source: Path) -> list[tuple[str, Path]]:
    """(path inside the artifact, local file) of a file or every file under a folder."""
    source = Path(source)
    if source.is_file():
        return [(source.name, source)]
    if not source.is_dir():
        raise InputError(f"No such file or folder: {source}.")
    out = sorted((p.relative_to(source).as_posix(), p) for p in source.rglob("*") if p.is_file())
    if not out:
        raise InputError(f"{source} holds no files.")
    return out


class Upload:
    """One upload: `begin` reserves the version, `send(source)` declares and sends, commits."""

    def __init__(self, client: CoordinatorClient, kind: str, name: str, version: str | None = None,
                 meta: dict[str, Any] | None = None) -> None:
        self.client = client
        body = {"kind": kind, "name": name, "version": version, "meta": meta or {}}
        started = client.call("POST", "/uploads", json=body)
        self.id: str = started["upload_id"]
        self.version: str = started["version"]
        self.ref = f"{kind}/{name}@{self.version}"

    def send(self, source: Path, *, on_plan: Callable[[int, int], None] | None = None,
             on_progress: Progress | None = None, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """Declare every file of `source` (and `meta`, when it is known only now), send what the
        store lacks, commit; the committed artifact with bytes sent and skipped."""
        files = files_of(source)
        declared = [{"path": rel, "size": os.path.getsize(p), "sha256": sha256_file(p)} for rel, p in files]
        by_sha = {d["sha256"]: p for d, (_, p) in zip(declared, files)}
        body: dict[str, Any] = {"files": declared, **({"meta": meta} if meta is not None else {})}
        answer = self.client.call("POST", f"/uploads/{self.id}/files", json=body)
        missing = answer["missing"]
        if on_plan:
            on_plan(sum(m["size"] - m["received"] for m in missing), len(missing))
        for m in missing:
            self._send_object(by_sha[m["sha256"]], m["sha256"], m["size"], m["received"], on_progress)
        done = self.client.call("POST", f"/uploads/{self.id}/commit")
        sent = sum(m["size"] - m["received"] for m in missing)
        total = sum(d["size"] for d in declared)
        return {**done, "bytes_sent": sent, "bytes_skipped": total - sent, "objects_sent": len(missing),
                "upload_id": self.id}

    def _send_object(self, path: Path, sha256: str, size: int, offset: int, on_progress: Progress | None) -> None:
        with open(path, "rb") as f:
            f.seek(offset)
            while offset < size or size == 0:
                chunk = f.read(CHUNK_BYTES)
                try:
                    r = self.client.call("PUT", f"/uploads/{self.id}/objects/{sha256}", params={"offset": offset},
                                         content=chunk, headers={"Content-Type": "application/octet-stream"})
                except IntegrityError as e:
                    received = e.details.get("received")
                    if received is None or received == offset:
                        raise
                    offset = received  # another client sent part of it: go on from there
                    f.seek(offset)
                    continue
                offset += len(chunk)
                if on_progress:
                    on_progress(len(chunk), 1 if r["complete"] else 0)
                if r["complete"]:
                    return
                if not chunk:
                    raise IntegrityError(f"{path} ended at {offset} of {size} bytes while uploading.")
