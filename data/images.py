"""Container images ("operator images"): build and read OCI/docker archive tars, keep them as
`image` artifacts, and push them to (or pull them from) a site's registry with `skopeo`.

No Docker engine is needed: `build_oci_archive` writes a single-platform OCI image archive from
files, byte-for-byte reproducible (sorted entries, zero mtimes, root owner), so the same code
folder always yields the same manifest digest. `skopeo` is the only external tool.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from configs.errors import InputError, IntegrityError, NotFoundError, SiteError
from data.artifacts import ArtifactRef, ArtifactStore, Manifest

__all__ = [
    "ARCHIVE_NAME",
    "ImageInfo",
    "LayerInfo",
    "RegistryError",
    "build_oci_archive",
    "download_image",
    "inspect_archive",
    "publish_image",
    "pull_from_registry",
    "push_to_registry",
    "read_layer_files",
]

KIND = "image"
#: The single file an `image` artifact holds.
ARCHIVE_NAME = "image.tar"
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
_REF_NAME = "org.opencontainers.image.ref.name"
_CONTAINERD_NAME = "io.containerd.image.name"

#: Keys of an OCI image config's runtime section (`config` in the image config JSON).
RUNTIME_CONFIG_KEYS = ("User", "ExposedPorts", "Env", "Entrypoint", "Cmd", "Volumes", "WorkingDir",
                       "Labels", "StopSignal")

# Docker reference grammar (distribution/reference), without the domain: lowercase path
# components separated by "/", a tag of word characters, dots and dashes.
_REPO_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_REGISTRY_RE = re.compile(r"^[A-Za-z0-9.-]+(?::[0-9]{1,5})?$|^\[[0-9a-fA-F:]+\](?::[0-9]{1,5})?$")
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_CHUNK = 1 << 20


class RegistryError(SiteError):
    """A registry could not be reached, refused a push or pull, or `skopeo` failed."""

    http_status = 502


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
        return _split_ref(self.ref_name)[0] if self.ref_name else None

    @property
    def tag(self) -> str | None:
        return _split_ref(self.ref_name)[1] if self.ref_name else None

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


def _split_ref(ref: str) -> tuple[str, str]:
    """("adcp/operator", "1") from "adcp/operator:1"; a ref without a tag gets "latest"."""
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = ref.rsplit(":", 1)
        return repo, tag
    return ref, "latest"


def _digest(blob: bytes) -> str:
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def _canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


# ---------------------------------------------------------------------------------------------
# Building


def _check_ref_name(ref_name: str) -> tuple[str, str]:
    repo, tag = _split_ref(ref_name)
    if not _REPO_RE.match(repo) or not _TAG_RE.match(tag):
        raise InputError(
            f'Got "{ref_name}" for the image reference.',
            allowed="REPO:TAG with a lowercase repository path (letters, digits, '.', '_', '-', "
            "'/' between components) and a tag of up to 128 letters, digits, '_', '.', '-'",
            hint='Use a name like "adcp/operator:1".',
        )
    return repo, tag


def _layer_files_from_dir(source: Path, prefix: str) -> dict[str, bytes]:
    if not source.is_dir():
        raise NotFoundError(f"{source} is not a folder.", hint="Pass the code folder to package.")
    files: dict[str, bytes] = {}
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source).as_posix()
        if path.is_symlink() or not path.is_file():
            continue  # folders are written from the file paths; links would escape the folder
        if "__pycache__" in path.parts or path.suffix == ".pyc":
            continue
        files[f"{prefix}/{rel}" if prefix else rel] = path.read_bytes()
    if not files:
        raise InputError(f"{source} holds no files to package.", hint="Pass a folder with code in it.")
    return files


def _check_layer_path(name: str) -> str:
    pure = PurePosixPath(name)
    if not name or pure.is_absolute() or ".." in pure.parts or name.endswith("/") or "\\" in name:
        raise InputError(
            f'Got "{name}" as a file path in an image layer.',
            allowed="relative POSIX paths without '..' (e.g. app/main.py)",
        )
    return pure.as_posix()


def _tar_layer(files: dict[str, bytes]) -> bytes:
    """An uncompressed, reproducible layer tar: parent folders first, sorted, zero times, root."""
    names = {_check_layer_path(n): blob for n, blob in files.items()}
    folders = sorted({p.as_posix() for n in names for p in PurePosixPath(n).parents if str(p) != "."})
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted([*((f, None) for f in folders), *names.items()], key=lambda e: e[0]):
            name, blob = entry
            info = tarfile.TarInfo(name)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if blob is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                info.mode = 0o644
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
    return buf.getvalue()


def _add_blob(tar: tarfile.TarFile, name: str, blob: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = 0
    info.mode = 0o644
    info.size = len(blob)
    tar.addfile(info, io.BytesIO(blob))


def build_oci_archive(
    out: Path | str,
    layers: list[dict[str, bytes]] | Path | str,
    *,
    ref_name: str = "adcp/operator:1",
    config: dict[str, Any] | None = None,
    architecture: str = "amd64",
    dir_prefix: str = "app",
) -> str:
    """Write a single-platform OCI image archive to `out` and return its manifest digest.

    `layers` is a list of layers, each `{relative path: file bytes}` (lowest layer first), or a
    folder, which becomes one layer with its files under `dir_prefix/` (and `WorkingDir` set to
    `/dir_prefix` unless `config` names one). `config` is the image's runtime section
    (`Env`, `Cmd`, `Entrypoint`, `WorkingDir`, `Labels`, ...; see RUNTIME_CONFIG_KEYS).
    `ref_name` ("repo:tag") is recorded in index.json (`org.opencontainers.image.ref.name` holds
    the tag, `io.containerd.image.name` the full name). Raises InputError on a bad name, path
    or config key.
    """
    _check_ref_name(ref_name)
    runtime = dict(config or {})
    unknown = sorted(set(runtime) - set(RUNTIME_CONFIG_KEYS))
    if unknown:
        raise InputError(
            f"Unknown image config keys: {', '.join(unknown)}.",
            allowed=", ".join(RUNTIME_CONFIG_KEYS),
            hint="Keys follow the OCI image config's `config` section (case-sensitive).",
        )
    if isinstance(layers, (str, Path)):
        prefix = dir_prefix.strip("/")
        layer_files = [_layer_files_from_dir(Path(layers), prefix)]
        if prefix:
            runtime.setdefault("WorkingDir", f"/{prefix}")
    else:
        layer_files = list(layers)
    if not layer_files:
        raise InputError("An image needs at least one layer.", hint="Pass one dict of files per layer.")

    layer_descs, diff_ids, blobs = [], [], {}
    for files in layer_files:
        raw = _tar_layer(files)
        packed = gzip.compress(raw, compresslevel=6, mtime=0)
        diff_ids.append(_digest(raw))
        digest = _digest(packed)
        blobs[digest] = packed
        layer_descs.append({"mediaType": MT_OCI_LAYER_GZIP, "digest": digest, "size": len(packed)})

    image_config = {
        "architecture": architecture,
        "os": "linux",
        "config": runtime,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "adcp build_oci_archive"} for _ in diff_ids],
    }
    config_blob = _canonical_json(image_config)
    config_digest = _digest(config_blob)
    blobs[config_digest] = config_blob
    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_OCI_MANIFEST,
        "config": {"mediaType": MT_OCI_CONFIG, "digest": config_digest, "size": len(config_blob)},
        "layers": layer_descs,
    }
    manifest_blob = _canonical_json(manifest)
    manifest_digest = _digest(manifest_blob)
    blobs[manifest_digest] = manifest_blob
    _, tag = _split_ref(ref_name)
    index = {
        "schemaVersion": 2,
        "mediaType": MT_OCI_INDEX,
        "manifests": [
            {
                "mediaType": MT_OCI_MANIFEST,
                "digest": manifest_digest,
                "size": len(manifest_blob),
                "platform": {"architecture": architecture, "os": "linux"},
                "annotations": {_REF_NAME: tag, _CONTAINERD_NAME: ref_name},
            }
        ],
    }

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.part")
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add_blob(tar, "oci-layout", _canonical_json({"imageLayoutVersion": "1.0.0"}))
        _add_blob(tar, "index.json", _canonical_json(index))
        for digest in sorted(blobs):
            _add_blob(tar, f"blobs/sha256/{digest.split(':', 1)[1]}", blobs[digest])
    tmp.replace(out)  # a reader never sees half an archive
    return manifest_digest


# ---------------------------------------------------------------------------------------------
# Reading


def _bad_archive(path: Path, what: str) -> InputError:
    return InputError(
        f"{path} is not a valid image archive: {what}",
        allowed="an OCI image archive (oci-layout, index.json, blobs/sha256/...) or a docker "
        "archive (manifest.json, as written by `docker save`)",
        hint="Create one with `docker save`, `podman save --format oci-archive`, `skopeo copy ... "
        "oci-archive:FILE` or data.images.build_oci_archive.",
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
    if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
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
    ref_name = annotations.get(_CONTAINERD_NAME) or annotations.get(_REF_NAME)
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
        config_digest=_digest(config_blob),
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


# ---------------------------------------------------------------------------------------------
# Registries (skopeo)


def _skopeo() -> str:
    found = shutil.which("skopeo")
    if not found:
        raise RegistryError(
            "skopeo is not installed; it is needed to push images to a registry.",
            hint="Install it (`apt-get install skopeo` on Debian/Ubuntu, or `make install-test`).",
        )
    return found


def _check_target(registry: str, repo: str, tag: str) -> str:
    if not _REGISTRY_RE.match(registry):
        raise InputError(
            f'Got "{registry}" for the registry.',
            allowed="HOST or HOST:PORT, without a scheme or path (e.g. 127.0.0.1:5000, harbor.fab-a)",
        )
    if not _REPO_RE.match(repo):
        raise InputError(
            f'Got "{repo}" for the repository.',
            allowed="lowercase path components of letters, digits, '.', '_', '-', separated by '/'",
            hint='Use a name like "adcp/operator".',
        )
    if not _TAG_RE.match(tag):
        raise InputError(
            f'Got "{tag}" for the tag.',
            allowed="up to 128 letters, digits, '_', '.', '-', not starting with '.' or '-'",
        )
    return f"docker://{registry}/{repo}:{tag}"


def _skopeo_message(stderr: str) -> str:
    """skopeo's own one-line error, out of its logrus output (`level=fatal msg="..."`)."""
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    for line in reversed(lines):
        m = re.search(r'level=(?:fatal|error) msg="((?:[^"\\]|\\.)*)"', line)
        if m:
            try:
                text = json.loads(f'"{m.group(1)}"')
            except ValueError:
                text = m.group(1)
            break
    else:
        text = lines[-1] if lines else "no message"
    return text if len(text) <= 600 else text[:600] + "..."


def _authfile(tmp: Path, registry: str, creds: str | None) -> Path | None:
    """An auth file (mode 600) for `creds` ("user:password"), so the password is not in argv."""
    if creds is None:
        return None
    if ":" not in creds:
        raise InputError("Registry credentials must be given as USER:PASSWORD.", hint="Check --creds.")
    path = tmp / "auth.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"auths": {registry: {"auth": base64.b64encode(creds.encode()).decode()}}}, f)
    return path


def _run_skopeo(args: list[str], what: str, timeout_s: float, hint: str) -> None:
    try:
        proc = subprocess.run(
            [_skopeo(), *args],
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as e:
        raise RegistryError(
            f"{what} did not finish within {timeout_s:g} s.",
            hint="Check that the registry is reachable and not overloaded, or raise the timeout.",
        ) from e
    if proc.returncode != 0:
        raise RegistryError(
            f"{what} failed: {_skopeo_message(proc.stderr)}", hint=hint
        )


def _tls(flag: str, tls_verify: bool) -> str:
    return f"--{flag}-tls-verify={'true' if tls_verify else 'false'}"


def _archive_path(path: Path) -> str:
    text = str(path.resolve())
    if ":" in text:  # skopeo reads "oci-archive:PATH:REF"; a colon in PATH would split it
        raise InputError(f"{text} contains ':', which skopeo cannot take in an archive path.",
                         hint="Move the archive to a path without ':'.")
    return text


def push_to_registry(
    archive: Path | str,
    registry: str,
    repo: str,
    tag: str,
    *,
    tls_verify: bool = False,
    creds: str | None = None,
    timeout_s: float = 300,
) -> str:
    """Copy an image archive into `registry/repo:tag` with `skopeo copy`; returns the manifest
    digest the registry stores it under.

    Raises InputError for a bad archive or name, RegistryError (one line of skopeo's message)
    when the registry cannot be reached or refuses the image, or skopeo is missing.
    """
    archive = Path(archive)
    info = inspect_archive(archive)
    dest = _check_target(registry, repo, tag)
    with tempfile.TemporaryDirectory(prefix="adcp-skopeo-") as tmp:
        digestfile = Path(tmp) / "digest"
        args = ["copy", "--quiet", _tls("dest", tls_verify), "--digestfile", str(digestfile)]
        auth = _authfile(Path(tmp), registry, creds)
        if auth is not None:
            args += ["--dest-authfile", str(auth)]
        args += [f"{info.format}:{_archive_path(archive)}", dest]
        _run_skopeo(
            args,
            f"Pushing {archive.name} to {registry}/{repo}:{tag}",
            timeout_s,
            "Check the registry address, that the registry is running and reachable from here, "
            "and the credentials (creds=USER:PASSWORD); use tls_verify=False for a plain-HTTP registry.",
        )
        digest = digestfile.read_text().strip()
    if not _DIGEST_RE.match(digest):
        raise RegistryError(f"skopeo reported {digest!r} as the pushed digest, not a sha256 digest.")
    return digest


def pull_from_registry(
    registry: str,
    repo: str,
    tag: str,
    out: Path | str,
    *,
    tls_verify: bool = False,
    creds: str | None = None,
    timeout_s: float = 300,
) -> Path:
    """Copy `registry/repo:tag` into an OCI archive at `out` (replaced if present); returns `out`.

    Raises RegistryError when the registry cannot be reached or has no such image.
    """
    src = _check_target(registry, repo, tag)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(f".{out.name}.part")
    part.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="adcp-skopeo-") as tmp:
        args = ["copy", "--quiet", _tls("src", tls_verify)]
        auth = _authfile(Path(tmp), registry, creds)
        if auth is not None:
            args += ["--src-authfile", str(auth)]
        # The reference inside the archive is "repo:tag" (skopeo splits PATH:REF at the first ':').
        args += [src, f"oci-archive:{_archive_path(part)}:{repo}:{tag}"]
        try:
            _run_skopeo(
                args,
                f"Pulling {registry}/{repo}:{tag}",
                timeout_s,
                "Check the registry address, that it is reachable, and that it holds that "
                "repository and tag.",
            )
        except BaseException:
            part.unlink(missing_ok=True)
            raise
    part.replace(out)
    return out


# ---------------------------------------------------------------------------------------------
# The `image` artifact kind


def publish_image(
    store: ArtifactStore,
    name: str,
    archive: Path | str,
    version: str | None = None,
    *,
    ref_name: str | None = None,
) -> Manifest:
    """Store an image archive as the `image` artifact `name` (next version when None).

    The artifact holds one file, `image.tar`; its meta is `ImageInfo.meta()` (format, digests,
    layers, repo/tag). `ref_name` ("repo:tag") overrides the name recorded in the archive.
    Raises InputError for a tar that is not an image archive.
    """
    archive = Path(archive)
    info = inspect_archive(archive)
    meta = info.meta()
    if ref_name is not None:
        repo, tag = _check_ref_name(ref_name)
        meta.update(ref_name=ref_name, repo=repo, tag=tag)
    with tempfile.TemporaryDirectory(prefix="adcp-image-") as tmp:
        staged = Path(tmp) / ARCHIVE_NAME
        try:
            os.link(archive, staged)  # no copy of a multi-GB tar when the temp dir is on its disk
        except OSError:
            shutil.copyfile(archive, staged)
        return store.publish(KIND, name, version, Path(tmp), meta=meta)


def download_image(store: ArtifactStore, name: str, version: str | None, dest_dir: Path | str) -> Path:
    """Materialise the `image` artifact `name@version` (latest when None) in `dest_dir`, check it
    against its recorded digests, and return the path of its `image.tar`.

    Raises NotFoundError when there is no such artifact, IntegrityError when the tar does not
    match its meta.
    """
    ref = ArtifactRef(KIND, name, version)
    manifest = store.manifest(ref)
    folder = Path(store.download(ArtifactRef(KIND, name, manifest.version), Path(dest_dir)))
    path = folder / ARCHIVE_NAME if folder.is_dir() else folder
    if not path.is_file():
        raise IntegrityError(f"image/{name}@{manifest.version} holds no {ARCHIVE_NAME}.")
    info = inspect_archive(path)
    if info.config_digest != manifest.meta.get("config_digest") or (
        info.manifest_digest != manifest.meta.get("manifest_digest")
    ):
        raise IntegrityError(
            f"image/{name}@{manifest.version}: {ARCHIVE_NAME} holds image {info.config_digest}; "
            f"its meta records {manifest.meta.get('config_digest')}.",
            hint="Publish the image again.",
        )
    return path
