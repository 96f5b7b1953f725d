"""Import a factory's images from any fsspec URL (a local folder, `s3://bucket/prefix`) into a
dataset artifact plus an annotations artifact (`data.image_datasets.publish_images`).

Three layouts are recognised, in this order:

- a manifest: `labels_url` (CSV or Parquet), else a `manifest.csv`, `labels.csv` or `*.parquet`
  at the root; columns `path,label` plus optional `product, lot, panel_id, aoi_machine,
  captured_at, site, process_step`; paths relative to the source. Files named nowhere in the
  manifest, and rows without a label, are refused (a labelled layout has no unlabelled images);
- a folder per class: `<src>/<class>/.../*.png` (the first folder is the label); image files
  at the root are refused;
- unlabelled images: image files with no class folders and no manifest (stored for review).

Bad input never aborts the import: missing, unreadable, truncated, unsupported and unlabelled
files are listed in `rejected` with a reason and the rest are published.
"""

from __future__ import annotations

import io
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import PurePosixPath
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from configs.errors import InputError, NotFoundError
from data.artifacts import ArtifactRef, ArtifactStore
from data.image_datasets import ImageRecord, publish_images

__all__ = ["IMAGE_SUFFIXES", "MANIFEST_NAMES", "METADATA_COLUMNS", "check_source", "import_source"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".dib", ".tif", ".tiff")
#: Manifest files looked for at the source's root (then any `*.parquet` there).
MANIFEST_NAMES = ("manifest.csv", "labels.csv")
#: Optional manifest columns copied onto each image.
METADATA_COLUMNS = ("product", "lot", "panel_id", "aoi_machine", "site", "process_step", "captured_at")

_ALLOWED_COLUMNS = "columns path,label (+ " + ", ".join(METADATA_COLUMNS) + ")"
Progress = Callable[[int, int], None]  # (files done so far, files in all)


def _open_source(src_url: str, options: dict) -> tuple[Any, str]:
    try:
        fs, root = fsspec.core.url_to_fs(src_url, **options)
    except (ImportError, ValueError, TypeError) as e:
        raise InputError(f"Cannot read {src_url}: {e}.", hint="Give a folder path or an s3:// URL.") from e
    root = root.rstrip("/")
    try:
        found = fs.isdir(root)
    except (OSError, ValueError) as e:  # e.g. credentials refused by the object store
        raise InputError(f"Cannot read {src_url}: {type(e).__name__}: {e}.",
                         hint="Check the URL and its storage options.") from e
    if not found:
        raise NotFoundError(f"No folder at {src_url}.",
                            hint="The coordinator reads the source itself: give a path on its host or an s3:// URL.")
    return fs, root


def check_source(src_url: str, name: str, *, labels_url: str | None = None,
                 storage_options: dict | None = None) -> None:
    """The checks an import makes before it reads any image, cheaply (for an answer before the
    work starts): a valid dataset name, a source folder, a labels file when one is named, and at
    least one image file or manifest (the listing stops at the first). Raises InputError or
    NotFoundError."""
    ArtifactRef("dataset", name)
    options = dict(storage_options or {})
    fs, root = _open_source(src_url, options)
    if labels_url:
        _labels_location(fs, root, labels_url, options)
        return
    for _, _, names in fs.walk(root):
        if any(_is_image(n) or n in MANIFEST_NAMES or n.lower().endswith(".parquet") for n in names):
            return
    raise InputError(f"No image files found at {src_url}.", allowed="PNG, JPEG, BMP or TIFF files: "
                     + ", ".join(IMAGE_SUFFIXES))


def import_source(
    store: ArtifactStore,
    src_url: str,
    name: str,
    *,
    labels_url: str | None = None,
    storage_options: dict | None = None,
    on_progress: Progress | None = None,
    workers: int | None = None,
    annotator: str = "import",
) -> dict[str, Any]:
    """Import the images at `src_url` as `dataset/<name>` (next version) and `annotations/<name>`;
    returns the report `{"dataset", "annotations", "images", "new", "unchanged", "rejected",
    "bytes", "changed", ...}`.

    Raises InputError for a bad name or a source without image files, NotFoundError when the
    source (or the labels file) does not exist.
    """
    ArtifactRef("dataset", name)
    options = dict(storage_options or {})
    fs, root = _open_source(src_url, options)
    files = sorted(p for p in fs.find(root) if not PurePosixPath(p).name.startswith("."))
    rel = {p: p[len(root):].lstrip("/") for p in files}
    rejected: list[dict[str, str]] = []
    manifest = _manifest_table(fs, root, rel, labels_url, options)
    if manifest is not None:
        layout, items = "manifest", _manifest_items(manifest, fs, root, rel, rejected)
    else:
        layout, items = _folder_items(rel, rejected)
    if not items:
        raise InputError(f"No image files found at {src_url} ({len(files)} files there, {len(rejected)} refused).",
                         allowed="PNG, JPEG, BMP or TIFF files: " + ", ".join(IMAGE_SUFFIXES),
                         rejected=rejected[:20] or None)
    total = len(items)
    done = [0]

    def progress(n: int) -> None:
        done[0] += n
        if on_progress:
            on_progress(done[0], total)

    workers = workers or 8
    records = _read(fs, items, rejected, workers)
    result = publish_images(store, name, records, annotator=annotator, on_progress=progress, workers=workers,
                            source={"url": src_url, "layout": layout, "labels": labels_url})
    report = result.to_dict()
    report["rejected"] = sorted(rejected + result.rejected, key=lambda r: r["path"])
    report.update(layout=layout, files=total, source=src_url)
    return report


# --- layouts ------------------------------------------------------------------------------------

def _is_image(path: str) -> bool:
    return PurePosixPath(path).suffix.lower() in IMAGE_SUFFIXES


def _folder_items(rel: dict[str, str], rejected: list[dict[str, str]]) -> tuple[str, list[tuple]]:
    """(layout, [(fs path, relative path, label, metadata)]) of a folder per class, or of
    unlabelled images."""
    per_class = any("/" in r and _is_image(r) for r in rel.values())
    items = []
    for path, r in rel.items():
        if not _is_image(r):
            rejected.append({"path": r, "reason": f"not an image file ({PurePosixPath(r).suffix or 'no suffix'})"})
        elif per_class and "/" not in r:
            rejected.append({"path": r, "reason": "unlabelled: not in a class folder"})
        else:
            items.append((path, r, r.split("/", 1)[0] if per_class else None, {}))
    return ("folder_per_class" if per_class else "unlabelled"), items


def _manifest_table(fs, root: str, rel: dict[str, str], labels_url: str | None, options: dict) -> pa.Table | None:
    if labels_url:
        lfs, lpath = _labels_location(fs, root, labels_url, options)
        return _read_table(lfs, lpath, labels_url)
    at_root = {r: p for p, r in rel.items() if "/" not in r}
    for candidate in (*MANIFEST_NAMES, *sorted(r for r in at_root if r.lower().endswith(".parquet"))):
        if candidate in at_root:
            return _read_table(fs, at_root[candidate], candidate)
    return None


def _labels_location(fs, root: str, labels_url: str, options: dict) -> tuple[Any, str]:
    """(filesystem, path) of a labels file: a URL, an absolute path, or a path relative to the
    source; NotFoundError when there is none."""
    if "://" in labels_url or labels_url.startswith("/"):
        lfs, lpath = fsspec.core.url_to_fs(labels_url, **(options if "://" in labels_url else {}))
    else:
        lfs, lpath = fs, f"{root}/{labels_url}"
    if not lfs.isfile(lpath):
        raise NotFoundError(f"No labels file at {labels_url}.",
                            hint="Give a path the coordinator can read, or one relative to the source.")
    return lfs, lpath


def _read_table(fs, path: str, shown: str) -> pa.Table:
    raw = fs.cat_file(path)
    try:
        if path.lower().endswith(".parquet"):
            table = pq.read_table(io.BytesIO(raw))
        else:
            table = pacsv.read_csv(io.BytesIO(raw), convert_options=pacsv.ConvertOptions(
                strings_can_be_null=True, column_types={c: pa.string() for c in ("path", "label", *METADATA_COLUMNS)
                                                        if c != "captured_at"}))
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"The labels file {shown} is not a readable CSV or Parquet table: {e}.",
                         allowed="CSV or Parquet with " + _ALLOWED_COLUMNS) from e
    if "path" not in table.column_names:
        raise InputError(f"The labels file {shown} has no `path` column (columns: {', '.join(table.column_names)}).",
                         allowed=_ALLOWED_COLUMNS)
    return table


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _time(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if not isinstance(value, datetime):
        value = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _manifest_items(table: pa.Table, fs, root: str, rel: dict[str, str],
                    rejected: list[dict[str, str]]) -> list[tuple]:
    """Items of a manifest layout; files it does not name, rows without a label, rows of missing
    files and bad `captured_at` values are refused."""
    by_rel = {r: p for p, r in rel.items()}
    columns = {c: table.column(c).to_pylist() for c in ("path", "label", *METADATA_COLUMNS) if c in table.column_names}
    named: set[str] = set()
    items = []
    for i, raw in enumerate(columns["path"]):
        r = _text(raw).removeprefix("./")
        if not r:
            rejected.append({"path": f"<row {i + 2}>", "reason": "no path"})
            continue
        named.add(r)
        label = _text(columns["label"][i]) if "label" in columns else ""
        if not label:
            rejected.append({"path": r, "reason": "unlabelled: no label in the manifest"})
            continue
        if r not in by_rel:
            rejected.append({"path": r, "reason": "missing file"})
            continue
        meta: dict[str, Any] = {c: _text(columns[c][i]) for c in METADATA_COLUMNS
                                if c in columns and c != "captured_at"}
        if "captured_at" in columns:
            try:
                meta["captured_at"] = _time(columns["captured_at"][i])
            except ValueError:
                rejected.append({"path": r, "reason": f"captured_at {columns['captured_at'][i]!r} is not a time"})
                continue
        items.append((by_rel[r], r, label, meta))
    for r in rel.values():
        if r not in named and _is_image(r):
            rejected.append({"path": r, "reason": "unlabelled: not in the manifest"})
    return items


# --- reading ------------------------------------------------------------------------------------

def _read(fs, items: list[tuple], rejected: list[dict[str, str]], workers: int) -> Iterator[ImageRecord]:
    """ImageRecords of `items`, read `workers` at a time (object stores answer one GET at a time);
    files that cannot be read are refused."""

    def fetch(item: tuple) -> bytes | str:
        try:
            return fs.cat_file(item[0])
        except FileNotFoundError:
            return "missing file"
        except OSError as e:
            return f"unreadable ({type(e).__name__}: {str(e)[:60]})"

    window = 4 * workers
    with ThreadPoolExecutor(workers, thread_name_prefix="adcp-read") as pool:
        pending: deque = deque()
        it = iter(items)
        for item in it:
            pending.append((item, pool.submit(fetch, item)))
            if len(pending) >= window:
                break
        while pending:
            item, fut = pending.popleft()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(fetch, nxt)))
            data = fut.result()
            _, r, label, meta = item
            if isinstance(data, str):
                rejected.append({"path": r, "reason": data})
                continue
            yield ImageRecord(data=data, label=label, source=r, **meta)
