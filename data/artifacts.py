"""The content-addressed artifact store: immutable, versioned artifacts on any fsspec URL.

Layout of a store at `<url>` (`file:///...`, `memory://...`, `s3://bucket/prefix`):

    objects/<sha[:2]>/<sha256><suffix>            file contents, named by their sha256
    artifacts/<kind>/<name>/<version>.json        the manifest: relative path -> object, meta

An object only appears at its final key once its bytes were hashed at the store (see
`data.transfer`), and a manifest is written last and atomically: whoever finds a manifest finds
a complete, verified artifact. Objects are shared between artifacts and versions, so a new
version that changes one shard stores (and ships) only that shard.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

import fsspec

from configs.errors import InputError, IntegrityError, NotFoundError

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

FORMAT = "adcp-artifact/1"
KINDS = ("dataset", "annotations", "code", "image", "model", "checkpoint")

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_VERSION = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SUFFIX = re.compile(r"^\.[a-z0-9]{1,10}$")
_MANIFEST_URL = re.compile(
    r"^(?P<root>.+)/artifacts/(?P<kind>[^/]+)/(?P<name>[^/]+)/(?P<version>[^/]+)\.json$"
)
#: Object stores whose directory listings fsspec would otherwise cache for the life of the
#: process; a store is shared with other processes (a transfer at a site, the Serve app), so a
#: cached listing would hide their new versions.
_LISTING_CACHE_OFF = {"s3", "s3a", "gs", "gcs", "abfs", "abfss", "az"}
#: Read size when hashing a non-local object (local files are hashed through mmap).
HASH_CHUNK = 8 << 20

_ALLOWED_REF = (
    f"KIND/NAME or KIND/NAME@VERSION; KIND one of {', '.join(KINDS)}; NAME 1-63 of a-z 0-9 . _ - "
    "(starting with a letter or digit); VERSION 1-64 of A-Z a-z 0-9 . _ -"
)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise InputError(f'Unknown artifact kind "{kind}".', allowed=", ".join(KINDS))


@dataclass(frozen=True)
class ArtifactRef:
    """Names an artifact: `kind/name`, or one version of it: `kind/name@version`."""

    kind: str
    name: str
    version: str | None = None

    def __post_init__(self) -> None:
        _check_kind(self.kind)
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise InputError(
                f'Invalid artifact name "{self.name}".',
                allowed="1-63 characters of a-z 0-9 . _ -, starting with a letter or digit",
                hint="Use a lower-case name such as aoi-demo.",
            )
        if self.version is not None and (
            not isinstance(self.version, str) or not _VERSION.match(self.version)
        ):
            raise InputError(
                f'Invalid artifact version "{self.version}".',
                allowed="1-64 characters of A-Z a-z 0-9 . _ -",
                hint="Leave the version out to mean the latest one.",
            )

    @classmethod
    def parse(cls, text: str) -> ArtifactRef:
        """`KIND/NAME` or `KIND/NAME@VERSION`; InputError on anything else."""
        if not isinstance(text, str):
            raise InputError(
                f"An artifact reference must be text, got {type(text).__name__}.", allowed=_ALLOWED_REF
            )
        body, at, version = text.strip().partition("@")
        kind, slash, name = body.partition("/")
        if not slash or not kind or not name or (at and not version):
            raise InputError(
                f'"{text}" is not an artifact reference.',
                allowed=_ALLOWED_REF,
                hint="For example dataset/aoi-demo@1 or model/adc.",
            )
        return cls(kind, name, version if at else None)

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}" + (f"@{self.version}" if self.version is not None else "")

    def with_version(self, version: str) -> ArtifactRef:
        return ArtifactRef(self.kind, self.name, version)


def _check_relpath(path: str) -> None:
    parts = path.split("/")
    if (
        not path
        or "\\" in path
        or "\x00" in path
        or path.startswith("/")
        or any(p in ("", ".", "..") for p in parts)
    ):
        raise InputError(
            f'"{path}" is not a path inside an artifact.',
            allowed="a relative POSIX path without empty, '.' or '..' parts",
        )


@dataclass(frozen=True)
class ObjectEntry:
    """One file of an artifact: its path inside the artifact and the object that holds it."""

    path: str
    sha256: str
    size: int

    def __post_init__(self) -> None:
        _check_relpath(self.path)
        if not isinstance(self.sha256, str) or not _SHA256.match(self.sha256):
            raise InputError(f'"{self.sha256}" is not a sha256.', allowed="64 lower-case hex digits")
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 0:
            raise InputError(
                f"Object size {self.size!r} of {self.path} is invalid.", allowed="an integer >= 0"
            )

    @property
    def key(self) -> str:
        """`objects/<sha[:2]>/<sha256><suffix>`: the suffix keeps `.parquet` and `.zip` visible
        to readers (Ray Data, Ray runtime_env) that go by file extension."""
        suffix = PurePosixPath(self.path).suffix.lower()
        if not _SUFFIX.match(suffix):
            suffix = ""
        return f"objects/{self.sha256[:2]}/{self.sha256}{suffix}"

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "size": self.size}


@dataclass(frozen=True)
class Manifest:
    """A complete artifact version: every file's path, hash and size, plus free-form `meta`."""

    kind: str
    name: str
    version: str
    objects: tuple[ObjectEntry, ...]
    meta: dict = field(default_factory=dict)
    created: str = ""

    @property
    def ref(self) -> ArtifactRef:
        return ArtifactRef(self.kind, self.name, self.version)

    @property
    def total_bytes(self) -> int:
        return sum(o.size for o in self.objects)

    def entry(self, path: str) -> ObjectEntry:
        for o in self.objects:
            if o.path == path:
                return o
        raise NotFoundError(
            f"{self.ref} has no file {path}.",
            allowed=_some(o.path for o in self.objects),
        )

    def unique_objects(self) -> list[ObjectEntry]:
        """One entry per object key (files with equal content and suffix share an object)."""
        seen: dict[str, ObjectEntry] = {}
        for o in self.objects:
            seen.setdefault(o.key, o)
        return list(seen.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "kind": self.kind,
            "name": self.name,
            "version": self.version,
            "created": self.created,
            "total_bytes": self.total_bytes,
            "meta": self.meta,
            "objects": [o.to_json() for o in self.objects],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Manifest:
        """Parse a manifest document; IntegrityError when it is not a valid one."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise IntegrityError(
                f"Not an {FORMAT} manifest (format is {d.get('format') if isinstance(d, dict) else d!r})."
            )
        try:
            objects = tuple(ObjectEntry(o["path"], o["sha256"], o["size"]) for o in d["objects"])
            ArtifactRef(d["kind"], d["name"], str(d["version"]))
            return cls(
                d["kind"],
                d["name"],
                str(d["version"]),
                objects,
                dict(d.get("meta") or {}),
                d.get("created", ""),
            )
        except (KeyError, TypeError, InputError) as e:
            raise IntegrityError(f"Invalid {FORMAT} manifest: {e}.") from e

    def dumps(self) -> bytes:
        return json.dumps(self.to_json(), indent=1, sort_keys=True).encode()


@dataclass
class VerifyResult:
    """What `ArtifactStore.verify` found: `bad` paths failed their hash or were missing, and
    `repaired` were copied again from a good store. `ok` means the artifact is now intact."""

    ref: str
    objects_checked: int
    bad: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return set(self.bad) <= set(self.repaired)


def _some(items, limit: int = 10) -> str:
    items = list(items)
    if not items:
        return "none"
    more = f" (and {len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _natural_key(version: str) -> tuple:
    """Sort "2" before "10" and "v2" before "v10"; numbers before text at the same position."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.findall(r"\d+|\D+", version))


def is_local(fs) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return "file" in protocols or "local" in protocols


def _protocol(fs) -> str:
    return fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]


def local_digest(path: str) -> str:
    """sha256 of a local file, through mmap: no copy into Python, and the GIL is released."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return hashlib.sha256(b"").hexdigest()
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return hashlib.sha256(m).hexdigest()


def fs_digest(fs, path: str, size: int | None = None, chunk: int = HASH_CHUNK) -> str:
    """sha256 of a file on any fsspec filesystem, read in ranged chunks."""
    if is_local(fs):
        return local_digest(path)
    if size is None:
        size = fs.size(path)
    h = hashlib.sha256()
    for start in range(0, size, chunk):
        h.update(fs.cat_file(path, start=start, end=min(size, start + chunk)))
    return h.hexdigest()


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
            if leaf.endswith(".json") and _VERSION.match(leaf[: -len(".json")]):
                found.append(leaf[: -len(".json")])
        return sorted(found, key=_natural_key)

    def resolve(self, ref: ArtifactRef) -> ArtifactRef:
        """`ref` with its version filled in (the latest when it names none); NotFoundError."""
        versions = self.versions(ref.kind, ref.name)
        if ref.version is None:
            if versions:
                return ref.with_version(versions[-1])
            raise NotFoundError(
                f"No {ref.kind} named {ref.name} in the store {self.url}.",
                allowed=f"{ref.kind} artifacts there: {_some(self._names(ref.kind))}",
                hint="Publish or push it first, or check the name.",
            )
        if ref.version in versions:
            return ref
        raise NotFoundError(
            f"No version {ref.version} of {ref.kind}/{ref.name} in the store {self.url}.",
            allowed=f"versions there: {_some(versions)}",
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
            _check_kind(k)
            for name in self._names(k):
                if _NAME.match(name):
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

    # --- publish, verify, download -------------------------------------------------------

    def publish(
        self,
        kind: str,
        name: str,
        version: str | None,
        source,
        *,
        meta: dict | None = None,
        workers: int = 4,
    ) -> Manifest:
        """Store the files under `source` (a local file or directory, or an fsspec directory
        URL) as `kind/name@version` (the next number when `version` is None) and return its
        manifest.

        Every file is hashed (streamed), objects the store already holds are skipped, the others
        are copied and verified at the store, and the manifest is written last. Raises
        IntegrityError when the version exists with other content; the same content returns the
        existing manifest.
        """
        from data.transfer import (  # the transfer engine builds on this module
            Job,
            send_objects,
        )

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
            version = self.next_version(kind, name)
        elif version in self.versions(kind, name):
            existing = self.manifest(ArtifactRef(kind, name, version))
            require_same_content(existing, Manifest(kind, name, version, entries), self.url)
            return existing
        manifest = Manifest(kind, name, version, entries, meta, _now())
        paths = {e.path: p for (_, p, _), e in zip(files, entries)}
        jobs = [Job(e, src_fs, paths[e.path]) for e in manifest.unique_objects()]
        send_objects(jobs, self, workers=workers)
        self.write_manifest(manifest)
        return manifest

    def verify(self, ref: ArtifactRef, repair_from: ArtifactStore | None = None) -> VerifyResult:
        """Rehash every object of `ref`; with `repair_from`, copy bad or missing ones again from
        that store (verified as they land)."""
        from data.transfer import Job, send_objects

        manifest = self.manifest(ref)
        unique = manifest.unique_objects()

        def good(entry: ObjectEntry) -> bool:
            try:
                return self.has_object(entry, verify=True)
            except FileNotFoundError:
                return False

        with ThreadPoolExecutor(max(1, min(4, len(unique)))) as ex:
            bad_keys = {e.key for e, ok in zip(unique, ex.map(good, unique)) if not ok}
        result = VerifyResult(
            str(manifest.ref),
            len(unique),
            bad=[o.path for o in manifest.objects if o.key in bad_keys],
        )
        if bad_keys and repair_from is not None:
            jobs = [Job(e, repair_from.fs, repair_from.path(e.key)) for e in unique if e.key in bad_keys]
            send_objects(jobs, self, check_existing=False)
            result.repaired = list(result.bad)
        return result

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


def require_same_content(existing: Manifest, new: Manifest, where: str) -> None:
    """IntegrityError unless both manifests list the same files with the same content."""
    if sorted(existing.objects, key=lambda o: o.path) != sorted(new.objects, key=lambda o: o.path):
        raise IntegrityError(
            f"{existing.ref} already exists in {where} with other content; artifacts are immutable.",
            hint="Publish the new content as a new version (leave the version out for the next number).",
        )


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
                _check_relpath(rel)
            except InputError as e:
                raise InputError(f"Cannot publish {path}: {e.what}", allowed=e.allowed) from e
            files.append((rel, path, int(meta["size"])))
    if not files:
        raise InputError(f"Nothing to publish at {source}: the directory has no files.")
    return fs, files


def file_urls(uri: str) -> dict[str, str] | None:
    """For an artifact manifest URL, {relative path: object URL} of all its files; None for any
    other URL (a plain directory). NotFoundError when the manifest does not exist."""
    m = _MANIFEST_URL.match(uri.rstrip("/"))
    if not m or m["kind"] not in KINDS:
        return None
    try:
        with fsspec.open(uri, "rb") as f:
            raw = f.read()
    except FileNotFoundError as e:
        raise NotFoundError(
            f"No artifact manifest at {uri}.",
            hint="Check the URL, or push the artifact to that store first.",
        ) from e
    try:
        manifest = Manifest.from_json(json.loads(raw))
    except (ValueError, IntegrityError) as e:
        raise IntegrityError(f"The artifact manifest at {uri} is damaged: {e}") from e
    return {o.path: f"{m['root']}/{o.key}" for o in manifest.objects}


def file_url(uri: str, relpath: str) -> str:
    """URL of the file `relpath` of `uri`: a plain directory URL, or an artifact manifest URL
    (`<store>/artifacts/<kind>/<name>/<version>.json`), whose object holding `relpath` is
    returned (NotFoundError when the artifact has no such file)."""
    files = file_urls(uri)
    if files is None:
        return f"{uri.rstrip('/')}/{relpath}"
    if relpath not in files:
        raise NotFoundError(f"The artifact {uri} has no file {relpath}.", allowed=_some(files))
    return files[relpath]
