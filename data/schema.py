"""Arrow schemas of AOI images and their annotations, the class vocabulary, and the split rule."""

from __future__ import annotations

import hashlib

import pyarrow as pa

__all__ = [
    "ANNOTATION_SCHEMA",
    "BOX_TYPE",
    "DEFECT_CLASSES",
    "IMAGE_SCHEMA",
    "IMPORTED_IMAGE_SCHEMA",
    "NO_DEFECT_CLASSES",
    "SPLITS",
    "split_of",
]

#: Classes the synthetic generator produces, in the order models index them. `false_defect` is the
#: class a line engineer filters out (nothing real on the panel).
DEFECT_CLASSES: tuple[str, ...] = (
    "particle",
    "scratch",
    "mura",
    "line_defect",
    "pinhole",
    "false_defect",
)
NO_DEFECT_CLASSES: tuple[str, ...] = ("false_defect",)

IMAGE_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("site", pa.string(), nullable=False),
        pa.field("product", pa.string(), nullable=False),
        pa.field("process_step", pa.string(), nullable=False),
        pa.field("aoi_machine", pa.string(), nullable=False),
        pa.field("captured_at", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("image", pa.binary(), nullable=False, metadata={"encoding": "png"}),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("channels", pa.int8(), nullable=False),
    ],
    metadata={"adcp.schema": "aoi-image/1"},
)

#: Rows of imported images (`data.image_datasets`): IMAGE_SCHEMA (so every reader of a dataset
#: reads them) plus nullable columns of what a factory's files carry. `image` holds the file as
#: given (PNG, JPEG, BMP or TIFF; `format` says which), never re-encoded.
IMPORTED_IMAGE_SCHEMA = pa.schema(
    [
        *(f.with_metadata({"encoding": "as-given"}) if f.name == "image" else f for f in IMAGE_SCHEMA),
        pa.field("format", pa.string(), nullable=True),
        pa.field("bit_depth", pa.int8(), nullable=True),
        pa.field("lot", pa.string(), nullable=True),
        pa.field("panel_id", pa.string(), nullable=True),
        pa.field("source", pa.string(), nullable=True),
    ],
    metadata={"adcp.schema": "aoi-image/1", "adcp.variant": "imported"},
)

BOX_TYPE = pa.struct(
    [
        pa.field("x", pa.int32(), nullable=False),
        pa.field("y", pa.int32(), nullable=False),
        pa.field("w", pa.int32(), nullable=False),
        pa.field("h", pa.int32(), nullable=False),
    ]
)

ANNOTATION_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("label", pa.string(), nullable=False),
        pa.field("annotator", pa.string(), nullable=False),
        pa.field("annotated_at", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("box", BOX_TYPE, nullable=True),
    ],
    metadata={"adcp.schema": "aoi-annotation/1"},
)

SPLITS = ("train", "val", "test")
_SPLIT_BOUNDS = (80, 90)  # percent: train < 80 <= val < 90 <= test


def split_of(image_id: str) -> str:
    """The split an image belongs to: a stable hash of its id (80 % train, 10 % val, 10 % test).

    Hashing the id, rather than storing a split column, keeps an image in the same split across
    dataset versions and re-annotations, so a held-out image never leaks into training.
    """
    bucket = int.from_bytes(hashlib.sha256(image_id.encode()).digest()[:4], "big") % 100
    if bucket < _SPLIT_BOUNDS[0]:
        return "train"
    if bucket < _SPLIT_BOUNDS[1]:
        return "val"
    return "test"
