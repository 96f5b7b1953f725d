"""The `image` artifact kind: container images ("operator images") kept in an artifact store
as one OCI or docker archive tar each, with what the archive holds as the artifact's meta.

Building an archive is `data.oci_build`, reading one `data.oci_archive`; pushing one into a
site's registry is the coordinator's (`coordinator.center.registry`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from configs.errors import IntegrityError
from data.artifacts import ArtifactRef, ArtifactStore, Manifest
from data.oci_archive import check_ref_name, inspect_archive
from data.publish import publish_artifact

__all__ = ["ARCHIVE_NAME", "KIND", "download_image", "publish_image"]

KIND = "image"
#: The single file an `image` artifact holds.
ARCHIVE_NAME = "image.tar"


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
        repo, tag = check_ref_name(ref_name)
        meta.update(ref_name=ref_name, repo=repo, tag=tag)
    with tempfile.TemporaryDirectory(prefix="adcp-image-") as tmp:
        staged = Path(tmp) / ARCHIVE_NAME
        try:
            os.link(archive, staged)  # no copy of a multi-GB tar when the temp dir is on its disk
        except OSError:
            shutil.copyfile(archive, staged)
        return publish_artifact(store, KIND, name, version, Path(tmp), meta=meta)


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
