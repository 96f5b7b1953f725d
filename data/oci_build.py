"""Build a container image without a Docker engine: `build_oci_archive` writes a
single-platform OCI image archive from files, byte-for-byte reproducible (sorted entries, zero
mtimes, root owner), so the same code folder always yields the same manifest digest.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path, PurePosixPath
from typing import Any

from configs.errors import InputError, NotFoundError
from data.oci_archive import (
    CONTAINERD_NAME,
    MT_OCI_CONFIG,
    MT_OCI_INDEX,
    MT_OCI_LAYER_GZIP,
    MT_OCI_MANIFEST,
    REF_NAME,
    RUNTIME_CONFIG_KEYS,
    canonical_json,
    check_ref_name,
    digest_of,
    split_ref,
)

__all__ = ["build_oci_archive"]


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
    check_ref_name(ref_name)
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
        diff_ids.append(digest_of(raw))
        digest = digest_of(packed)
        blobs[digest] = packed
        layer_descs.append({"mediaType": MT_OCI_LAYER_GZIP, "digest": digest, "size": len(packed)})

    image_config = {
        "architecture": architecture,
        "os": "linux",
        "config": runtime,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "adcp build_oci_archive"} for _ in diff_ids],
    }
    config_blob = canonical_json(image_config)
    config_digest = digest_of(config_blob)
    blobs[config_digest] = config_blob
    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_OCI_MANIFEST,
        "config": {"mediaType": MT_OCI_CONFIG, "digest": config_digest, "size": len(config_blob)},
        "layers": layer_descs,
    }
    manifest_blob = canonical_json(manifest)
    manifest_digest = digest_of(manifest_blob)
    blobs[manifest_digest] = manifest_blob
    _, tag = split_ref(ref_name)
    index = {
        "schemaVersion": 2,
        "mediaType": MT_OCI_INDEX,
        "manifests": [
            {
                "mediaType": MT_OCI_MANIFEST,
                "digest": manifest_digest,
                "size": len(manifest_blob),
                "platform": {"architecture": architecture, "os": "linux"},
                "annotations": {REF_NAME: tag, CONTAINERD_NAME: ref_name},
            }
        ],
    }

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.part")
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add_blob(tar, "oci-layout", canonical_json({"imageLayoutVersion": "1.0.0"}))
        _add_blob(tar, "index.json", canonical_json(index))
        for digest in sorted(blobs):
            _add_blob(tar, f"blobs/sha256/{digest.split(':', 1)[1]}", blobs[digest])
    tmp.replace(out)  # a reader never sees half an archive
    return manifest_digest
