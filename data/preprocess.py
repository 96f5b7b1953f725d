"""Decoding and normalisation shared by training and serving, so both see identical inputs.

The exported model's `metadata.json` names this spec (`input`), and the Serve app applies it with
these same functions: there is one definition of what the model expects.
"""

from __future__ import annotations

import io
from collections.abc import Iterable

import numpy as np
from PIL import Image, UnidentifiedImageError

from configs.errors import InputError

__all__ = [
    "NORMALIZATION",
    "NORMALIZATION_SCALE",
    "decode_image",
    "input_spec",
    "normalize",
    "resize",
    "to_model_input",
]

#: Per-image mean normalisation: x / mean(x) - 1, divided by this scale. Dividing by the image's
#: own mean removes brightness differences between panels and machines, so defect contrast is
#: relative (mura is "3 % darker", whatever the backlight).
NORMALIZATION = "per_image_mean"
NORMALIZATION_SCALE = 0.2


def input_spec(size: int, channels: int = 1) -> dict:
    """The `input` section of a model's metadata."""
    return {
        "size": size,
        "channels": channels,
        "dtype": "float32",
        "layout": "NCHW",
        "normalization": NORMALIZATION,
        "scale": NORMALIZATION_SCALE,
        "resize": "bilinear",
    }


def decode_image(data: bytes, *, channels: int = 1) -> np.ndarray:
    """Decode PNG/JPEG/BMP/TIFF bytes to uint8 pixels (H, W) for 1 channel or (H, W, 3).

    Raises InputError when the bytes are empty or not an image Pillow can read.
    """
    if not data:
        raise InputError("The image is empty (0 bytes).", allowed="a PNG, JPEG, BMP or TIFF image")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            converted = img.convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise InputError(
            f"The data is not a readable image ({len(data)} bytes, starts with {data[:8]!r}).",
            allowed="a PNG, JPEG, BMP or TIFF image",
        ) from e
    return np.asarray(converted, dtype=np.uint8)


def resize(pixels: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize to `size` x `size` (no-op when already that size)."""
    if pixels.shape[0] == size and pixels.shape[1] == size:
        return pixels
    mode = "L" if pixels.ndim == 2 else "RGB"
    return np.asarray(Image.fromarray(pixels, mode).resize((size, size), Image.BILINEAR))


def normalize(batch: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W) or (N, H, W, C) -> float32 (N, C, H, W) by the per-image mean rule."""
    x = batch.astype(np.float32)
    if x.ndim == 3:
        x = x[:, None]
    else:
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    return (x / np.maximum(mean, 1.0) - 1.0) / NORMALIZATION_SCALE


def to_model_input(images: Iterable[np.ndarray], size: int) -> np.ndarray:
    """Resize decoded images and stack them into one normalised float32 NCHW batch."""
    return normalize(np.stack([resize(p, size) for p in images]))
