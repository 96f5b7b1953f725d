"""The Ray Data pipeline of a training run: read shards, decode, label, split, augment.

Decoding and labelling run once (the decoded dataset is small: a few MB at 64 px) and are
materialised in the object store; augmentation runs per epoch in the streaming pipeline, so every
epoch sees new random flips, rotations and noise.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from data.annotations import read_annotations_url
from data.dataset import Dataset
from data.preprocess import decode_image, normalize, resize
from data.schema import DEFECT_CLASSES, split_of

__all__ = ["DecodeAndLabel", "augment", "only_split", "run_labels", "to_tensors"]


def run_labels(dataset: Dataset, annotations_url: str | None) -> tuple[dict[str, str], list[str], str | None]:
    """(image id -> label, the classes present, the annotations' "NAME@V" or None) a run trains on.

    Without `annotations_url` these are the dataset's own labels and classes. With it, the labels
    of that annotations artifact replace them: only labels of the dataset's images count (images
    without one are skipped in training), and the classes are those present, the built-in ones
    first in their usual order.
    """
    if not annotations_url:
        return dataset.labels(), dataset.classes, None
    table = read_annotations_url(annotations_url)
    ids = set(dataset.read_images(["image_id"]).column("image_id").to_pylist())
    labels = {i: lab for i, lab in zip(table.column("image_id").to_pylist(), table.column("label").to_pylist())
              if i in ids}
    present = set(labels.values())
    classes = [c for c in DEFECT_CLASSES if c in present] + sorted(present - set(DEFECT_CLASSES))
    parts = annotations_url.rstrip("/").rsplit("/", 2)
    ann_id = f"{parts[-2]}@{parts[-1].removesuffix('.json')}" if len(parts) == 3 else annotations_url
    return labels, classes, ann_id


class DecodeAndLabel:
    """Ray Data batch UDF: PNG bytes -> uint8 pixels at the model size, label index, split."""

    def __init__(self, labels: dict[str, str], classes: list[str], size: int) -> None:
        self.index = {name: i for i, name in enumerate(classes)}
        self.labels = labels
        self.size = size

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        ids = batch.column("image_id").to_pylist()
        keep = [i for i, image_id in enumerate(ids) if self.labels.get(image_id) in self.index]
        pixels = [
            resize(decode_image(batch.column("image")[i].as_py()), self.size) for i in keep
        ]
        return {
            "pixels": np.stack(pixels) if pixels else np.zeros((0, self.size, self.size), np.uint8),
            "label": np.array([self.index[self.labels[ids[i]]] for i in keep], dtype=np.int64),
            "split": np.array([split_of(ids[i]) for i in keep], dtype=object),
        }


def only_split(batch: dict[str, np.ndarray], split: str) -> dict[str, np.ndarray]:
    keep = batch["split"] == split
    return {"pixels": batch["pixels"][keep], "label": batch["label"][keep]}


def to_tensors(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """uint8 pixels -> the model's normalised float32 NCHW input."""
    return {"x": normalize(batch["pixels"]), "y": batch["label"]}


def augment(batch: dict[str, np.ndarray], strength: float, seed: int | None = None) -> dict[str, np.ndarray]:
    """Random flips and 90-degree turns (every class is orientation-free on a panel) plus a
    little extra sensor noise, applied with probability `strength`; then normalise."""
    rng = np.random.default_rng(seed)
    pixels = batch["pixels"].copy()
    n = len(pixels)
    if strength > 0 and n:
        flip_h = rng.random(n) < 0.5 * strength
        flip_v = rng.random(n) < 0.5 * strength
        pixels[flip_h] = pixels[flip_h][:, :, ::-1]
        pixels[flip_v] = pixels[flip_v][:, ::-1, :]
        turn = rng.random(n) < 0.5 * strength
        pixels[turn] = np.rot90(pixels[turn], axes=(1, 2))
        noisy = rng.random(n) < 0.3 * strength
        if noisy.any():
            extra = rng.normal(0.0, 2.0, pixels[noisy].shape)
            pixels[noisy] = np.clip(pixels[noisy] + extra, 0, 255).astype(np.uint8)
    return to_tensors({"pixels": pixels, "label": batch["label"]})
