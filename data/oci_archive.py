"""Container image archives: the OCI/docker archive formats, and reading and checking one
(`inspect_archive`, `read_layer_files`) without a Docker engine.

`data.oci_build` writes archives; `data.images` keeps them as `image` artifacts; the registry
client that pushes them to a site's registry is the coordinator's (`coordinator.center.registry`).
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from configs.errors import InputError, IntegrityError, NotFoundError

__all__ = [
    "CONTAINERD_NAME",
    "DIGEST_RE",
    "DOCKER_ARCHIVE",
    "MT_DOCKER_MANIFEST",
    "MT_OCI_CONFIG",
    "MT_OCI_INDEX",
    "MT_OCI_LAYER_GZIP",
    "MT_OCI_LAYER_TAR",
    "MT_OCI_MANIFEST",
    "OCI_ARCHIVE",
    "REF_NAME",
    "REPO_RE",
    "RUNTIME_CONFIG_KEYS",
    "TAG_RE",
    "ImageInfo",
    "LayerInfo",
    "canonical_json",
    "check_ref_name",
    "digest_of",
    "inspect_archive",
    "read_layer_files",
    "split_ref",
]

OCI_ARCHIVE = "oci-archive"
DOCKER_ARCHIVE = "docker-archive"

MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
_LAYER_TYPES = {
    MT_OCI_LAYER_GZIP,
    MT_OCI_LAYER_TAR,
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
}
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"

#: Keys of an OCI image config's runtime section (`config` in the image config JSON).
RUNTIME_CONFIG_KEYS = ("User", "ExposedPorts", "Env", "Entrypoint", "Cmd", "Volumes", "WorkingDir",
                       "Labels", "StopSignal")

# Docker reference grammar (distribution/reference), without the domain: lowercase path
# components separated by "/", a tag of word characters, dots and dashes.
REPO_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class LayerInfo:
    """One layer of an image: its digest and size as stored in the archive, and its diff_id
    (sha256 of the uncompressed tar, from the image config)."""

    digest: str
    size: int
    media_type: str
    diff_id: str


@dataclass(frozen=True)
class ImageInfo:
    """What an image archive holds, as read and checked by `inspect_archive`.

    `manifest_digest` is the digest a registry will report for an OCI archive; a docker archive
    has no manifest of its own (skopeo writes one when pushing), so it is None there and
    `config_digest` (the image ID) is the stable name of the image in both formats.
    """

    format: str
    manifest_digest: str | None
    config_digest: str
    layers: tuple[LayerInfo, ...]
    size: int
    ref_name: str | None
    architecture: str | None
    os: str | None

    @property
    def repo(self) -> str | None:
        return split_ref(self.ref_name)[0] if self.ref_name else None

    @property
    def tag(self) -> str | None:
        return split_ref(self.ref_name)[1] if self.ref_name else None

    def meta(self) -> dict[str, Any]:
        """The artifact meta of an `image` artifact holding this archive."""
        return {
            "format": self.format,
            "manifest_digest": self.manifest_digest,
            "config_digest": self.config_digest,
            "layers": [layer.digest for layer in self.layers],
            "size": self.size,
            "ref_name": self.ref_name,
            "repo": self.repo,
            "tag": self.tag,
            "architecture": self.architecture,
            "os": self.os,
        }


def split_ref(ref: str) -> tuple[str, str]:
    """("adcp/operator", "1") from "adcp/operator:1"; a ref without a tag gets "latest"."""
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = ref.rsplit(":", 1)
        return repo, tag
    return ref, "latest"


def digest_of(blob: bytes) -> str:
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def check_ref_name(ref_name: str) -> tuple[str, str]:
    repo, tag = split_ref(ref_name)
    if not REPO_RE.match(repo) or not TAG_RE.match(tag):
        raise InputError(
            f'Got "{ref_name}" for the image reference.',
            allowed="REPO:TAG with a lowercase repository path (letters, digits, '.', '_', '-', "
            "'/' between components) and a tag of up to 128 letters, digits, '_', '.', '-'",
            hint='Use a name like "adcp/operator:1".',
        )
    return repo, tag



def _bad_archive(path: Path, what: str) -> InputError:
    return InputError(
        f"{path} is not a valid image archive: {what}",
        allowed="an OCI image archive (oci-layout, index.json, blobs/sha256/...) or a docker "
        "archive (manifest.json, as written by `docker save`)",
        hint="Create one with `docker save`, `podman save --format oci-archive`, `skopeo copy ... "
        "oci-archive:FILE` or data.oci_build.build_oci_archive.",
    )


class _Archive:
    """Random access to the members of an image tar (plain or compressed)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.tar = tarfile.open(path, mode="r:*")  # noqa: SIM115  (closed by close())
        except (tarfile.TarError, EOFError, OSError, ValueError) as e:
            raise _bad_archive(path, f"it cannot be read as a tar ({e}).") from e
        try:
            self.members = {m.name.removeprefix("./"): m for m in self.tar.getmembers()}
        except (tarfile.TarError, EOFError, OSError, ValueError) as e:
            self.tar.close()
            raise _bad_archive(path, f"it cannot be read as a tar ({e}).") from e

    def has(self, name: str) -> bool:
        member = self.members.get(name)
        return member is not None and (member.isfile() or member.issym() or member.islnk())

    def open(self, name: str) -> IO[bytes]:
        # Links are followed inside the archive (skopeo's docker archives link layer.tar files).
        try:
            f = self.tar.extractfile(self.members[name]) if self.has(name) else None
        except KeyError:  # a link to a member that is not there
            f = None
        if f is None:
            raise _bad_archive(self.path, f"{name} is missing.")
        return f

    def read_json(self, name: str, limit: int = 16 << 20) -> tuple[bytes, Any]:
        member = self.members.get(name)
        if member is not None and member.size > limit:
            raise _bad_archive(self.path, f"{name} is {member.size} bytes, too large for JSON metadata.")
        blob = self.open(name).read()
        try:
            return blob, json.loads(blob)
        except ValueError as e:
            raise _bad_archive(self.path, f"{name} is not valid JSON ({e}).") from e

    def hash(self, name: str) -> tuple[str, int, bool]:
        """(sha256 digest, size, gzip'ed?) of a member, streamed."""
        h = hashlib.sha256()
        size = 0
        first = b""
        with self.open(name) as f:
            while chunk := f.read(_CHUNK):
                if not first:
                    first = chunk[:2]
                h.update(chunk)
                size += len(chunk)
        return "sha256:" + h.hexdigest(), size, first == b"\x1f\x8b"

    def close(self) -> None:
        self.tar.close()


def _blob_name(path: Path, digest: Any) -> str:
    if not isinstance(digest, str) or not DIGEST_RE.match(digest):
        raise _bad_archive(path, f"{digest!r} is not a sha256 digest.")
    return f"blobs/sha256/{digest.split(':', 1)[1]}"


def _checked_blob(ar: _Archive, desc: Any, what: str) -> tuple[str, int]:
    """(member name, size) of the blob a descriptor names, after checking its digest and size."""
    if not isinstance(desc, dict) or "digest" not in desc:
        raise _bad_archive(ar.path, f"the {what} descriptor has no digest.")
    name = _blob_name(ar.path, desc["digest"])
    digest, size, _ = ar.hash(name)
    if digest != desc["digest"]:
        raise IntegrityError(
            f"{ar.path}: the {what} blob {name} hashes to {digest}, not the digest it is stored under.",
            hint="The archive is damaged; build or save it again.",
        )
    if "size" in desc and desc["size"] != size:
        raise IntegrityError(
            f"{ar.path}: the {what} blob {desc['digest'][:19]}... is {size} bytes; its descriptor "
            f"says {desc['size']}.",
            hint="The archive is damaged; build or save it again.",
        )
    return name, size


def _diff_ids(path: Path, config: Any, layer_count: int) -> list[str]:
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") if isinstance(config, dict) else None
    if not isinstance(diff_ids, list) or len(diff_ids) != layer_count:
        raise _bad_archive(
            path, f"the image config lists {len(diff_ids) if isinstance(diff_ids, list) else 'no'} "
            f"rootfs.diff_ids for {layer_count} layers."
        )
    return diff_ids


def _inspect_oci(ar: _Archive) -> ImageInfo:
    _, layout = ar.read_json("oci-layout")
    if not isinstance(layout, dict) or "imageLayoutVersion" not in layout:
        raise _bad_archive(ar.path, "oci-layout has no imageLayoutVersion.")
    _, index = ar.read_json("index.json")
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(manifests, list) or len(manifests) != 1:
        raise _bad_archive(
            ar.path,
            f"index.json lists {len(manifests) if isinstance(manifests, list) else 'no'} manifests; "
            "one single-platform image is supported.",
        )
    entry = manifests[0]
    if not isinstance(entry, dict) or entry.get("mediaType") not in (MT_OCI_MANIFEST, MT_DOCKER_MANIFEST):
        media = entry.get("mediaType") if isinstance(entry, dict) else None
        raise _bad_archive(
            ar.path, f"index.json points at a {media!r}; a single-platform image manifest is supported."
        )
    name, _ = _checked_blob(ar, entry, "manifest")
    _, manifest = ar.read_json(name)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("layers"), list):
        raise _bad_archive(ar.path, "the image manifest has no layers list.")
    config_name, _ = _checked_blob(ar, manifest.get("config"), "config")
    _, config = ar.read_json(config_name)
    diff_ids = _diff_ids(ar.path, config, len(manifest["layers"]))
    layers = []
    for desc, diff_id in zip(manifest["layers"], diff_ids):
        _, size = _checked_blob(ar, desc, "layer")
        media = desc.get("mediaType", "")
        if media not in _LAYER_TYPES:
            raise _bad_archive(
                ar.path, f"a layer has media type {media!r}; allowed: {', '.join(sorted(_LAYER_TYPES))}."
            )
        layers.append(LayerInfo(desc["digest"], size, media, diff_id))
    annotations = entry.get("annotations") or {}
    ref_name = annotations.get(CONTAINERD_NAME) or annotations.get(REF_NAME)
    return ImageInfo(
        format=OCI_ARCHIVE,
        manifest_digest=entry["digest"],
        config_digest=manifest["config"]["digest"],
        layers=tuple(layers),
        size=ar.path.stat().st_size,
        ref_name=ref_name,
        architecture=config.get("architecture"),
        os=config.get("os"),
    )


def _inspect_docker(ar: _Archive) -> ImageInfo:
    _, entries = ar.read_json("manifest.json")
    if not isinstance(entries, list) or len(entries) != 1 or not isinstance(entries[0], dict):
        raise _bad_archive(
            ar.path,
            f"manifest.json lists {len(entries) if isinstance(entries, list) else 'no'} images; "
            "one image per archive is supported.",
        )
    entry = entries[0]
    config_name, layer_names = entry.get("Config"), entry.get("Layers")
    if not isinstance(config_name, str) or not isinstance(layer_names, list):
        raise _bad_archive(ar.path, "manifest.json has no Config and Layers.")
    config_blob, config = ar.read_json(config_name)
    diff_ids = _diff_ids(ar.path, config, len(layer_names))
    layers = []
    for name, diff_id in zip(layer_names, diff_ids):
        digest, size, gzipped = ar.hash(str(name))
        if not gzipped and digest != diff_id:
            raise IntegrityError(
                f"{ar.path}: layer {name} hashes to {digest}; the image config records {diff_id}.",
                hint="The archive is damaged; save it again.",
            )
        media = MT_OCI_LAYER_GZIP if gzipped else MT_OCI_LAYER_TAR
        layers.append(LayerInfo(digest, size, media, diff_id))
    tags = entry.get("RepoTags") or []
    return ImageInfo(
        format=DOCKER_ARCHIVE,
        manifest_digest=None,
        config_digest=digest_of(config_blob),
        layers=tuple(layers),
        size=ar.path.stat().st_size,
        ref_name=tags[0] if tags else None,
        architecture=config.get("architecture"),
        os=config.get("os"),
    )


def inspect_archive(path: Path | str) -> ImageInfo:
    """Read and check an OCI or docker image archive; returns what it holds.

    Every blob is re-hashed against its digest (and size). Raises NotFoundError when `path` does
    not exist, InputError when it is not an image archive, IntegrityError when a blob is damaged.
    An archive with both layouts (docker >= 25 writes both) is read as OCI.
    """
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"No image archive at {path}.", hint="Check the path.")
    ar = _Archive(path)
    try:
        if ar.has("oci-layout") and ar.has("index.json"):
            return _inspect_oci(ar)
        if ar.has("manifest.json"):
            return _inspect_docker(ar)
        found = ", ".join(sorted(ar.members)[:5]) or "nothing"
        raise _bad_archive(path, f"it has neither oci-layout + index.json nor manifest.json (found {found}).")
    finally:
        ar.close()


def read_layer_files(archive: Path | str, layer: int = -1) -> dict[str, bytes]:
    """{path: bytes} of the regular files in one layer of an archive (for checks and tests)."""
    path = Path(archive)
    info = inspect_archive(path)
    desc = info.layers[layer]
    ar = _Archive(path)
    try:
        if info.format == OCI_ARCHIVE:
            name = _blob_name(path, desc.digest)
        else:
            _, entries = ar.read_json("manifest.json")
            name = entries[0]["Layers"][layer]
        with ar.open(name) as f, tarfile.open(fileobj=f, mode="r|*") as layer_tar:
            return {
                m.name.removeprefix("./"): layer_tar.extractfile(m).read()  # type: ignore[union-attr]
                for m in layer_tar
                if m.isfile()
            }
    finally:
        ar.close()
