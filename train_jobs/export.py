"""Export a trained ADCNet as a self-contained `torch.export` program plus `metadata.json`,
with per-class confidence thresholds calibrated on the validation split, and publish it as a
model artifact."""

from __future__ import annotations

import hashlib
import io
import json
from datetime import datetime, timezone
from typing import Any

import fsspec
import numpy as np
import torch

from data.artifacts import ArtifactStore, Manifest
from data.model_format import (
    FORMAT,
    METADATA_FILE,
    MODEL_FILE,
    InputSpec,
    ModelMetadata,
    decide,
    decision_figures,
)
from data.preprocess import input_spec as make_input_spec
from data.publish import publish_artifact

__all__ = [
    "MIN_CALIBRATION_SUPPORT",
    "calibrate_and_export",
    "calibrate_thresholds",
    "decision_metrics",
    "export_model",
    "probabilities",
    "publish_model",
]

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
    """Per predicted class, the confidence at or above which it is auto-decided.

    Real-defect classes share one threshold estimated on all of their validation predictions
    pooled: the lowest confidence at which the auto-decided set still reaches `target_precision`.
    Pooling matters: a validation split holds ~100 images per class, and a per-class estimate would
    let a single confident mistake push that class's threshold to the top. No-defect classes get
    their own, stricter rule, because calling a real defect "false" is an escape, the costly miss:
    their threshold sits above every validation real defect they claimed (and meets the precision
    target). A class with fewer than MIN_CALIBRATION_SUPPORT predictions is always reviewed (1.0).
    """
    pred = probs.argmax(axis=1)
    conf = probs.max(axis=1)
    no_defect = np.array([classes[int(c)] in no_defect_classes for c in pred])
    thresholds: dict[str, float] = {}

    defect_idx = np.nonzero(~no_defect)[0]
    shared = _precise_threshold(conf[defect_idx], pred[defect_idx] == labels[defect_idx], target_precision)
    for c, name in enumerate(classes):
        support = int((pred == c).sum())
        if support < MIN_CALIBRATION_SUPPORT:
            thresholds[name] = 1.0
        elif name not in no_defect_classes:
            thresholds[name] = shared
        else:
            sel = np.nonzero(pred == c)[0]
            real = np.array([classes[int(t)] not in no_defect_classes for t in labels[sel]])
            escape_bound = float(np.nextafter(conf[sel][real].max(), 2.0)) if real.any() else 0.0
            precise = _precise_threshold(conf[sel], labels[sel] == c, target_precision)
            thresholds[name] = min(1.0, max(escape_bound, precise))
    return thresholds


def _precise_threshold(conf: np.ndarray, correct: np.ndarray, target: float) -> float:
    """Lowest confidence whose at-or-above set has precision >= target (1.0 if none has)."""
    if len(conf) == 0:
        return 1.0
    order = np.argsort(-conf, kind="stable")
    precision = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)
    ok = np.nonzero(precision >= target - 1e-12)[0]
    return float(conf[order[int(ok.max())]]) if len(ok) else 1.0


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


def probabilities(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """Softmax class probabilities of the normalised batch `x`, 512 images at a time."""
    model.eval()
    with torch.inference_mode():
        return torch.cat(
            [torch.softmax(model(torch.from_numpy(x[i : i + 512])), dim=1) for i in range(0, len(x), 512)]
        ).numpy()


def decision_metrics(probs: np.ndarray, y: np.ndarray, meta: ModelMetadata) -> dict[str, float]:
    """`decision_figures` of class probabilities `probs` against label indices `y`."""
    decided = decide(probs, meta)
    return decision_figures(
        [meta.classes[c] for c, _, _ in decided], [d for _, _, d in decided],
        [meta.classes[int(t)] for t in y], meta.no_defect_classes,
    )


def calibrate_and_export(
    model: torch.nn.Module,
    output_uri: str,
    *,
    x_val: np.ndarray,
    y_val: np.ndarray,
    name: str,
    version: str,
    classes: list[str],
    no_defect_classes: list[str],
    image_size: int,
    target_precision: float,
    metrics: dict[str, Any],
    lineage: dict[str, Any],
) -> ModelMetadata:
    """Calibrate thresholds on the validation split, add its decision figures to `metrics` as
    `val`, and export (what both a training run and a tuning search end with)."""
    model = model.eval().to("cpu")
    probs = probabilities(model, x_val)
    thresholds = calibrate_thresholds(probs, y_val, classes, target_precision, no_defect_classes)
    spec = make_input_spec(image_size)
    provisional = ModelMetadata(
        name=name, version=version, classes=classes, no_defect_classes=no_defect_classes,
        input=spec, thresholds=thresholds, created_at="-", sha256="-",
    )
    return export_model(
        model, output_uri, name=name, version=version, classes=classes, no_defect_classes=no_defect_classes,
        input_spec=spec, thresholds=thresholds,
        metrics={**metrics, "val": decision_metrics(probs, y_val, provisional)}, lineage=lineage,
    )


def publish_model(store_url: str, model_dir: str, meta: ModelMetadata) -> tuple[Manifest, str]:
    """Publish an exported model directory as artifact `model/<name>@<version>`; returns its
    manifest and manifest URL. Publishing the same files again is a no-op; other files under an
    existing version raise IntegrityError (published models never change)."""
    store = ArtifactStore(store_url)
    manifest = publish_artifact(
        store,
        "model", meta.name, meta.version, model_dir,
        meta={"model_id": meta.model_id, "metrics": meta.metrics.get("val", {}), "lineage": meta.lineage},
    )
    return manifest, store.manifest_url(manifest.ref)
