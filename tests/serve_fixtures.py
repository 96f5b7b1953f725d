"""Helpers for the Serve app's tests and benchmark: tiny exported models, test images, waiting.

Import as `from tests.serve_fixtures import ...` (run pytest as `python -m pytest` from the repo
root, or with the repo root on `sys.path`).
"""

from __future__ import annotations

import base64
import io
import socket
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from data.model_format import ModelMetadata
from data.preprocess import input_spec
from data.schema import DEFECT_CLASSES, NO_DEFECT_CLASSES
from data.synth import render
from tests.waiting import wait_for  # noqa: F401  (re-exported for the Serve tests)
from train_jobs.export import export_model
from train_jobs.model import ADCNet


def export_tiny_model(
    directory: Path | str,
    version: str,
    *,
    seed: int = 0,
    width: int = 4,
    size: int = 64,
    name: str = "adc-test",
    thresholds: dict[str, float] | None = None,
) -> tuple[str, ModelMetadata]:
    """Export an untrained ADCNet (weights from `seed`) into `directory`; (uri, metadata).

    Default thresholds are 0.0, so every answer is auto-decided (defect or false_defect).
    """
    torch.manual_seed(seed)
    model = ADCNet(len(DEFECT_CLASSES), width=width)
    uri = Path(directory).as_posix()
    meta = export_model(
        model,
        uri,
        name=name,
        version=version,
        classes=list(DEFECT_CLASSES),
        no_defect_classes=list(NO_DEFECT_CLASSES),
        input_spec=input_spec(size),
        thresholds=thresholds or {c: 0.0 for c in DEFECT_CLASSES},
        metrics={"val_accuracy": 0.0},
        lineage={"dataset": "none", "seed": seed},
    )
    return uri, meta


def encode(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()


def synth_pixels(index: int, size: int = 64, seed: int = 7) -> np.ndarray:
    return render(seed, index, size)[0]


def synth_png(index: int, size: int = 64, fmt: str = "PNG") -> bytes:
    """A realistic AOI image (synthetic panel, maybe a defect) as an encoded file."""
    return encode(synth_pixels(index, size), fmt)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


