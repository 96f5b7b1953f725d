"""Names and manifests of artifacts, and the sha256 helpers that address their objects.

An artifact is named by an `ArtifactRef` (`kind/name@version`); a version is described by its
`Manifest` (every file's relative path, sha256 and size, plus free-form meta). An object is
stored under `objects/<sha[:2]>/<sha256><suffix>` (`ObjectEntry.key`). The store that keeps
them is `data.artifacts`; the engine that copies them is `data.transfer`.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import PurePosixPath
from typing import Any

import fsspec

from configs.errors import InputError, IntegrityError, NotFoundError

__all__ = [
    "FORMAT",
    "HASH_CHUNK",
    "KINDS",
    "NAME_RE",
    "VERSION_RE",
    "ArtifactRef",
    "Manifest",
    "ObjectEntry",
    "VerifyResult",
    "check_kind",
    "check_relpath",
    "file_url",
    "file_urls",
    "fs_digest",
    "is_local",
    "local_digest",
    "natural_key",
    "require_same_content",
    "some",
    "utc_now",
]

FORMAT = "adcp-artifact/1"
KINDS = ("dataset", "annotations", "code", "image", "model", "checkpoint")

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
VERSION_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SUFFIX = re.compile(r"^\.[a-z0-9]{1,10}$")
_MANIFEST_URL = re.compile(
    r"^(?P<root>.+)/artifacts/(?P<kind>[^/]+)/(?P<name>[^/]+)/(?P<version>[^/]+)\.json$"
)
#: Read size when hashing a non-local object (local files are hashed through mmap).
HASH_CHUNK = 8 << 20

_ALLOWED_REF = (
    f"KIND/NAME or KIND/NAME@VERSION; KIND one of {', '.join(KINDS)}; NAME 1-63 of a-z 0-9 . _ - "
    "(starting with a letter or digit); VERSION 1-64 of A-Z a-z 0-9 . _ -"
)


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise InputError(f'Unknown artifact kind "{kind}".', allowed=", ".join(KINDS))


@dataclass(frozen=True)
class ArtifactRef:
    """Names an artifact: `kind/name`, or one version of it: `kind/name@version`."""

    kind: str
    name: str
    version: str | None = None

    def __post_init__(self) -> None:
        check_kind(self.kind)
        if not isinstance(self.name, str) or not NAME_RE.match(self.name):
            raise InputError(
                f'Invalid artifact name "{self.name}".',
                allowed="1-63 characters of a-z 0-9 . _ -, starting with a letter or digit",
                hint="Use a lower-case name such as aoi-demo.",
            )
        if self.version is not None and (
            not isinstance(self.version, str) or not VERSION_RE.match(self.version)
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


def check_relpath(path: str) -> None:
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
        check_relpath(self.path)
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
            allowed=some(o.path for o in self.objects),
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


def some(items, limit: int = 10) -> str:
    items = list(items)
    if not items:
        return "none"
    more = f" (and {len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def natural_key(version: str) -> tuple:
    """Sort "2" before "10" and "v2" before "v10"; numbers before text at the same position."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.findall(r"\d+|\D+", version))


def is_local(fs) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return "file" in protocols or "local" in protocols


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


def require_same_content(existing: Manifest, new: Manifest, where: str) -> None:
    """IntegrityError unless both manifests list the same files with the same content."""
    if sorted(existing.objects, key=lambda o: o.path) != sorted(new.objects, key=lambda o: o.path):
        raise IntegrityError(
            f"{existing.ref} already exists in {where} with other content; artifacts are immutable.",
            hint="Publish the new content as a new version (leave the version out for the next number).",
        )



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
        raise NotFoundError(f"The artifact {uri} has no file {relpath}.", allowed=some(files))
    return files[relpath]
