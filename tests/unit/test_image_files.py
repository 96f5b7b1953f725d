"""One image file described (format, size, channels, bit depth, sha256) or refused with a reason;
16-bit and colour images decoded for the model without losing their range."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from data.image_files import UnreadableImageError, inspect_image
from data.preprocess import decode_image


def encode(pixels: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt, **kw)
    return buf.getvalue()


GREY8 = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (20, 1))  # 20 x 25
GREY16 = (np.arange(30 * 40, dtype=np.uint32).reshape(30, 40) * 50).astype(np.uint16)  # up to 59950
RGB = np.stack([GREY8, 255 - GREY8, np.full_like(GREY8, 77)], axis=2)


@pytest.mark.parametrize(
    ("pixels", "fmt", "expect"),
    [
        (GREY8, "PNG", ("png", 25, 20, 1, 8)),
        (GREY8, "BMP", ("bmp", 25, 20, 1, 8)),
        (RGB, "BMP", ("bmp", 25, 20, 3, 8)),
        (RGB, "JPEG", ("jpeg", 25, 20, 3, 8)),
        (GREY8, "TIFF", ("tiff", 25, 20, 1, 8)),
        (GREY16, "TIFF", ("tiff", 40, 30, 1, 16)),
        (GREY16, "PNG", ("png", 40, 30, 1, 16)),
        (RGB, "PNG", ("png", 25, 20, 3, 8)),
    ],
)
def test_describes_each_format(pixels, fmt, expect):
    data = encode(pixels, fmt)
    info = inspect_image(data)
    assert (info.format, info.width, info.height, info.channels, info.bit_depth) == expect
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert info.size == len(data)


def test_large_image_any_size():
    big = np.zeros((3000, 4096), np.uint8)
    info = inspect_image(encode(big, "PNG"))
    assert (info.width, info.height) == (4096, 3000)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"hello, not an image at all", "not an image"),
        (encode(GREY8, "GIF"), "unsupported format GIF"),
        (encode(np.zeros((4, 4), np.float32), "TIFF"), "unsupported pixel mode F"),
    ],
)
def test_refuses_with_a_reason(data, reason):
    with pytest.raises(UnreadableImageError) as e:
        inspect_image(data)
    assert e.value.reason.startswith(reason)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF", "BMP"])
def test_truncated_file_is_refused(fmt):
    noise = np.random.default_rng(1).integers(0, 255, (200, 200), dtype=np.uint8)
    data = encode(noise, fmt)
    cut = data[: len(data) * 2 // 3]
    Image.open(io.BytesIO(cut))  # the header alone still opens: only a full decode shows it
    with pytest.raises(UnreadableImageError) as e:
        inspect_image(cut)
    assert e.value.reason == "truncated" or e.value.reason.startswith("damaged")


def test_truncated_png_reason_is_truncated():
    noise = np.random.default_rng(2).integers(0, 255, (128, 128), dtype=np.uint8)
    data = encode(noise, "PNG")
    with pytest.raises(UnreadableImageError) as e:
        inspect_image(data[: len(data) // 2])
    assert e.value.reason == "truncated"


@pytest.mark.parametrize("fmt", ["TIFF", "PNG"])
def test_decode_16_bit_keeps_the_range(fmt):
    pixels = decode_image(encode(GREY16, fmt))
    assert pixels.dtype == np.uint8 and pixels.shape == (30, 40)
    np.testing.assert_array_equal(pixels, (GREY16 >> 8).astype(np.uint8))
    assert pixels.max() == 59950 >> 8  # not clipped to 255 at value 255
    assert len(np.unique(pixels)) > 200
    colour = decode_image(encode(GREY16, fmt), channels=3)
    assert colour.shape == (30, 40, 3)
    np.testing.assert_array_equal(colour[:, :, 1], pixels)


def test_decode_colour_and_grey_to_the_channels_asked():
    data = encode(RGB, "BMP")
    assert decode_image(data, channels=3).shape == (20, 25, 3)
    np.testing.assert_array_equal(decode_image(data, channels=3), RGB)
    grey = decode_image(data, channels=1)
    assert grey.shape == (20, 25)
    assert decode_image(encode(GREY8, "PNG"), channels=3).shape == (20, 25, 3)
