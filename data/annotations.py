"""Versioned annotations: the `annotations/<name>@<version>` artifact kind.

Each version holds the full ANNOTATION_SCHEMA table keyed by image id (`annotations.parquet`) and
the cumulative log of who changed which label or box, when and why (`changelog.parquet`). A new
version is the previous one with a table of updates upserted by image id.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from configs.errors import InputError, IntegrityError, NotFoundError
from data.artifacts import ArtifactRef, ArtifactStore, Manifest, file_urls
from data.publish import publish_artifact
from data.schema import ANNOTATION_SCHEMA, DEFECT_CLASSES

if TYPE_CHECKING:
    from data.dataset import Dataset  # the dataset module pulls in the image generator

__all__ = [
    "CHANGELOG_SCHEMA",
    "CLASS_NAME_RE",
    "TRACKED_FIELDS",
    "UPDATE_COLUMNS",
    "annotations_from_dataset",
    "check_class_names",
    "publish_annotations",
    "read_annotations",
    "read_annotations_url",
    "read_changelog",
    "upsert",
]

KIND = "annotations"
TABLE_FILE = "annotations.parquet"
CHANGELOG_FILE = "changelog.parquet"

#: The fields whose changes are logged (and that make an update row a change).
TRACKED_FIELDS: tuple[str, ...] = ("label", "box")
#: Columns an update table may carry; `image_id` is required, `label` for new image ids.
#: `annotator`/`annotated_at` default to the publishing author and time.
UPDATE_COLUMNS: tuple[str, ...] = ("image_id", "label", "box", "annotator", "annotated_at")

CHANGELOG_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("field", pa.string(), nullable=False),
        # Values as text: labels as they are, boxes as JSON ({"x":..,"y":..,"w":..,"h":..});
        # old_value is null when the image id was added in this version.
        pa.field("old_value", pa.string(), nullable=True),
        pa.field("new_value", pa.string(), nullable=True),
        pa.field("author", pa.string(), nullable=False),
        pa.field("note", pa.string(), nullable=False),
        pa.field("version", pa.string(), nullable=False),
        pa.field("changed_at", pa.timestamp("ms", tz="UTC"), nullable=False),
    ],
    metadata={"adcp.schema": "aoi-annotation-changelog/1"},
)


#: A class name a caller may put in its vocabulary: simple identifiers (factory classes such as
#: "short" or "open" are fine).
CLASS_NAME_RE = re.compile(r"^[a-z0-9_-]{1,64}$")
_CLASS_ALLOWED = "1-64 characters of a-z 0-9 _ -"


def check_class_names(names: Iterable[str]) -> tuple[str, ...]:
    """`names` as a tuple; InputError naming the first one that is not a simple identifier."""
    out = tuple(names)
    for name in out:
        if not isinstance(name, str) or not CLASS_NAME_RE.match(name):
            raise InputError(f'"{name}" is not a class name.', allowed=_CLASS_ALLOWED,
                             hint="Rename the class (lower case, no spaces).")
    return out


def _text(field: str, value: Any) -> str | None:
    if value is None:
        return None
    if field == "box":
        return json.dumps({k: value[k] for k in ("x", "y", "w", "h")}, separators=(",", ":"))
    return str(value)


def _cast_column(table: pa.Table, name: str, type_: pa.DataType, what: str) -> pa.Array:
    column = table.column(name)
    try:
        return column.cast(type_)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
        raise InputError(
            f"The {what} column `{name}` has type {column.type}.",
            allowed=f"{type_} (or a type that converts to it)",
        ) from e


def _check_base(base: pa.Table) -> pa.Table:
    try:
        table = base.select(ANNOTATION_SCHEMA.names).cast(ANNOTATION_SCHEMA)
    except (KeyError, pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
        raise IntegrityError(
            f"The base annotations table does not match the annotation schema ({e}).",
            allowed=", ".join(f"{f.name}: {f.type}" for f in ANNOTATION_SCHEMA),
        ) from e
    if pc.count_distinct(table.column("image_id")).as_py() != table.num_rows:
        raise IntegrityError("The base annotations table has duplicate image ids.")
    return table


def _check_updates(updates: pa.Table, base_ids: dict[str, int], classes: tuple[str, ...] = DEFECT_CLASSES) -> pa.Table:
    """The update table with known columns cast to the schema's types; raises InputError."""
    unknown = [n for n in updates.column_names if n not in UPDATE_COLUMNS]
    if unknown:
        raise InputError(
            f"Unknown annotation update columns: {', '.join(unknown)}.",
            allowed=", ".join(UPDATE_COLUMNS),
            hint="Drop or rename those columns.",
        )
    if "image_id" not in updates.column_names:
        raise InputError(
            "The annotation updates have no image_id column.",
            allowed=", ".join(UPDATE_COLUMNS) + " (image_id required)",
            hint="Updates are matched to images by image_id; add that column.",
        )
    columns = {}
    for name in updates.column_names:
        columns[name] = _cast_column(updates, name, ANNOTATION_SCHEMA.field(name).type, "update")
    table = pa.table(columns)
    ids = table.column("image_id")
    if ids.null_count or pc.any(pc.equal(pc.utf8_length(ids), 0)).as_py():
        raise InputError("Some update rows have an empty or null image_id.", hint="Every row needs an image id.")
    counts = pc.value_counts(ids)
    dupes = [v["values"] for v in counts.to_pylist() if v["counts"] > 1]
    if dupes:
        raise InputError(
            f"The updates name {len(dupes)} image ids more than once: {', '.join(sorted(dupes)[:5])}"
            + (" ..." if len(dupes) > 5 else "") + ".",
            allowed="one row per image id in one update",
            hint="Keep the last row for each image id.",
        )
    if "label" in table.column_names:
        labels = table.column("label")
        if labels.null_count:
            raise InputError(
                "Some update rows have a null label.",
                allowed=", ".join(classes),
                hint="Leave the label column out to keep the current labels.",
            )
        unknown_labels = sorted(set(pc.unique(labels).to_pylist()) - set(classes))
        if unknown_labels:
            raise InputError(
                f"Unknown label classes: {', '.join(unknown_labels)}.",
                allowed=", ".join(classes),
                hint="Use one of the allowed classes (names are case-sensitive).",
            )
    else:
        new = [i for i in ids.to_pylist() if i not in base_ids]
        if new:
            raise InputError(
                f"{len(new)} update rows add new image ids ({', '.join(new[:3])}"
                + (" ..." if len(new) > 3 else "") + ") without a label column.",
                hint="New image ids need a label; add a label column.",
            )
    for name in ("annotator", "annotated_at"):
        if name in table.column_names and table.column(name).null_count:
            raise InputError(f"Some update rows have a null {name}.", hint=f"Fill {name} or leave the column out.")
    return table


def upsert(
    base: pa.Table | None,
    updates: pa.Table,
    *,
    author: str,
    note: str = "",
    version: str,
    at: datetime | None = None,
    classes: Iterable[str] | None = None,
) -> tuple[pa.Table, pa.Table]:
    """Upsert `updates` into `base` by image id; returns (new full table, changelog rows).

    Rows of known image ids replace the fields the updates carry (label, box); rows of new ids
    are appended in update order. A row whose label and box equal the base's is no change: it
    keeps its annotator and time and is not logged. Changed and added rows get `annotator`
    (default `author`) and `annotated_at` (default `at`, now). A null box in a `box` column
    clears the box. The changelog has one CHANGELOG_SCHEMA row per changed field.

    Raises InputError for updates without image_id, with duplicate or null ids, unknown columns
    or labels outside `classes` (the class vocabulary, default DEFECT_CLASSES; names must be
    simple identifiers, see CLASS_NAME_RE); IntegrityError for a base that is not an annotations
    table.
    """
    vocabulary = DEFECT_CLASSES if classes is None else check_class_names(classes)
    if not author:
        raise InputError("An annotation update needs an author.", hint="Pass author=<user name>.")
    at = at or datetime.now(timezone.utc)
    if at.tzinfo is None:
        raise InputError(f"Got a naive time {at.isoformat()} for the update.", allowed="a timezone-aware datetime")
    base = _check_base(base) if base is not None else ANNOTATION_SCHEMA.empty_table()
    base_ids = {image_id: i for i, image_id in enumerate(base.column("image_id").to_pylist())}
    table = _check_updates(updates, base_ids, vocabulary)

    update_ids = table.column("image_id").to_pylist()
    given = {name: table.column(name).to_pylist() for name in table.column_names}
    known_rows = [base_ids[i] for i in update_ids if i in base_ids]
    taken = base.take(pa.array(known_rows, pa.int64()))
    old = {f: iter(taken.column(f).to_pylist()) for f in TRACKED_FIELDS}

    changed_rows: list[dict[str, Any]] = []  # new values of changed known rows, with their base index
    added_rows: list[dict[str, Any]] = []
    log: list[dict[str, Any]] = []
    for k, image_id in enumerate(update_ids):
        before = {f: next(old[f]) for f in old} if image_id in base_ids else None
        after = {}
        for field in TRACKED_FIELDS:
            if field in given:
                after[field] = given[field][k]
            else:
                after[field] = before[field] if before is not None else None
        diffs = [f for f in TRACKED_FIELDS if before is None or before[f] != after[f]]
        if before is not None and not diffs:
            continue
        if before is None:
            diffs = [f for f in TRACKED_FIELDS if after[f] is not None]
        row = {
            "image_id": image_id,
            **after,
            "annotator": given["annotator"][k] if "annotator" in given else author,
            "annotated_at": given["annotated_at"][k] if "annotated_at" in given else at,
        }
        if before is None:
            added_rows.append(row)
        else:
            changed_rows.append({**row, "_row": base_ids[image_id]})
        for field in diffs:
            log.append(
                {
                    "image_id": image_id,
                    "field": field,
                    "old_value": _text(field, before[field]) if before is not None else None,
                    "new_value": _text(field, after[field]),
                    "author": author,
                    "note": note,
                    "version": str(version),
                    "changed_at": at,
                }
            )

    changelog = pa.Table.from_pylist(log, schema=CHANGELOG_SCHEMA)
    if not changed_rows and not added_rows:
        return base, changelog
    # Keep the base order: a changed row takes its old place, added rows go last.
    n = base.num_rows
    replaced = {r.pop("_row"): r for r in changed_rows}
    kept_idx = [i for i in range(n) if i not in replaced]
    parts = [base.take(pa.array(kept_idx, pa.int64())).append_column("_pos", pa.array(kept_idx, pa.int64()))]
    for positions, rows in (
        (list(replaced), list(replaced.values())),
        (list(range(n, n + len(added_rows))), added_rows),
    ):
        if rows:
            part = pa.Table.from_pylist(rows, schema=ANNOTATION_SCHEMA)
            parts.append(part.append_column("_pos", pa.array(positions, pa.int64())))
    merged = pa.concat_tables(parts).sort_by("_pos").drop_columns(["_pos"])
    return merged.replace_schema_metadata(ANNOTATION_SCHEMA.metadata), changelog


# ---------------------------------------------------------------------------------------------
# The `annotations` artifact kind


def _read_version(
    store: ArtifactStore, name: str, version: str | None, files: tuple[str, ...]
) -> tuple[Manifest, list[pa.Table]]:
    """The manifest of `annotations/<name>@<version>` and its `files` read as tables."""
    manifest = store.manifest(ArtifactRef(KIND, name, version))
    with tempfile.TemporaryDirectory(prefix="adcp-annotations-") as tmp:
        folder = Path(store.download(ArtifactRef(KIND, name, manifest.version), Path(tmp)))
        tables = []
        for file in files:
            if not (folder / file).is_file():
                raise IntegrityError(
                    f"{KIND}/{name}@{manifest.version} has no {file}.",
                    hint="It was not written by data.annotations; publish the annotations again.",
                )
            tables.append(pq.read_table(folder / file))
    return manifest, tables


def publish_annotations(
    store: ArtifactStore,
    name: str,
    updates: pa.Table,
    *,
    author: str,
    note: str = "",
    base_version: str | None = None,
    dataset: str | None = None,
    classes: Iterable[str] | None = None,
    extra_files: dict[str, pa.Table] | None = None,
) -> Manifest:
    """Publish the next version of `annotations/<name>`: the latest version (or `base_version`)
    with `updates` upserted, plus the cumulative changelog; returns the new manifest.

    The first version is `updates` itself (e.g. `annotations_from_dataset(ds)`). When the updates
    change nothing, nothing is published and the base version's manifest is returned. `dataset`
    ("name@version") is recorded in the meta; `classes` is the label vocabulary (default
    DEFECT_CLASSES); `extra_files` ({file name: table}) go into the version as Parquet beside the
    table (e.g. the review sync's `verdicts.parquet`). Raises InputError for invalid updates (see
    `upsert`) or an extra file named like the table or changelog, NotFoundError when
    `base_version` does not exist.
    """
    extra_files = dict(extra_files or {})
    if {TABLE_FILE, CHANGELOG_FILE} & set(extra_files):
        raise InputError(f"Extra annotation files may not be named {TABLE_FILE} or {CHANGELOG_FILE}.")
    base: Manifest | None
    if base_version is None:
        try:
            base, (table, changelog) = _read_version(store, name, None, (TABLE_FILE, CHANGELOG_FILE))
        except NotFoundError:
            base, table, changelog = None, None, CHANGELOG_SCHEMA.empty_table()
    else:
        base, (table, changelog) = _read_version(store, name, base_version, (TABLE_FILE, CHANGELOG_FILE))
    version = store.next_version(KIND, name)
    new_table, changes = upsert(table, updates, author=author, note=note, version=version, classes=classes)
    if base is not None and changes.num_rows == 0:
        return base
    changed_ids = pc.count_distinct(changes.column("image_id")).as_py() if changes.num_rows else 0
    counts = pc.value_counts(new_table.column("label")).to_pylist()
    meta = {
        "rows": new_table.num_rows,
        "changed": changed_ids,
        "added": new_table.num_rows - (table.num_rows if table is not None else 0),
        "author": author,
        "note": note,
        "base_version": base.version if base is not None else None,
        "dataset": dataset if dataset is not None else (base.meta.get("dataset") if base is not None else None),
        "class_counts": {c["values"]: c["counts"] for c in sorted(counts, key=lambda c: c["values"])},
    }
    full_log = pa.concat_tables([changelog.cast(CHANGELOG_SCHEMA), changes])
    with tempfile.TemporaryDirectory(prefix="adcp-annotations-") as tmp:
        pq.write_table(new_table, Path(tmp) / TABLE_FILE, compression="zstd")
        pq.write_table(full_log, Path(tmp) / CHANGELOG_FILE, compression="zstd")
        for file, extra in extra_files.items():
            pq.write_table(extra, Path(tmp) / file, compression="zstd")
        return publish_artifact(store, KIND, name, version, Path(tmp), meta=meta)


def read_annotations(store: ArtifactStore, name: str, version: str | None = None) -> pa.Table:
    """The full annotations table of `annotations/<name>@<version>` (latest when None).

    Raises NotFoundError when there is no such version.
    """
    return _read_version(store, name, version, (TABLE_FILE,))[1][0].cast(ANNOTATION_SCHEMA)


def read_annotations_url(manifest_url: str) -> pa.Table:
    """The annotations table of the artifact whose manifest is at `manifest_url`
    (`<store>/artifacts/annotations/<name>/<version>.json`): what a training job at a site reads.
    Raises NotFoundError when there is no such artifact or it holds no table."""
    files = file_urls(manifest_url)  # NotFoundError when there is no manifest there
    if not files or TABLE_FILE not in files:
        raise NotFoundError(f"{manifest_url} is not an annotations artifact (no {TABLE_FILE}).",
                            hint="Give the manifest URL of an annotations/<name>@<version> artifact.")
    with fsspec.open(files[TABLE_FILE], "rb") as f:
        return pq.read_table(f).cast(ANNOTATION_SCHEMA)


def read_changelog(store: ArtifactStore, name: str, version: str | None = None) -> pa.Table:
    """Every change up to and including `annotations/<name>@<version>` (latest when None), oldest
    first, as CHANGELOG_SCHEMA rows. Raises NotFoundError when there is no such version."""
    return _read_version(store, name, version, (CHANGELOG_FILE,))[1][0].cast(CHANGELOG_SCHEMA)


def annotations_from_dataset(dataset: Dataset) -> pa.Table:
    """The annotations table a dataset was written with (the usual version 1 of its annotations).

    Raises IntegrityError when the dataset's table is not a valid annotations table.
    """
    return _check_base(dataset.read_annotations())
