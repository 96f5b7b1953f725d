"""Artifacts uploaded to the central store through the coordinator's API, for clients that cannot
write the store themselves (a laptop, a CI runner).

An upload is resumable and content-addressed, the way the transfer engine is:

1. `begin(kind, name, version?, meta)` reserves a version (the next number when none is given);
2. `declare(files)` takes every file's path, size and sha256 and answers which objects the store
   lacks, and how many bytes of each already arrived (a killed upload resumes there);
3. `put(sha256, offset, chunks)` appends a chunk to the object's part file (parts are keyed by
   sha256, so any upload of the same bytes continues them); when the object is complete its hash
   is checked and it is moved into the store, verified, by the transfer engine;
4. `commit()` checks that every object is in the store and writes the manifest, last, so no
   reader ever sees half an artifact.

Upload records and parts live in `<home>/coordinator/uploads/`, so a coordinator restart keeps them.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import uuid
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import fsspec

from configs.errors import InputError, IntegrityError, NotFoundError
from data.artifacts import ArtifactRef, ArtifactStore, Manifest, ObjectEntry
from data.transfer import Job, send_objects

__all__ = ["MAX_OBJECT_BYTES", "Uploads"]

#: Largest single file an upload takes (a dataset shard or a model file is far smaller).
MAX_OBJECT_BYTES = 64 << 30
_ID_CHARS = set("0123456789abcdef")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Uploads:
    """Uploads into `store`, with their records and parts under `root`."""

    def __init__(self, store: ArtifactStore, root: Path) -> None:
        self.store = store
        self.root = Path(root)
        (self.root / "parts").mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._object_locks: dict[str, threading.Lock] = {}

    # --- records -----------------------------------------------------------------------------

    def _path(self, upload_id: str) -> Path:
        if not upload_id or len(upload_id) > 32 or not set(upload_id) <= _ID_CHARS:
            raise NotFoundError(f"No upload {upload_id!r}.")
        return self.root / f"{upload_id}.json"

    def get(self, upload_id: str) -> dict[str, Any]:
        try:
            return json.loads(self._path(upload_id).read_text())
        except FileNotFoundError:
            raise NotFoundError(f"No upload {upload_id}.", hint="Start one with POST /api/v1/uploads.") from None

    def _save(self, record: dict[str, Any]) -> None:
        path = self._path(record["id"])
        tmp = path.with_suffix(f".tmp-{uuid.uuid4().hex[:6]}")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, path)

    def begin(self, kind: str, name: str, version: str | None, meta: dict[str, Any] | None,
              user: str | None = None) -> dict[str, Any]:
        """Reserve `kind/name@version` (the next free number when None) for a new upload."""
        ArtifactRef(kind, name, version)  # InputError on a bad kind, name or version
        try:
            json.dumps(meta or {})
        except (TypeError, ValueError) as e:
            raise InputError(f"The meta of {kind}/{name} is not JSON: {e}.") from e
        with self._lock:
            reserved = {r["version"] for r in self._records() if r["kind"] == kind and r["name"] == name}
            existing = set(self.store.versions(kind, name))
            if version is None:
                numbers = [int(v) for v in existing | reserved if v.isdigit()]
                version = str(max(numbers, default=0) + 1)
            elif version in existing:
                raise IntegrityError(f"{kind}/{name}@{version} already exists; published artifacts never change.",
                                     hint="Leave the version out for the next number.")
            record = {"id": uuid.uuid4().hex[:16], "kind": kind, "name": name, "version": version,
                      "meta": meta or {}, "files": [], "user": user, "started_at": _now()}
            self._save(record)
        return record

    def _records(self) -> Iterable[dict[str, Any]]:
        for p in self.root.glob("*.json"):
            try:
                yield json.loads(p.read_text())
            except (OSError, ValueError):
                continue

    def declare(self, upload_id: str, files: list[dict[str, Any]], meta: dict[str, Any] | None = None
                ) -> dict[str, Any]:
        """Take the upload's file list (and `meta`, when given); answer the objects still missing."""
        record = self.get(upload_id)
        if meta is not None:
            record["meta"] = meta
        entries = [ObjectEntry(str(f.get("path")), str(f.get("sha256")), f.get("size")) for f in files]
        if len({e.path for e in entries}) != len(entries):
            raise InputError("A path appears twice in the upload's file list.")
        for e in entries:
            if e.size > MAX_OBJECT_BYTES:
                raise InputError(f"{e.path} is {e.size} bytes.", allowed=f"files up to {MAX_OBJECT_BYTES} bytes")
        record["files"] = [e.to_json() for e in entries]
        self._save(record)
        return {**self.summary(record), "missing": self._missing(entries)}

    def _missing(self, entries: list[ObjectEntry]) -> list[dict[str, Any]]:
        out = []
        for e in {e.key: e for e in entries}.values():  # files with equal content share an object
            if not self.store.has_object(e):
                part = self._part(e.sha256)
                out.append({"sha256": e.sha256, "size": e.size, "path": e.path,
                            "received": part.stat().st_size if part.exists() else 0})
        return out

    def status(self, upload_id: str) -> dict[str, Any]:
        record = self.get(upload_id)
        entries = [ObjectEntry(**f) for f in record["files"]]
        return {**self.summary(record), "missing": self._missing(entries)}

    @staticmethod
    def summary(record: dict[str, Any]) -> dict[str, Any]:
        return {"upload_id": record["id"], "artifact": f"{record['kind']}/{record['name']}@{record['version']}",
                "version": record["version"], "files": len(record["files"])}

    # --- objects -----------------------------------------------------------------------------

    def _part(self, sha256: str) -> Path:
        return self.root / "parts" / f"{sha256}.part"

    def _entry(self, record: dict[str, Any], sha256: str) -> ObjectEntry:
        for f in record["files"]:
            if f["sha256"] == sha256:
                return ObjectEntry(**f)
        raise NotFoundError(f"Upload {record['id']} declared no object {sha256}.",
                            hint="Declare the files first (POST /api/v1/uploads/{id}/files).")

    def object_lock(self, sha256: str) -> threading.Lock:
        with self._lock:
            return self._object_locks.setdefault(sha256, threading.Lock())

    def open_part(self, upload_id: str, sha256: str, offset: int) -> tuple[ObjectEntry, Any]:
        """(entry, file open for appending at `offset`) for the object's next chunk; IntegrityError
        (409, with `received`) when `offset` is not where the part ends."""
        entry = self._entry(self.get(upload_id), sha256)
        if self.store.has_object(entry):
            return entry, None
        part = self._part(sha256)
        received = part.stat().st_size if part.exists() else 0
        if offset != received:
            raise IntegrityError(f"Object {sha256[:12]} has {received} bytes here; the chunk starts at {offset}.",
                                 hint="Send from the received offset.", received=received)
        return entry, open(part, "ab")

    def finish_object(self, entry: ObjectEntry) -> dict[str, Any]:
        """After a chunk: if the part is whole, check its hash and move it into the store."""
        part = self._part(entry.sha256)
        received = part.stat().st_size if part.exists() else 0
        if received > entry.size:
            part.unlink(missing_ok=True)
            raise InputError(f"Object {entry.sha256[:12]} got {received} bytes; it has {entry.size}.",
                             hint="Upload it again from offset 0.")
        if received < entry.size:
            return {"sha256": entry.sha256, "received": received, "complete": False}
        digest = hashlib.sha256()
        with open(part, "rb") as f:
            for block in iter(lambda: f.read(8 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != entry.sha256:
            part.unlink(missing_ok=True)
            raise IntegrityError(f"The bytes sent for {entry.path} hash to {digest.hexdigest()[:12]}, "
                                 f"not {entry.sha256[:12]}.", hint="Upload it again from offset 0.")
        send_objects([Job(entry, fsspec.filesystem("file"), str(part))], self.store, workers=1)
        part.unlink(missing_ok=True)
        return {"sha256": entry.sha256, "received": received, "complete": True}

    # --- commit ------------------------------------------------------------------------------

    def commit(self, upload_id: str) -> Manifest:
        """Write the manifest once every object is in the store; the upload record goes."""
        record = self.get(upload_id)
        if not record["files"]:
            raise InputError(f"Upload {upload_id} has no files.", hint="Declare them first.")
        entries = tuple(ObjectEntry(**f) for f in record["files"])
        missing = self._missing(list(entries))
        if missing:
            raise IntegrityError(f"Upload {upload_id} still lacks {len(missing)} object(s), e.g. {missing[0]['path']}.",
                                 hint="Send the missing objects, then commit again.")
        manifest = Manifest(record["kind"], record["name"], record["version"], entries, record["meta"], _now())
        self.store.write_manifest(manifest)
        self._path(upload_id).unlink(missing_ok=True)
        return manifest
