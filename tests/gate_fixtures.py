"""Data and models for the gate's tests whose quality is known in advance, without training.

A *pattern image* of class c is a flat grey panel with one bright block in cell c of a 2 x 3 grid.
The *oracle* model reads the six cells and calls the brightest one: always right and confident.
The *shuffled* oracle calls the next class instead (what a model trained on shuffled labels does,
only surer of itself): every answer is wrong, and its pinholes come out as confident
`false_defect`s (escapes).
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from data.artifacts import ArtifactStore
from data.image_datasets import ImageImport, ImageRecord, publish_images
from data.preprocess import input_spec
from data.schema import DEFECT_CLASSES, NO_DEFECT_CLASSES, split_of
from train_jobs.export import export_model
from train_jobs.scoring import gate_half

__all__ = ["SIZE", "OracleNet", "export_oracle", "pattern_png", "publish_patterns"]

SIZE = 48
_ROWS, _COLS = 2, 3


def pattern_png(cls: int, seed: int) -> bytes:
    """A 48 x 48 grey PNG with a bright block in grid cell `cls` (sensor noise from `seed`)."""
    rng = np.random.default_rng(seed)
    img = rng.normal(100.0, 3.0, (SIZE, SIZE))
    h, w = SIZE // _ROWS, SIZE // _COLS
    r, c = divmod(cls, _COLS)
    img[r * h + 4:(r + 1) * h - 4, c * w + 3:(c + 1) * w - 3] += 80.0
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "L").save(buf, "PNG")
    return buf.getvalue()


class OracleNet(torch.nn.Module):
    """Logits = the mean of each grid cell of the normalised image, scaled; `shift` rotates which
    class each cell stands for (0: the truth)."""

    def __init__(self, shift: int = 0, scale: float = 8.0) -> None:
        super().__init__()
        n = _ROWS * _COLS
        self.register_buffer("order", torch.tensor([(j - shift) % n for j in range(n)]))
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cells = x.reshape(-1, _ROWS, SIZE // _ROWS, _COLS, SIZE // _COLS).mean(dim=(2, 4))
        return cells.reshape(-1, _ROWS * _COLS)[:, self.order] * self.scale


def export_oracle(directory: Path | str, version: str, *, shuffled: bool = False, name: str = "gate-line",
                  threshold: float = 0.5) -> str:
    """Export the oracle (or the shuffled one) with every class threshold at `threshold`; its URI."""
    uri = Path(directory).as_posix()
    export_model(OracleNet(shift=1 if shuffled else 0).eval(), uri, name=name, version=version,
                 classes=list(DEFECT_CLASSES), no_defect_classes=list(NO_DEFECT_CLASSES),
                 input_spec=input_spec(SIZE), thresholds=dict.fromkeys(DEFECT_CLASSES, threshold),
                 lineage={"dataset": "patterns@1", "shuffled": shuffled})
    return uri


def publish_patterns(store: ArtifactStore, name: str, *, per_half: int = 8, others: int = 2,
                     only_test_split: bool = False, mislabel_half: str | None = None) -> ImageImport:
    """Publish pattern images as `dataset/<name>` (+ `annotations/<name>`): per class `per_half`
    images in each gate half among those whose `split_of` is "test" (what a golden set keeps),
    plus `others` per class from the other splits unless `only_test_split`. The images of gate
    half `mislabel_half` (if given) are labelled with the next class: wrong."""
    records: list[ImageRecord] = []
    for cls, label in enumerate(DEFECT_CLASSES):
        want = {"calibration": per_half, "test": per_half, "other": 0 if only_test_split else others}
        seed = cls * 100_000
        while any(want.values()):
            seed += 1
            data = pattern_png(cls, seed)
            sha = hashlib.sha256(data).hexdigest()
            key = gate_half(sha) if split_of(sha) == "test" else "other"
            if want[key]:
                want[key] -= 1
                wrong = DEFECT_CLASSES[(cls + 1) % len(DEFECT_CLASSES)]
                records.append(ImageRecord(data=data, label=wrong if key == mislabel_half else label,
                                           product="panel", source=f"pattern-{cls}-{seed}"))
    return publish_images(store, name, records, source={"generator": "tests.gate_fixtures"}, annotator="test")
