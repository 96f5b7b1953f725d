"""A labelled contact sheet of synthetic samples, so a person can see what the data is."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from data.schema import DEFECT_CLASSES
from data.synth import render

__all__ = ["contact_sheet"]


def contact_sheet(path: str | Path, seed: int = 0, size: int = 64, per_class: int = 8, zoom: int = 2) -> Path:
    """Write a PNG grid: one row per class, `per_class` samples each, labelled. Returns the path."""
    cell = size * zoom
    label_w, pad = 110, 4
    sheet = Image.new("L", (label_w + per_class * (cell + pad), len(DEFECT_CLASSES) * (cell + pad + 12)), 255)
    draw = ImageDraw.Draw(sheet)
    for row, cls in enumerate(DEFECT_CLASSES):
        top = row * (cell + pad + 12)
        draw.text((4, top + cell // 2), cls, fill=0)
        for col in range(per_class):
            pixels, _, kind, box = render(seed, row * 1000 + col, size, label=cls)
            img = Image.fromarray(pixels, mode="L").resize((cell, cell), Image.NEAREST)
            left = label_w + col * (cell + pad)
            sheet.paste(img, (left, top))
            draw.text((left, top + cell), kind if cls == "false_defect" else "", fill=0)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
