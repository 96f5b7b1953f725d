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

    8-bit images convert as Pillow does (colour to grey by ITU-R 601 luma, grey to colour by
    repeating it). 16-bit grey images (`I;16*`, and 32-bit integer `I` as Pillow opens some
    of them) keep their full range: the top 8 bits of each sample (x >> 8), never clipped to 255.
    Raises InputError when the bytes are empty or not an image Pillow can read.
    """
    if not data:
        raise InputError("The image is empty (0 bytes).", allowed="a PNG, JPEG, BMP or TIFF image")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.mode.startswith("I;16") or img.mode == "I":
                grey = _wide_to_uint8(np.asarray(img), img.mode)
                return grey if channels == 1 else np.repeat(grey[:, :, None], 3, axis=2)
            converted = img.convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise InputError(
            f"The data is not a readable image ({len(data)} bytes, starts with {data[:8]!r}).",
            allowed="a PNG, JPEG, BMP or TIFF image",
        ) from e
    return np.asarray(converted, dtype=np.uint8)


def _wide_to_uint8(pixels: np.ndarray, mode: str) -> np.ndarray:
    """16-bit samples (or 32-bit `I` holding 16-bit values) -> uint8 by their top 8 bits."""
    if mode == "I":
        # Pillow opens some 16-bit files as 32-bit I; values above 65535 only come from real
        # 32-bit data, whose range is scaled down the same way.
        wide = pixels.astype(np.int64)
        top = int(wide.max(initial=0))
        shift = 8 if top <= 0xFFFF else max(8, top.bit_length() - 8)
        return (np.clip(wide, 0, None) >> shift).astype(np.uint8)
    return (pixels.astype(np.uint16) >> 8).astype(np.uint8)


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
