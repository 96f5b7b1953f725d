"""The gate as a job: `python -m train_jobs.gate --challenger URL --golden URL --output URL [...]`.

Scores a challenger, and the champion it would replace, on the same held-out data in one process:
the golden set (every image) plus the held-out slice of the recent reviewed images (those training
never fits on, `scoring.held_out_recent`). The images are split by a salted hash of their id into
a calibration half and a test half (`scoring.gate_half`); the challenger's thresholds are
recalibrated on the calibration half with the rule training uses, and both models are scored on
the test half (the champion with its own thresholds). Models are loaded as Serve loads them (the
`torch.export` program and `metadata.json`, checked against its sha256) and images are decoded and
normalised with `data.preprocess`, as Serve does. Shards are read one batch at a time, so memory
holds a batch of images and the class probabilities of the rest.

Writes `<output>/gate.json` (see `scoring` for the figures and the rule) and prints it on one
`ADCP_GATE` line (with `uri`, the file's URL) for the coordinator.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import pyarrow.parquet as pq
import torch

from configs.errors import AdcpError, InputError, IntegrityError, NotFoundError
from configs.lines import GateLimits
from configs.loader import validate
from configs.models import GateJobConfig
from configs.protocol import Marker, format_line
from data.annotations import read_annotations_url
from data.artifacts import file_url
from data.dataset import Dataset, open_dataset
from data.model_format import MODEL_FILE, ModelMetadata, read_metadata
from data.preprocess import decode_image, to_model_input
from train_jobs import scoring
from train_jobs.train import parse_config

__all__ = ["REPORT_FILE", "Scored", "load_model", "main", "parse_args", "run", "score_images"]

REPORT_FILE = "gate.json"


@dataclass
class _Model:
    meta: ModelMetadata
    module: Any


@dataclass
class Scored:
    """Per image of the gate's data: its id, true label, half, and each model's probabilities."""

    ids: list[str] = field(default_factory=list)
    truth: list[str] = field(default_factory=list)
    half: list[str] = field(default_factory=list)
    probs: list[list[np.ndarray]] = field(default_factory=list)  # per model, one array per batch

    def stacked(self, i: int, n_classes: int) -> np.ndarray:
        parts = self.probs[i]
        return np.concatenate(parts) if parts else np.zeros((0, n_classes), np.float32)


def parse_args(argv: list[str] | None = None) -> GateJobConfig:
    return parse_config(GateJobConfig, argv, prog="python -m train_jobs.gate", description=__doc__)


def load_model(uri: str) -> _Model:
    """The model at `uri` (a model folder or a model artifact's manifest URL), as Serve loads it.
    NotFoundError when it is missing, IntegrityError when its program does not match its metadata."""
    meta = read_metadata(uri)
    url = file_url(uri, MODEL_FILE)
    try:
        with fsspec.open(url, "rb") as f:
            blob = f.read()
    except FileNotFoundError as e:
        raise NotFoundError(f"No model program at {url}.") from e
    if hashlib.sha256(blob).hexdigest() != meta.sha256:
        raise IntegrityError(f"{url} does not match its metadata.json (sha256 differs).",
                             hint="The model was modified or only partly copied; copy it again.")
    try:
        module = torch.export.load(io.BytesIO(blob)).module()
    except Exception as e:  # torch raises many types for a bad archive
        raise IntegrityError(f"{url} is not a loadable torch.export program: {e}.") from e
    return _Model(meta, module)


def _batches(dataset: Dataset, batch_size: int) -> Iterator[tuple[list[str], list[bytes]]]:
    """(image ids, encoded images) of the dataset, `batch_size` rows at a time, shard by shard."""
    for url in dataset.shard_urls:
        fs, path = fsspec.core.url_to_fs(url)
        with fs.open(path, "rb") as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=["image_id", "image"]):
                yield batch.column("image_id").to_pylist(), batch.column("image").to_pylist()


def _probabilities(model: _Model, blobs: list[bytes]) -> np.ndarray:
    spec = model.meta.input
    x = to_model_input([decode_image(b, channels=spec.channels) for b in blobs], spec.size)
    with torch.inference_mode():
        return torch.softmax(model.module(torch.from_numpy(x)), dim=1).numpy()


def score_images(models: list[_Model], sources: list[tuple[Dataset, dict[str, str], bool]],
                 batch_size: int) -> Scored:
    """Run every model over every labelled image of each (dataset, labels, recent) source; a
    recent source contributes only its held-out images."""
    scored = Scored(probs=[[] for _ in models])
    for dataset, labels, recent in sources:
        for ids, blobs in _batches(dataset, batch_size):
            keep = [i for i, image_id in enumerate(ids)
                    if image_id in labels and (not recent or scoring.held_out_recent(image_id))]
            if not keep:
                continue
            chosen = [blobs[i] for i in keep]
            for m, model in enumerate(models):
                scored.probs[m].append(_probabilities(model, chosen))
            for i in keep:
                scored.ids.append(ids[i])
                scored.truth.append(labels[ids[i]])
                scored.half.append(scoring.gate_half(ids[i]))
    return scored


def _target_precision(cfg: GateJobConfig, meta: ModelMetadata, limits: GateLimits) -> float:
    if cfg.target_precision is not None:
        return cfg.target_precision
    trained = (meta.lineage.get("config") or {}).get("target_precision")
    return float(trained) if isinstance(trained, (int, float)) else limits.min_auto_precision


def run(cfg: GateJobConfig) -> dict[str, Any]:
    """Score, decide, write `gate.json`, print the `ADCP_GATE` line; returns the report.
    InputError when the data leaves either half empty."""
    torch.set_num_threads(cfg.threads)
    limits = validate(GateLimits, cfg.limits, "gate limits")
    golden = open_dataset(cfg.golden)
    sources: list[tuple[Dataset, dict[str, str], bool]] = [(golden, golden.labels(), False)]
    recent = None
    if cfg.recent_dataset:
        recent = open_dataset(cfg.recent_dataset)
        if cfg.recent_annotations:
            table = read_annotations_url(cfg.recent_annotations)
            labels = dict(zip(table.column("image_id").to_pylist(), table.column("label").to_pylist()))
        else:
            labels = recent.labels()
        sources.append((recent, labels, True))
    challenger = load_model(cfg.challenger)
    champion = load_model(cfg.champion) if cfg.champion else None
    models = [challenger] + ([champion] if champion else [])
    scored = score_images(models, sources, cfg.batch_size)

    cal = np.array([h == "calibration" for h in scored.half], dtype=bool)
    test = ~cal
    if not cal.any() or not test.any():
        raise InputError(f"The gate's data holds {int(cal.sum())} calibration and {int(test.sum())} test images; "
                         "both halves need images.", hint="Make the golden set from a bigger dataset.")
    truth = np.array(scored.truth, dtype=object)
    ch_probs = scored.stacked(0, len(challenger.meta.classes))
    thresholds = scoring.recalibrate(ch_probs[cal], list(truth[cal]), challenger.meta,
                                     _target_precision(cfg, challenger.meta, limits))
    ch_fig = scoring.figures(ch_probs[test], list(truth[test]), challenger.meta, thresholds)
    champ_fig = None
    if champion is not None:
        champ_fig = scoring.figures(scored.stacked(1, len(champion.meta.classes))[test], list(truth[test]),
                                    champion.meta)
    passed, failed, reasons = scoring.verdict(ch_fig, champ_fig, limits)
    report = {
        "passed": passed, "failed": failed, "reasons": reasons,
        "challenger": challenger.meta.model_id, "champion": champion.meta.model_id if champion else None,
        "figures": {"champion": champ_fig, "challenger": ch_fig},
        "thresholds": thresholds,
        "limits": limits.model_dump(),
        "data": {"golden": golden.dataset_id, "recent": recent.dataset_id if recent else None,
                 "calibration_images": int(cal.sum()), "test_images": int(test.sum())},
    }
    url = f"{cfg.output.rstrip('/')}/{REPORT_FILE}"
    fs, path = fsspec.core.url_to_fs(url)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "w") as f:
        json.dump(report, f, indent=2, sort_keys=True)
    print(format_line(Marker.GATE, {**report, "uri": url}), flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    try:
        run(parse_args(argv))
    except AdcpError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
