"""Synthetic AOI images of a TFT array with the defects a display-panel line engineer knows.

Each image is rendered from its own random stream (`seed`, `index`), so a dataset is
deterministic for a seed, byte-identical across runs, and can be rendered in any order or in
parallel. The physics is simplified but kept honest: the pixel grid (pitch, brightness, focus)
varies per image, real defects sit on the panel (in focus, aligned to the TFT cells where the
defect is electrical), mura is a blotch of a few percent contrast, and false defects are things
that fool an AOI machine (dust on the cover glass out of focus, hot sensor pixels or noise flare,
the edge of a different pattern area) and resemble real defects at a glance.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np
from PIL import Image

from data.schema import DEFECT_CLASSES

__all__ = [
    "CLASS_WEIGHTS",
    "FALSE_DEFECT_KINDS",
    "PROCESS_STEPS",
    "PRODUCTS",
    "SynthImage",
    "blur",
    "generate",
    "render",
]

#: Share of each class in a generated dataset (AOI flags are mostly false defects).
CLASS_WEIGHTS: dict[str, float] = {
    name: (0.25 if name == "false_defect" else 0.15) for name in DEFECT_CLASSES
}
FALSE_DEFECT_KINDS = ("dust_out_of_focus", "hot_pixels", "noise_flare", "pattern_edge")
PRODUCTS = ("P65-OLED", "P55-LCD", "P14-LTPS")
PROCESS_STEPS = ("array-gate", "array-sd", "array-ito", "cell-pi")
_EPOCH = datetime(2026, 11, 2, 6, 0, tzinfo=timezone.utc)


@dataclass(frozen=True)
class SynthImage:
    """One rendered image with its ground truth."""

    image_id: str
    site: str
    label: str
    kind: str  # sub-kind, e.g. which false defect
    pixels: np.ndarray  # uint8, shape (size, size)
    box: tuple[int, int, int, int]  # x, y, w, h of the defect (or of what fooled the AOI)
    product: str
    process_step: str
    aoi_machine: str
    captured_at: datetime

    def png(self) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(self.pixels, mode="L").save(buf, format="PNG", compress_level=1)
        return buf.getvalue()


def _gauss_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(np.ceil(3 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with reflected borders (no SciPy needed)."""
    if sigma <= 0.05:
        return img
    k = _gauss_kernel(sigma)
    r = len(k) // 2
    h, w = img.shape
    p = np.pad(img, ((0, 0), (r, r)), mode="reflect")
    out = sum(k[i] * p[:, i : i + w] for i in range(len(k)))
    p = np.pad(out, ((r, r), (0, 0)), mode="reflect")
    return sum(k[i] * p[i : i + h, :] for i in range(len(k)))


@dataclass
class _Panel:
    """The in-focus panel being rendered, and the grid that defects align to."""

    img: np.ndarray
    pitch: float
    phase: tuple[float, float]
    base: float
    yy: np.ndarray
    xx: np.ndarray
    scale: float


def _grid(xx, yy, pitch, phase, base, bm_contrast) -> np.ndarray:
    fx = ((xx + phase[0]) % pitch) / pitch
    fy = ((yy + phase[1]) % pitch) / pitch
    bm = ((fx < 0.22) | (fy < 0.22)).astype(np.float64)  # black matrix between sub-pixels
    tft = ((fx > 0.22) & (fx < 0.42) & (fy > 0.22) & (fy < 0.42)).astype(np.float64)
    return base * (1.0 - bm_contrast * bm) * (1.0 - 0.5 * bm_contrast * tft)


def _panel(rng: np.random.Generator, size: int) -> _Panel:
    scale = size / 64.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    pitch = rng.uniform(4.0, 6.5) * scale
    phase = (rng.uniform(0, pitch), rng.uniform(0, pitch))
    base = rng.uniform(0.35, 0.65)
    bm_contrast = rng.uniform(0.10, 0.25)
    img = _grid(xx, yy, pitch, phase, base, bm_contrast)
    gx, gy = rng.uniform(-0.01, 0.01, 2)  # uneven illumination, well below mura contrast
    img = img * (1 + gx * (2 * xx / size - 1) + gy * (2 * yy / size - 1))
    return _Panel(img, pitch, phase, base, yy, xx, scale)


def _box(cx: float, cy: float, rx: float, ry: float, size: int) -> tuple[int, int, int, int]:
    x0, y0 = max(0, int(cx - rx)), max(0, int(cy - ry))
    x1, y1 = min(size, int(np.ceil(cx + rx)) + 1), min(size, int(np.ceil(cy + ry)) + 1)
    return x0, y0, max(1, x1 - x0), max(1, y1 - y0)


def _particle(rng, p: _Panel, size: int):
    m = 6 * p.scale
    cx, cy = rng.uniform(m, size - m, 2)
    r = rng.uniform(1.2, 2.4) * p.scale
    blob = np.zeros_like(p.img)
    for _ in range(rng.integers(1, 4)):  # irregular outline: a few overlapping lobes
        ox, oy = rng.normal(0, r * 0.5, 2)
        rr = r * rng.uniform(0.6, 1.0)
        blob = np.maximum(blob, np.exp(-((p.xx - cx - ox) ** 2 + (p.yy - cy - oy) ** 2) / (2 * rr**2)))
    contrast = rng.uniform(0.3, 0.55)
    sign = -1.0 if rng.random() < 0.85 else 1.0  # particles mostly shade the panel
    p.img = p.img * (1 + sign * contrast * blob)
    return "particle", _box(cx, cy, 2.5 * r, 2.5 * r, size)


def _curve_distance(p: _Panel, pts: np.ndarray) -> np.ndarray:
    d2 = (p.xx[..., None] - pts[:, 0]) ** 2 + (p.yy[..., None] - pts[:, 1]) ** 2
    return np.sqrt(d2.min(axis=-1))


def _scratch(rng, p: _Panel, size: int):
    length = rng.uniform(18, 45) * p.scale
    angle = rng.uniform(0, np.pi)
    cx, cy = rng.uniform(0.25 * size, 0.75 * size, 2)
    t = np.linspace(-0.5, 0.5, 80)
    bend = rng.uniform(-0.15, 0.15) * length
    dx, dy = np.cos(angle), np.sin(angle)
    pts = np.stack([cx + t * length * dx - bend * (t**2) * dy, cy + t * length * dy + bend * (t**2) * dx], 1)
    width = rng.uniform(0.5, 0.8) * p.scale
    line = np.exp(-(_curve_distance(p, pts) ** 2) / (2 * width**2))
    contrast = rng.uniform(0.22, 0.45)
    sign = -1.0 if rng.random() < 0.6 else 1.0
    p.img = p.img * (1 + sign * contrast * line)
    xs, ys = pts[:, 0], pts[:, 1]
    return "scratch", _box((xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2,
                           (xs.max() - xs.min()) / 2 + 2, (ys.max() - ys.min()) / 2 + 2, size)


def _mura(rng, p: _Panel, size: int):
    sx, sy = rng.uniform(6, 13, 2) * p.scale
    theta = rng.uniform(0, np.pi)
    cx, cy = rng.uniform(0.2 * size, 0.8 * size, 2)
    u = (p.xx - cx) * np.cos(theta) + (p.yy - cy) * np.sin(theta)
    v = -(p.xx - cx) * np.sin(theta) + (p.yy - cy) * np.cos(theta)
    blotch = np.exp(-(((u / sx) ** 2 + (v / sy) ** 2) ** 1.5))  # flat-topped, no sharp edge
    contrast = rng.uniform(0.04, 0.08)  # a few percent: what makes mura hard on a real line
    sign = -1.0 if rng.random() < 0.6 else 1.0
    p.img = p.img * (1 + sign * contrast * blotch)
    return "mura", _box(cx, cy, 1.3 * max(sx, sy), 1.3 * max(sx, sy), size)


def _cell_span(p: _Panel, index: int, axis: int) -> tuple[float, float]:
    start = index * p.pitch - p.phase[axis] + 0.22 * p.pitch
    return start, start + 0.78 * p.pitch


def _line_defect(rng, p: _Panel, size: int):
    axis = int(rng.integers(0, 2))  # 0: column line (vertical), 1: row line (horizontal)
    cells = int(size / p.pitch)
    lo, hi = _cell_span(p, int(rng.integers(1, max(2, cells - 1))), axis)
    coord = p.xx if axis == 0 else p.yy
    along = p.yy if axis == 0 else p.xx
    mask = ((coord >= lo) & (coord < hi)).astype(np.float64)
    if rng.random() < 0.3:  # an open line that stops part-way
        end = rng.uniform(0.5, 0.9) * size
        mask *= (along < end) if rng.random() < 0.5 else (along > size - end)
    contrast = rng.uniform(0.2, 0.5)
    sign = 1.0 if rng.random() < 0.5 else -1.0
    p.img = p.img * (1 + sign * contrast * mask)
    ys, xs = np.nonzero(mask)
    return "line_defect", _box((xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2,
                               (xs.max() - xs.min()) / 2 + 1, (ys.max() - ys.min()) / 2 + 1, size)


def _pinhole(rng, p: _Panel, size: int):
    cells = int(size / p.pitch)
    i, j = rng.integers(1, max(2, cells - 1), 2)
    x0, x1 = _cell_span(p, int(i), 0)
    y0, y1 = _cell_span(p, int(j), 1)
    if rng.random() < 0.3:  # two neighbouring cells
        x1 += p.pitch
    mask = ((p.xx >= x0) & (p.xx < x1) & (p.yy >= y0) & (p.yy < y1)).astype(np.float64)
    if rng.random() < 0.5:
        p.img = p.img * (1 + rng.uniform(0.45, 0.8) * mask)  # stuck-bright pixel / pinhole
    else:
        p.img = p.img * (1 - rng.uniform(0.5, 0.8) * mask)  # dead pixel: the whole cell is off
    return "pinhole", _box((x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2 + 1, (y1 - y0) / 2 + 1, size)


def _false_defect(rng, p: _Panel, size: int):
    kind = FALSE_DEFECT_KINDS[int(rng.integers(0, len(FALSE_DEFECT_KINDS)))]
    m = 6 * p.scale
    cx, cy = rng.uniform(m, size - m, 2)
    if kind == "dust_out_of_focus":
        # Dust on the cover glass: a soft disk (sometimes with a bright rim), far out of focus.
        radius = rng.uniform(2.0, 4.0) * p.scale
        r = np.hypot(p.xx - cx, p.yy - cy)
        disk = blur((r < radius).astype(np.float64), rng.uniform(1.0, 2.0) * p.scale)
        ring = blur((np.abs(r - radius) < 0.8 * p.scale).astype(np.float64), 0.8 * p.scale)
        rim = rng.uniform(0.0, 0.04) if rng.random() < 0.5 else 0.0
        p.img = p.img * (1 - rng.uniform(0.08, 0.16) * disk + rim * ring)
        return kind, _box(cx, cy, radius + 2, radius + 2, size)
    if kind == "pattern_edge":
        # The boundary of a pattern area with a shifted grid: a straight edge, not a thin line.
        axis = int(rng.integers(0, 2))
        at = rng.uniform(0.25, 0.75) * size
        coord = p.xx if axis == 0 else p.yy
        shifted = _grid(p.xx, p.yy, p.pitch, (p.phase[0] + p.pitch / 2, p.phase[1] + p.pitch / 2),
                        p.base * rng.uniform(0.97, 1.03), rng.uniform(0.10, 0.25))
        side = coord > at if rng.random() < 0.5 else coord < at
        p.img = np.where(side, shifted, p.img)
        if axis == 0:
            return kind, _box(at, size / 2, 2, size / 2, size)
        return kind, _box(size / 2, at, size / 2, 2, size)
    # Sensor artefacts are added after the optics (sharp, not aligned to the TFT cells).
    return kind, _box(cx, cy, 8 * p.scale, 8 * p.scale, size)


_RENDER = {
    "particle": _particle,
    "scratch": _scratch,
    "mura": _mura,
    "line_defect": _line_defect,
    "pinhole": _pinhole,
    "false_defect": _false_defect,
}


def _sensor(rng, img: np.ndarray, kind: str, box, p: _Panel) -> np.ndarray:
    sigma = rng.uniform(0.008, 0.02)
    noise = rng.normal(0.0, 1.0, img.shape) * sigma * np.sqrt(np.clip(img, 0.05, 1.0) / 0.5)
    x, y, w, h = box
    cx, cy = x + w / 2, y + h / 2
    if kind == "noise_flare":  # a patch of amplified read noise, e.g. from a flickering LED
        envelope = np.exp(-((p.xx - cx) ** 2 + (p.yy - cy) ** 2) / (2 * (rng.uniform(3, 6) * p.scale) ** 2))
        noise = noise * (1 + rng.uniform(3.0, 6.0) * envelope)
    img = img + noise
    if kind == "hot_pixels":  # single sensor pixels, smaller than one TFT cell
        for _ in range(rng.integers(1, 4)):
            px = int(np.clip(cx + rng.normal(0, 2 * p.scale), 0, img.shape[1] - 1))
            py = int(np.clip(cy + rng.normal(0, 2 * p.scale), 0, img.shape[0] - 1))
            img[py, px] += rng.uniform(0.2, 0.5)
    return img


def render(seed: int, index: int, size: int = 64, label: str | None = None) -> tuple[np.ndarray, str, str, tuple]:
    """Render image `index` of the dataset with `seed`: (uint8 pixels, label, sub-kind, box)."""
    rng = np.random.default_rng([seed, index])
    if label is None:
        names = list(CLASS_WEIGHTS)
        label = names[int(rng.choice(len(names), p=np.array(list(CLASS_WEIGHTS.values()))))]
    p = _panel(rng, size)
    kind, box = _RENDER[label](rng, p, size)
    focus = rng.uniform(0.4, 1.0) * p.scale  # optics: each image a little differently focused
    img = _sensor(rng, blur(p.img, focus), kind, box, p)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), label, kind, box


def generate(
    seed: int, count: int, size: int = 64, site: str = "fab-a", start: int = 0
) -> Iterator[SynthImage]:
    """Images `start .. start+count-1` of the dataset with `seed`, with their metadata."""
    for index in range(start, start + count):
        pixels, label, kind, box = render(seed, index, size)
        meta = np.random.default_rng([seed, index, 1])
        yield SynthImage(
            image_id=f"{site}-s{seed}-{index:07d}",
            site=site,
            label=label,
            kind=kind,
            pixels=pixels,
            box=tuple(int(v) for v in box),
            product=PRODUCTS[int(meta.integers(0, len(PRODUCTS)))],
            process_step=PROCESS_STEPS[int(meta.integers(0, len(PROCESS_STEPS)))],
            aoi_machine=f"AOI-{site}-{int(meta.integers(1, 5)):02d}",
            captured_at=_EPOCH + timedelta(seconds=7 * index + float(meta.uniform(0, 5))),
        )

