"""The content-addressed artifact store: immutable, versioned artifacts on any fsspec URL.

Layout of a store at `<url>` (`file:///...`, `memory://...`, `s3://bucket/prefix`):

    objects/<sha[:2]>/<sha256><suffix>            file contents, named by their sha256
    artifacts/<kind>/<name>/<version>.json        the manifest: relative path -> object, meta

An object only appears at its final key once its bytes were hashed at the store (the transfer
engine, `data.transfer`, writes them; `data.publish` stores local files through it), and a
manifest is written last and atomically: whoever finds a manifest finds a complete, verified
artifact. Objects are shared between artifacts and versions, so a new version that changes one
shard stores (and ships) only that shard. This module reads and lists; it never imports the
engine (an import-linter contract says so).

Names and manifests (`ArtifactRef`, `Manifest`, ...) live in `data.manifests` and are
re-exported here, where most callers look for them.
"""

from __future__ import annotations

import json
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import fsspec

from configs.errors import InputError, IntegrityError, NotFoundError
from data.manifests import (
    FORMAT,
    KINDS,
    NAME_RE,
    VERSION_RE,
    ArtifactRef,
    Manifest,
    ObjectEntry,
    VerifyResult,
    check_kind,
    file_url,
    file_urls,
    fs_digest,
    is_local,
    local_digest,
    natural_key,
    require_same_content,
    some,
)

__all__ = [
    "FORMAT",
    "KINDS",
    "ArtifactRef",
    "ArtifactStore",
    "Manifest",
    "ObjectEntry",
    "VerifyResult",
    "file_url",
    "file_urls",
]

#: Object stores whose directory listings fsspec would otherwise cache for the life of the
#: process; a store is shared with other processes (a transfer at a site, the Serve app), so a
#: cached listing would hide their new versions.
_LISTING_CACHE_OFF = {"s3", "s3a", "gs", "gcs", "abfs", "abfss", "az"}


def _protocol(fs) -> str:
    return fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]


class ArtifactStore:
    """Artifacts under one fsspec URL. Thread-safe for concurrent readers and transfers."""

    def __init__(self, url: str, storage_options: dict | None = None) -> None:
        url = str(url)
        if "://" not in url:
            url = "file://" + str(Path(url).expanduser().resolve())
        self.url = url.rstrip("/")
        self.storage_options = dict(storage_options or {})
        protocol = self.url.split("://", 1)[0]
        options = dict(self.storage_options)
        if protocol in _LISTING_CACHE_OFF:
            options.setdefault("use_listings_cache", False)
        try:
            self.fs, root = fsspec.core.url_to_fs(self.url, **options)
        except ImportError as e:
            raise InputError(
                f"No filesystem for {self.url}: {e}.", hint="Install s3fs to use s3:// stores."
            ) from e
        self.root = root.rstrip("/")
        self.local = is_local(self.fs)
        self.protocol = _protocol(self.fs)

    def __repr__(self) -> str:
        return f"ArtifactStore({self.url!r})"

    # --- addresses ------------------------------------------------------------------------

    def path(self, key: str) -> str:
        """The filesystem path (for `self.fs`) of a key relative to the store root."""
        return f"{self.root}/{key}"

    def manifest_key(self, ref: ArtifactRef) -> str:
        if ref.version is None:
            raise InputError(f"{ref} names no version.", hint="Resolve it first (store.resolve).")
        return f"artifacts/{ref.kind}/{ref.name}/{ref.version}.json"

    def manifest_url(self, ref: ArtifactRef) -> str:
        return f"{self.url}/{self.manifest_key(ref)}"

    def object_url(self, entry: ObjectEntry) -> str:
        return f"{self.url}/{entry.key}"

    # --- objects --------------------------------------------------------------------------

    def has_object(self, entry: ObjectEntry, verify: bool = False) -> bool:
        """Whether the object is stored with the right size (and, with `verify`, the right hash)."""
        path = self.path(entry.key)
        try:
            if self.local:
                size = os.stat(path).st_size
            else:
                size = self.fs.info(path)["size"]
        except FileNotFoundError:
            return False
        if size != entry.size:
            return False
        return not verify or self.object_digest(entry) == entry.sha256

    def object_digest(self, entry: ObjectEntry) -> str:
        return fs_digest(self.fs, self.path(entry.key), entry.size)

    # --- manifests ------------------------------------------------------------------------

    def _names(self, kind: str) -> list[str]:
        base = self.path(f"artifacts/{kind}")
        try:
            entries = self.fs.ls(base, detail=True)
        except FileNotFoundError:
            return []
        return sorted(PurePosixPath(e["name"]).name for e in entries if e.get("type") == "directory")

    def versions(self, kind: str, name: str) -> list[str]:
        """Versions of `kind/name` that have a manifest (complete ones), oldest first."""
        ArtifactRef(kind, name)
        base = self.path(f"artifacts/{kind}/{name}")
        try:
            entries = self.fs.ls(base, detail=False)
        except FileNotFoundError:
            return []
        found = []
        for p in entries:
            leaf = PurePosixPath(p).name
            if leaf.endswith(".json") and VERSION_RE.match(leaf[: -len(".json")]):
                found.append(leaf[: -len(".json")])
        return sorted(found, key=natural_key)

    def resolve(self, ref: ArtifactRef) -> ArtifactRef:
        """`ref` with its version filled in (the latest when it names none); NotFoundError."""
        versions = self.versions(ref.kind, ref.name)
        if ref.version is None:
            if versions:
                return ref.with_version(versions[-1])
            raise NotFoundError(
                f"No {ref.kind} named {ref.name} in the store {self.url}.",
                allowed=f"{ref.kind} artifacts there: {some(self._names(ref.kind))}",
                hint="Publish or push it first, or check the name.",
            )
        if ref.version in versions:
            return ref
        raise NotFoundError(
            f"No version {ref.version} of {ref.kind}/{ref.name} in the store {self.url}.",
            allowed=f"versions there: {some(versions)}",
            hint="Leave the version out to take the latest.",
        )

    def manifest(self, ref: ArtifactRef) -> Manifest:
        """The manifest of `ref` (of its latest version when it names none); NotFoundError."""
        if ref.version is None:
            ref = self.resolve(ref)
        try:
            raw = self.fs.cat_file(self.path(self.manifest_key(ref)))
        except FileNotFoundError as e:
            self.resolve(ref)  # raises NotFoundError listing the versions there
            raise NotFoundError(f"{ref} was deleted from {self.url} while being read.") from e
        return self._parse(raw, ref)

    def _parse(self, raw: bytes, ref: ArtifactRef) -> Manifest:
        try:
            manifest = Manifest.from_json(json.loads(raw))
        except (ValueError, IntegrityError) as e:
            raise IntegrityError(
                f"The manifest of {ref} at {self.manifest_url(ref)} is damaged: {e}",
                hint="Copy the artifact again from a good store.",
            ) from e
        if manifest.ref != ref:
            raise IntegrityError(
                f"The manifest at {self.manifest_url(ref)} describes {manifest.ref}, not {ref}."
            )
        return manifest

    def exists(self, ref: ArtifactRef) -> bool:
        """Whether `ref` (any version of it when it names none) is complete in this store."""
        if ref.version is not None:
            return self.fs.exists(self.path(self.manifest_key(ref)))
        return bool(self.versions(ref.kind, ref.name))

    def list(self, kind: str | None = None) -> list[Manifest]:
        """Every complete artifact (one that has a manifest), by kind, name and version."""
        kinds = KINDS if kind is None else (kind,)
        refs = []
        for k in kinds:
            check_kind(k)
            for name in self._names(k):
                if NAME_RE.match(name):
                    refs.extend(ArtifactRef(k, name, v) for v in self.versions(k, name))
        if not refs:
            return []

        def read(ref: ArtifactRef) -> Manifest | None:
            try:
                return self._parse(self.fs.cat_file(self.path(self.manifest_key(ref))), ref)
            except FileNotFoundError:  # deleted since it was listed
                return None

        with ThreadPoolExecutor(max(1, min(8, len(refs)))) as ex:
            return [m for m in ex.map(read, refs) if m is not None]

    def next_version(self, kind: str, name: str) -> str:
        numbers = [int(v) for v in self.versions(kind, name) if v.isdigit()]
        return str(max(numbers, default=0) + 1)

    def write_manifest(self, manifest: Manifest) -> None:
        """Write `manifest` atomically: a reader sees no manifest or the whole of it.

        Artifacts are immutable: IntegrityError when this version exists with other content;
        a manifest of the same content is left as it is.
        """
        ref = manifest.ref
        path = self.path(self.manifest_key(ref))
        if self.fs.exists(path):
            existing = self._parse(self.fs.cat_file(path), ref)
            require_same_content(existing, manifest, self.url)
            return
        blob = manifest.dumps()
        if self.protocol in ("s3", "s3a", "gcs", "gs"):
            self.fs.pipe_file(path, blob)  # one PUT: object stores never show half of it
            return
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
        if self.local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(blob)
            os.replace(tmp, path)
            return
        self.fs.pipe_file(tmp, blob)
        self.fs.mv(tmp, path)

    def delete(self, ref: ArtifactRef) -> None:
        """Remove one version's manifest (its objects may be shared and stay)."""
        if ref.version is None:
            raise InputError(f"Say which version of {ref} to delete.", hint=f"e.g. {ref}@1.")
        self.resolve(ref)
        self.fs.rm_file(self.path(self.manifest_key(ref)))

    # --- verify, download -----------------------------------------------------------------

    def verify(self, ref: ArtifactRef) -> VerifyResult:
        """Rehash every object of `ref`; `bad` lists the files whose object is damaged or
        missing (`data.publish.verify_and_repair` copies them again from a good store)."""
        manifest = self.manifest(ref)
        unique = manifest.unique_objects()

        def good(entry: ObjectEntry) -> bool:
            try:
                return self.has_object(entry, verify=True)
            except FileNotFoundError:
                return False

        with ThreadPoolExecutor(max(1, min(4, len(unique)))) as ex:
            bad_keys = {e.key for e, ok in zip(unique, ex.map(good, unique)) if not ok}
        return VerifyResult(
            str(manifest.ref),
            len(unique),
            bad=[o.path for o in manifest.objects if o.key in bad_keys],
        )

    def download(self, ref: ArtifactRef, dest_dir) -> Path:
        """Write the files of `ref` at their relative paths under `dest_dir` (checked against
        their hashes) and return `dest_dir`; for tools that need a plain folder."""
        manifest = self.manifest(ref)
        dest = Path(dest_dir)
        for entry in manifest.objects:
            target = dest / entry.path
            target.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(self.path(entry.key), str(target))
            if local_digest(str(target)) != entry.sha256:
                target.unlink()
                raise IntegrityError(
                    f"{entry.path} of {manifest.ref} in {self.url} does not match its sha256.",
                    hint=f"Run a verify of {manifest.ref} with a repair source.",
                )
        return dest
