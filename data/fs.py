"""fsspec URLs as pyarrow filesystems, for the Ray APIs (Ray Data, Ray Train storage) that take them."""

from __future__ import annotations

import fsspec
import pyarrow.fs as pafs

__all__ = ["arrow_fs"]


def arrow_fs(url: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path) for any fsspec URL.

    Local paths get pyarrow's native LocalFileSystem; every other protocol is wrapped with
    `FSSpecHandler`, so whatever fsspec can reach (s3 with a custom endpoint, memory://, ...)
    Ray can read and write with the same credentials and settings.
    """
    fs, path = fsspec.core.url_to_fs(url)
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    if "file" in protocols or "local" in protocols:
        return pafs.LocalFileSystem(), path
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path
