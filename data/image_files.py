"""What one image file is: its format, size, channels, bit depth and sha256, read by decoding it
fully (a truncated file only shows when its last pixels are read).

AOI machines write PNG, JPEG, BMP and TIFF, 8 or 16 bits per sample, grey or colour, of any size;
anything else is refused with a short reason a report can show next to the file's path.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import asdict, dataclass

from PIL import Image, UnidentifiedImageError

from configs.errors import InputError

__all__ = ["FORMATS", "ImageInfo", "UnreadableImageError", "inspect_image"]

#: Pillow format name -> the name we record.
FORMATS: dict[str, str] = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg", "BMP": "bmp", "DIB": "bmp", "TIFF": "tiff"}

# mode -> (channels, bit depth). "I" and "F" appear for 32-bit TIFFs; they are not AOI formats.
_MODES: dict[str, tuple[int, int]] = {
    "1": (1, 1),
    "L": (1, 8),
    "P": (3, 8),
    "LA": (2, 8),
    "PA": (4, 8),
    "RGB": (3, 8),
    "RGBA": (4, 8),
    "CMYK": (4, 8),
    "YCbCr": (3, 8),
    "I;16": (1, 16),
    "I;16L": (1, 16),
    "I;16B": (1, 16),
    "I;16N": (1, 16),
}


class UnreadableImageError(InputError):
    """A file that is not an image we can store: `reason` is the short text for a report."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"Not a usable image: {reason}.", allowed="PNG, JPEG, BMP or TIFF, 8 or 16 bits")
        self.reason = reason


@dataclass(frozen=True)
class ImageInfo:
    """One decoded image file."""

    sha256: str
    format: str  # png | jpeg | bmp | tiff
    width: int
    height: int
    channels: int  # 1 grey, 2 grey+alpha, 3 colour, 4 colour+alpha
    bit_depth: int  # bits per sample: 1, 8 or 16
    mode: str  # Pillow's mode, e.g. L, RGB, I;16
    size: int  # bytes

    def to_dict(self) -> dict:
        return asdict(self)


def inspect_image(data: bytes) -> ImageInfo:
    """Decode `data` completely and describe it. Raises UnreadableImageError (reason: empty,
    not an image, unsupported format/mode, truncated, too large, damaged)."""
    if not data:
        raise UnreadableImageError("empty file")
    digest = hashlib.sha256(data).hexdigest()
    try:
        # Pillow's decompression-bomb limit (about 179 M pixels) stays: beyond it one file
        # could take gigabytes to decode.
        with Image.open(io.BytesIO(data)) as img:
            fmt = FORMATS.get(img.format or "")
            if fmt is None:
                raise UnreadableImageError(f"unsupported format {img.format}")
            width, height = img.size
            mode = img.mode
            if mode not in _MODES:
                raise UnreadableImageError(f"unsupported pixel mode {mode}")
            img.load()  # every pixel: a cut-off file fails here
            transparent = mode == "P" and "transparency" in img.info
    except UnreadableImageError:
        raise
    except UnidentifiedImageError:
        raise UnreadableImageError("not an image (unknown file type)") from None
    except Image.DecompressionBombError:
        raise UnreadableImageError("too large (decompression bomb limit)") from None
    except OSError as e:
        text = str(e)
        if "truncated" in text or "broken data stream" in text or "premature end" in text.lower():
            raise UnreadableImageError("truncated") from None
        raise UnreadableImageError(f"damaged ({_short(text)})") from None
    except (ValueError, SyntaxError, IndexError, EOFError, TypeError) as e:  # Pillow's plugins raise these
        raise UnreadableImageError(f"damaged ({_short(str(e) or type(e).__name__)})") from None
    channels, bits = _MODES[mode]
    if transparent:
        channels = 4
    return ImageInfo(digest, fmt, width, height, channels, bits, mode, len(data))


def _short(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
