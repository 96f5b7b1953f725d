"""Put files into an artifact store, and repair a store's copy of an artifact: the operations on
one store that need the transfer engine (`data.transfer`), kept above both so that the store
(`data.artifacts`) never imports the engine.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any

import fsspec

from configs.errors import InputError, NotFoundError
from data.artifacts import ArtifactStore
from data.manifests import (
    ArtifactRef,
    Manifest,
    ObjectEntry,
    VerifyResult,
    check_relpath,
    fs_digest,
    require_same_content,
    utc_now,
)
from data.transfer import Job, send_objects

__all__ = ["publish_artifact", "verify_and_repair"]


def publish_artifact(
    store: ArtifactStore,
    kind: str,
    name: str,
    version: str | None,
    source,
    *,
    meta: dict | None = None,
    workers: int = 4,
) -> Manifest:
    """Store the files under `source` (a local file or directory, or an fsspec directory URL) in
    `store` as `kind/name@version` (the next number when `version` is None) and return its
    manifest.

    Every file is hashed (streamed), objects the store already holds are skipped, the others
    are copied and verified at the store, and the manifest is written last. Raises
    IntegrityError when the version exists with other content; the same content returns the
    existing manifest.
    """
    ref = ArtifactRef(kind, name, version)
    meta = dict(meta or {})
    try:
        json.dumps(meta)
    except (TypeError, ValueError) as e:
        raise InputError(
            f"The meta of {ref} is not JSON: {e}.", allowed="JSON-serialisable values"
        ) from e
    src_fs, files = _source_files(source)
    with ThreadPoolExecutor(max(1, min(workers, len(files)))) as ex:
        digests = list(ex.map(lambda f: fs_digest(src_fs, f[1], f[2]), files))
    entries = tuple(ObjectEntry(rel, d, size) for (rel, _, size), d in zip(files, digests))
    if version is None:
        version = store.next_version(kind, name)
    elif version in store.versions(kind, name):
        existing = store.manifest(ArtifactRef(kind, name, version))
        require_same_content(existing, Manifest(kind, name, version, entries), store.url)
        return existing
    manifest = Manifest(kind, name, version, entries, meta, utc_now())
    paths = {e.path: p for (_, p, _), e in zip(files, entries)}
    jobs = [Job(e, src_fs, paths[e.path]) for e in manifest.unique_objects()]
    send_objects(jobs, store, workers=workers)
    store.write_manifest(manifest)
    return manifest


def verify_and_repair(
    store: ArtifactStore, ref: ArtifactRef, repair_from: ArtifactStore | None = None
) -> VerifyResult:
    """Rehash every object of `ref` in `store` (`ArtifactStore.verify`); with `repair_from`, copy
    the bad or missing ones again from that store (verified as they land) and list them in
    `repaired`."""
    result = store.verify(ref)
    if result.bad and repair_from is not None:
        manifest = store.manifest(ref)
        bad_paths = set(result.bad)
        bad_keys = {o.key for o in manifest.objects if o.path in bad_paths}
        jobs = [
            Job(e, repair_from.fs, repair_from.path(e.key))
            for e in manifest.unique_objects()
            if e.key in bad_keys
        ]
        send_objects(jobs, store, check_existing=False)
        result.repaired = list(result.bad)
    return result


def _source_files(source) -> tuple[Any, list[tuple[str, str, int]]]:
    """(filesystem, [(relative path, filesystem path, size)]) of a publish source."""
    text = str(source)
    if isinstance(source, Path) or "://" not in text:
        fs = fsspec.filesystem("file")
        base = str(Path(text).expanduser().resolve())
    else:
        fs, base = fsspec.core.url_to_fs(text)
    base = base.rstrip("/")
    try:
        info = fs.info(base)
    except FileNotFoundError as e:
        raise NotFoundError(f"Nothing to publish at {source}: it does not exist.") from e
    if info["type"] != "directory":
        return fs, [(PurePosixPath(base).name, base, int(info["size"]))]
    found = fs.find(base, detail=True)
    files = []
    for path, meta in sorted(found.items()):
        if meta.get("type") == "file":
            rel = path[len(base) :].lstrip("/")
            try:
                check_relpath(rel)
            except InputError as e:
                raise InputError(f"Cannot publish {path}: {e.what}", allowed=e.allowed) from e
            files.append((rel, path, int(meta["size"])))
    if not files:
        raise InputError(f"Nothing to publish at {source}: the directory has no files.")
    return fs, files
