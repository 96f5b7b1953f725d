"""Routes of the resumable, sha256-verified upload of an artifact into the central store
(`coordinator.center.uploads`): begin, declare files, send each missing object in chunks, commit.

    POST /api/v1/uploads                            {kind, name, version?, meta?} -> upload_id, version
    POST /api/v1/uploads/{id}/files                 {files: [{path, size, sha256}]} -> missing objects
    GET  /api/v1/uploads/{id}                       the same answer, for a client that resumes
    PUT  /api/v1/uploads/{id}/objects/{sha256}?offset=N   raw bytes of the next chunk
    POST /api/v1/uploads/{id}/commit                writes the manifest -> the artifact

Chunks stream to disk as they arrive; nothing holds a whole file in memory.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from configs.errors import InputError, PayloadTooLargeError
from coordinator.api.platform_routes import principal_name
from coordinator.center.uploads import Uploads

__all__ = ["FileIn", "FilesIn", "UploadIn", "add_upload_routes"]

_BASE = "/api/v1/uploads"
#: Largest chunk one PUT may carry; clients send 8 MiB.
MAX_CHUNK_BYTES = 64 << 20


class UploadIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str = Field(..., description="dataset, annotations, code, image, model or checkpoint")
    name: str = Field(..., description="Artifact name", examples=["aoi"])
    version: str | None = Field(None, description="Version to publish; default: the next number")
    meta: dict[str, Any] = Field(default_factory=dict, description="Free-form JSON kept in the manifest")


class FileIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(..., description="Relative POSIX path inside the artifact")
    size: int = Field(..., ge=0)
    sha256: str = Field(..., pattern="^[0-9a-f]{64}$")


class FilesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    files: list[FileIn] = Field(..., min_length=1, max_length=1_000_000)
    meta: dict[str, Any] | None = Field(None, description="Replaces the meta given at the start (when known only now)")


def add_upload_routes(app: FastAPI, uploads: Uploads) -> None:
    @app.post(_BASE, status_code=201, tags=["artifacts"])
    def begin(body: UploadIn, request: Request) -> dict[str, Any]:
        """Start an upload: reserves `kind/name@version`."""
        record = uploads.begin(body.kind, body.name, body.version, body.meta, user=principal_name(request))
        return uploads.summary(record)

    @app.post(f"{_BASE}/{{upload_id}}/files", tags=["artifacts"])
    def declare(upload_id: str, body: FilesIn) -> dict[str, Any]:
        """Declare every file; answers the objects the store lacks and the bytes already received."""
        return uploads.declare(upload_id, [f.model_dump() for f in body.files], meta=body.meta)

    @app.get(f"{_BASE}/{{upload_id}}", tags=["artifacts"])
    def status(upload_id: str) -> dict[str, Any]:
        return uploads.status(upload_id)

    @app.put(f"{_BASE}/{{upload_id}}/objects/{{sha256}}", tags=["artifacts"])
    async def put_object(upload_id: str, sha256: str, request: Request,
                         offset: int = Query(..., ge=0, description="Where this chunk starts in the object")
                         ) -> dict[str, Any]:
        """Append the request body (raw bytes) to the object at `offset`; 409 with `received` when
        the object has a different number of bytes here."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_CHUNK_BYTES:
            raise PayloadTooLargeError(f"A chunk of {declared} bytes.", allowed=f"at most {MAX_CHUNK_BYTES} bytes")
        lock = uploads.object_lock(sha256)
        await run_in_threadpool(lock.acquire)
        try:
            entry, part = await run_in_threadpool(uploads.open_part, upload_id, sha256, offset)
            if part is None:  # already in the store (another upload brought the same bytes)
                return {"sha256": sha256, "received": entry.size, "complete": True}
            got = 0
            try:
                async for chunk in request.stream():
                    got += len(chunk)
                    if got > MAX_CHUNK_BYTES or offset + got > entry.size:
                        raise InputError(f"The chunk runs past the object's {entry.size} bytes "
                                         f"(or past {MAX_CHUNK_BYTES} bytes per chunk).")
                    part.write(chunk)
            finally:
                part.close()
            return await run_in_threadpool(uploads.finish_object, entry)
        finally:
            lock.release()

    @app.post(f"{_BASE}/{{upload_id}}/commit", tags=["artifacts"])
    def commit(upload_id: str) -> dict[str, Any]:
        """Write the manifest (every object must be in the store): the artifact is published."""
        m = uploads.commit(upload_id)
        return {"artifact": str(m.ref), "kind": m.kind, "name": m.name, "version": m.version,
                "bytes": m.total_bytes, "objects": len(m.objects), "meta": m.meta}
