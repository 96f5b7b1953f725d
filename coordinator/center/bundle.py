"""Code bundles: the packages a site's Ray job or Serve app runs, zipped as a Ray `working_dir`.

The zip holds one top-level folder (what Ray expects of a remote `working_dir` URI) with the
packages that run inside a site's cluster. Its name carries the sha256 of its contents, so the
same code is written once and its URI doubles as the code version recorded in a model's lineage.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from data.artifacts import ArtifactRef, ArtifactStore

__all__ = ["SITE_PACKAGES", "BUNDLE_NAME", "BUNDLE_FILE", "ENTRYPOINTS", "CodeBundle", "build_zip", "publish"]
from data.publish import publish_artifact

#: Packages a site runs: the train job, the Serve app, and what they import.
SITE_PACKAGES = ("configs", "data", "train_jobs", "serve_apps")
BUNDLE_NAME = "adcp"
BUNDLE_FILE = "adcp-code.zip"
#: What a site runs from the bundle (recorded in the code artifact's metadata).
ENTRYPOINTS = {"train": "python -m train_jobs.train", "serve": "serve_apps.adc:app",
               "transfer": "python -m data.transfer"}
_FIXED_TIME = (2026, 1, 1, 0, 0, 0)  # zip entries get a fixed time so equal code gives equal bytes


@dataclass(frozen=True)
class CodeBundle:
    uri: str  # where the zip is stored (file://, s3://, ...), usable as runtime_env working_dir
    sha256: str

    @property
    def version(self) -> str:
        return self.sha256[:12]


def _source_root() -> Path:
    import configs

    return Path(configs.__file__).resolve().parent.parent


def build_zip(root: Path | None = None) -> bytes:
    """The bundle's bytes: every .py/.yaml/.json file of SITE_PACKAGES under `adcp-code/`."""
    root = root or _source_root()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for package in SITE_PACKAGES:
            for path in sorted((root / package).rglob("*")):
                if path.is_file() and path.suffix in {".py", ".yaml", ".json"} and "__pycache__" not in path.parts:
                    info = zipfile.ZipInfo(f"adcp-code/{path.relative_to(root).as_posix()}", _FIXED_TIME)
                    info.compress_type = zipfile.ZIP_DEFLATED
                    zf.writestr(info, path.read_bytes())
    return buf.getvalue()


def publish(store: ArtifactStore, root: Path | None = None) -> CodeBundle:
    """Publish the bundle as artifact `code/adcp@<sha12>` in `store` unless it is already there."""
    blob = build_zip(root)
    digest = hashlib.sha256(blob).hexdigest()
    ref = ArtifactRef("code", BUNDLE_NAME, digest[:12])
    if not store.exists(ref):
        with tempfile.TemporaryDirectory(prefix="adcp-bundle-") as tmp:
            path = Path(tmp) / BUNDLE_FILE
            path.write_bytes(blob)
            publish_artifact(store, "code", BUNDLE_NAME, ref.version, path, meta={"entrypoints": ENTRYPOINTS,
                                                                         "packages": list(SITE_PACKAGES)})
    manifest = store.manifest(ref)
    return CodeBundle(store.object_url(manifest.entry(BUNDLE_FILE)), digest)
