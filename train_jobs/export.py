"""Export a trained ADCNet as a self-contained `torch.export` program plus `metadata.json`,
with per-class confidence thresholds calibrated on the validation split."""

from __future__ import annotations

import hashlib
import io
import json
from datetime import datetime, timezone
from typing import Any

import fsspec
import numpy as np
import torch

from data.model_format import FORMAT, METADATA_FILE, MODEL_FILE, InputSpec, ModelMetadata

#: Fewest validation images of a predicted class needed to trust its calibrated threshold; with
#: fewer, the class is only auto-decided at a confidence of 1.0 (i.e. practically always reviewed).
MIN_CALIBRATION_SUPPORT = 5


def calibrate_thresholds(
    probs: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    target_precision: float,
    no_defect_classes: list[str],
) -> dict[str, float]:
    """Per predicted class, the lowest confidence threshold whose auto-decided set is precise.

    For class c, sort validation images predicted as c by confidence (high first) and keep the
    longest prefix whose precision stays >= `target_precision`; the threshold is the confidence of
    its last element. For no-defect classes (a miss there is an escape, the costly error), the
    prefix must contain no real defect at all.
    """
    pred = probs.argmax(axis=1)
    conf = probs.max(axis=1)
    thresholds: dict[str, float] = {}
    for c, name in enumerate(classes):
        sel = np.nonzero(pred == c)[0]
        if len(sel) < MIN_CALIBRATION_SUPPORT:
            thresholds[name] = 1.0
            continue
        order = sel[np.argsort(-conf[sel], kind="stable")]
        correct = labels[order] == c
        precision = np.cumsum(correct) / np.arange(1, len(order) + 1)
        required = 1.0 if name in no_defect_classes else target_precision
        ok = np.nonzero(precision >= required - 1e-12)[0]
        # The last prefix that still meets the target; ties in confidence stay together.
        k = int(ok.max()) if len(ok) else -1
        thresholds[name] = float(conf[order[k]]) if k >= 0 else 1.0
    return thresholds


def export_model(
    model: torch.nn.Module,
    output_uri: str,
    *,
    name: str,
    version: str,
    classes: list[str],
    no_defect_classes: list[str],
    input_spec: dict[str, Any],
    thresholds: dict[str, float],
    metrics: dict[str, Any] | None = None,
    lineage: dict[str, Any] | None = None,
) -> ModelMetadata:
    """Write `model.pt2` then `metadata.json` (last, so a reader never sees half a model)."""
    model = model.eval().to("cpu")
    spec = InputSpec(**input_spec)
    example = torch.zeros(2, spec.channels, spec.size, spec.size)
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.export.export(model, (example,), dynamic_shapes={"x": {0: batch}})
    buf = io.BytesIO()
    torch.export.save(program, buf)
    blob = buf.getvalue()
    meta = ModelMetadata(
        format=FORMAT,
        name=name,
        version=version,
        classes=list(classes),
        no_defect_classes=list(no_defect_classes),
        input=spec,
        thresholds=thresholds,
        metrics=metrics or {},
        lineage=lineage or {},
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        sha256=hashlib.sha256(blob).hexdigest(),
    )
    base = output_uri.rstrip("/")
    fs, path = fsspec.core.url_to_fs(base)
    fs.makedirs(path, exist_ok=True)
    with fs.open(f"{path}/{MODEL_FILE}", "wb") as f:
        f.write(blob)
    with fs.open(f"{path}/{METADATA_FILE}", "w") as f:
        json.dump(meta.model_dump(), f, indent=2)
    return meta
