"""Datasets on any fsspec URL: Parquet image shards, a versioned annotations table, a manifest.

Layout of a dataset at `<url>` (e.g. `file:///.../datasets/aoi-demo/1`), or of a dataset artifact
in an artifact store (`<store>/artifacts/dataset/<name>/<version>.json`, see `data.artifacts`):

    images/part-00000.parquet ...   IMAGE_SCHEMA rows (PNG bytes + capture metadata)
    annotations/v1.parquet          ANNOTATION_SCHEMA rows keyed by image_id
    manifest.json                   schema, row counts per class and split, sha256 per file

`manifest.json` is written last: a reader that finds it finds a complete dataset. The shards are
plain Parquet, so `ray.data.read_parquet(dataset.shard_urls)` and `pyarrow.parquet` read them too.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from configs.errors import IntegrityError, NotFoundError
from configs.models import SynthConfig
from data.artifacts import file_urls
from data.schema import ANNOTATION_SCHEMA, DEFECT_CLASSES, IMAGE_SCHEMA, split_of
from data.synth import SynthImage, generate

__all__ = ["FORMAT", "MANIFEST", "Dataset", "labelled_counts", "open_dataset", "write_synthetic"]

MANIFEST = "manifest.json"
FORMAT = "adcp-dataset/1"


def _sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


@dataclass(frozen=True)
class Dataset:
    """A complete dataset: its URL (a directory, or an artifact manifest) and parsed manifest.

    `files` maps each relative path to its URL when the dataset is an artifact (object URLs in
    the store); None for a plain directory.
    """

    url: str
    manifest: dict[str, Any]
    files: dict[str, str] | None = field(default=None, compare=False, repr=False)

    def file_url(self, relpath: str) -> str:
        """URL of one file of the dataset (e.g. `images/part-00000.parquet`)."""
        if self.files is None:
            return f"{self.url}/{relpath}"
        try:
            return self.files[relpath]
        except KeyError:
            raise NotFoundError(f"The dataset {self.url} has no file {relpath}.") from None

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def dataset_id(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def sha256(self) -> str:
        return self.manifest["sha256"]

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def shard_urls(self) -> list[str]:
        return [self.file_url(s["path"]) for s in self.manifest["shards"]]

    @property
    def annotations_url(self) -> str:
        return self.file_url(self.manifest["annotations"]["path"])

    def read_images(self, columns: list[str] | None = None) -> pa.Table:
        tables = []
        for url in self.shard_urls:
            fs, path = fsspec.core.url_to_fs(url)
            with fs.open(path, "rb") as f:
                tables.append(pq.read_table(f, columns=columns))
        return pa.concat_tables(tables)

    def read_annotations(self) -> pa.Table:
        fs, path = fsspec.core.url_to_fs(self.annotations_url)
        with fs.open(path, "rb") as f:
            return pq.read_table(f)

    def labels(self) -> dict[str, str]:
        """image_id -> label of the current annotations version."""
        ann = self.read_annotations()
        return dict(zip(ann.column("image_id").to_pylist(), ann.column("label").to_pylist()))

    def verify(self) -> None:
        """Re-hash every file against the manifest; raises IntegrityError on any mismatch."""
        entries = [*self.manifest["shards"], self.manifest["annotations"]]
        for entry in entries:
            url = self.file_url(entry["path"])
            fs, path = fsspec.core.url_to_fs(url)
            with fs.open(path, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            if digest != entry["sha256"]:
                where = url if self.files is None else f"{entry['path']} of {self.url} ({url})"
                raise IntegrityError(
                    f"{where} has sha256 {digest[:12]}..., the manifest "
                    f"records {entry['sha256'][:12]}...",
                    hint="The file was changed or damaged after it was written; re-copy it.",
                )


def _images_table(batch: list[SynthImage]) -> pa.Table:
    return pa.table(
        {
            "image_id": [s.image_id for s in batch],
            "site": [s.site for s in batch],
            "product": [s.product for s in batch],
            "process_step": [s.process_step for s in batch],
            "aoi_machine": [s.aoi_machine for s in batch],
            "captured_at": [s.captured_at for s in batch],
            "image": [s.png() for s in batch],
            "width": [s.pixels.shape[1] for s in batch],
            "height": [s.pixels.shape[0] for s in batch],
            "channels": [1] * len(batch),
        },
        schema=IMAGE_SCHEMA,
    )


def _annotations_table(images: list[SynthImage], annotator: str) -> pa.Table:
    now = datetime.now(timezone.utc)
    return pa.table(
        {
            "image_id": [s.image_id for s in images],
            "label": [s.label for s in images],
            "annotator": [annotator] * len(images),
            "annotated_at": [now] * len(images),
            "box": [dict(zip("xywh", s.box)) for s in images],
        },
        schema=ANNOTATION_SCHEMA,
    )


def _parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def _write(fs, path: str, blob: bytes) -> None:
    with fs.open(path, "wb") as f:
        f.write(blob)


def write_synthetic(
    url: str,
    cfg: SynthConfig,
    *,
    name: str,
    version: str,
    on_progress: Callable[[int], None] | None = None,
) -> Dataset:
    """Generate `cfg.images` synthetic images into a new dataset at `url`; returns it.

    Shards are streamed (one shard in memory at a time); the manifest is written last.
    """
    fs, base = fsspec.core.url_to_fs(url)
    if fs.exists(f"{base}/{MANIFEST}"):
        raise IntegrityError(f"A dataset already exists at {url}.", hint="Use another name or version.")
    fs.makedirs(f"{base}/images", exist_ok=True)
    fs.makedirs(f"{base}/annotations", exist_ok=True)
    shards, labelled = [], []
    for start in range(0, cfg.images, cfg.shard_rows):
        count = min(cfg.shard_rows, cfg.images - start)
        batch = list(generate(cfg.seed, count, cfg.size, cfg.site, start))
        blob = _parquet_bytes(_images_table(batch))
        rel = f"images/part-{len(shards):05d}.parquet"
        _write(fs, f"{base}/{rel}", blob)
        shards.append({"path": rel, "rows": count, "bytes": len(blob), "sha256": _sha256(blob)})
        labelled.extend(batch)
        if on_progress:
            on_progress(count)
    ann_blob = _parquet_bytes(_annotations_table(labelled, annotator="synth"))
    _write(fs, f"{base}/annotations/v1.parquet", ann_blob)
    annotations = {
        "version": 1,
        "path": "annotations/v1.parquet",
        "rows": len(labelled),
        "bytes": len(ann_blob),
        "sha256": _sha256(ann_blob),
    }
    return _finish(url, name, version, shards, annotations, labelled_counts(
        (s.image_id, s.label) for s in labelled), {"size": cfg.size, "channels": 1},
        {"generator": "data.synth", "seed": cfg.seed, "images": cfg.images})


def labelled_counts(pairs: Iterable[tuple[str, str]]) -> dict[str, dict[str, int]]:
    """Counts per class and per split of (image_id, label) pairs."""
    classes: Counter[str] = Counter()
    splits: Counter[str] = Counter()
    for image_id, label in pairs:
        classes[label] += 1
        splits[split_of(image_id)] += 1
    return {"class_counts": dict(sorted(classes.items())), "split_counts": dict(splits)}


def _finish(url, name, version, shards, annotations, counts, image, source) -> Dataset:
    present = set(counts["class_counts"])
    classes = [c for c in DEFECT_CLASSES if c in present] + sorted(present - set(DEFECT_CLASSES))
    digest = hashlib.sha256(
        "".join(s["sha256"] for s in shards).encode() + annotations["sha256"].encode()
    ).hexdigest()
    manifest = {
        "format": FORMAT,
        "name": name,
        "version": str(version),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "rows": sum(s["rows"] for s in shards),
        "classes": classes,
        **counts,
        "image": image,
        "schema": {f.name: str(f.type) for f in IMAGE_SCHEMA},
        "annotation_schema": {f.name: str(f.type) for f in ANNOTATION_SCHEMA},
        "shards": shards,
        "annotations": annotations,
        "source": source,
        "sha256": digest,
    }
    fs, base = fsspec.core.url_to_fs(url)
    _write(fs, f"{base}/{MANIFEST}", json.dumps(manifest, indent=2).encode())
    return Dataset(url.rstrip("/"), manifest)


def open_dataset(url: str) -> Dataset:
    """The dataset at `url`: a dataset directory, or a dataset artifact's manifest URL
    (`<store>/artifacts/dataset/<name>/<version>.json`). Raises NotFoundError when there is no
    complete dataset there."""
    url = url.rstrip("/")
    try:
        files = file_urls(url)  # read once: every file URL of an artifact comes from here
        manifest_url = f"{url}/{MANIFEST}" if files is None else files[MANIFEST]
        with fsspec.open(manifest_url, "r") as f:
            manifest = json.load(f)
    except (FileNotFoundError, NotFoundError, KeyError) as e:
        raise NotFoundError(
            f"No dataset at {url} (no {MANIFEST}).",
            hint="Create one with `adcp data synth --name NAME`, or check the URL.",
        ) from e
    if manifest.get("format") != FORMAT:
        raise IntegrityError(f"The {MANIFEST} of {url} is not an {FORMAT} manifest.")
    return Dataset(url, manifest, files)
