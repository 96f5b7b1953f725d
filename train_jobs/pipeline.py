"""The Ray Data pipeline of a training run: read shards, decode, label, split, augment.

A run reads its base dataset and any extra datasets (the reviewed images of a line with their
verdict labels, `Source` each): every source is read, decoded (whatever format and size its
images were stored in) and resized the same way, and each image's own split
(`data.schema.split_of` of its id) decides whether it trains, validates or is held out, so a test
image is never trained on, whichever dataset it came from. Decoding and labelling run once (the
decoded dataset is small: a few MB at 64 px) and are materialised in the object store;
augmentation runs per epoch in the streaming pipeline, so every epoch sees new random flips,
rotations and noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from configs.errors import ConfigError
from data.annotations import read_annotations_url
from data.dataset import Dataset, open_dataset
from data.fs import arrow_fs
from data.preprocess import decode_image, normalize, resize, to_model_input
from data.schema import DEFECT_CLASSES, split_of

__all__ = ["DecodeAndLabel", "Source", "augment", "decoded_dataset", "only_split", "run_classes", "run_labels",
           "run_sources", "split_arrays", "to_tensors"]


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


@dataclass
class Source:
    """One dataset a run trains on, with the labels it trains with and their annotations' NAME@V."""

    dataset: Dataset
    labels: dict[str, str]
    present: list[str]
    annotations: str | None


def run_sources(dataset_url: str, annotations_url: str | None,
                extra: list[tuple[str, str]] = ()) -> list[Source]:
    """The base dataset (with `annotations_url`, if any) then each extra (dataset URL, annotations
    URL) pair, each opened with the labels it trains with (see `run_labels`)."""
    sources = []
    for url, ann in [(dataset_url, annotations_url), *extra]:
        ds = open_dataset(url)
        labels, present, ann_id = run_labels(ds, ann)
        sources.append(Source(ds, labels, present, ann_id))
    return sources


def run_classes(sources: list[Source]) -> list[str]:
    """The union of the classes present: the base dataset's in its order, then those only extra
    data has (the built-in ones in their usual order first). Keeping the base's order keeps a
    retrained model's classes those of the model it fine-tunes from when no new class appeared."""
    classes = list(sources[0].present) if sources else []
    more = {c for s in sources[1:] for c in s.present} - set(classes)
    return classes + [c for c in DEFECT_CLASSES if c in more] + sorted(more - set(DEFECT_CLASSES))


def decoded_dataset(sources: list[Source], classes: list[str], size: int):
    """Every source's shards read by Ray Data, decoded, labelled and resized to `size`, as one
    materialised Ray dataset of `pixels`, `label`, `split` rows."""
    import ray.data

    parts = []
    for source in sources:
        filesystem, _ = arrow_fs(source.dataset.url)
        paths = [arrow_fs(u)[1] for u in source.dataset.shard_urls]
        parts.append(
            ray.data.read_parquet(paths, filesystem=filesystem, columns=["image_id", "image"])
            .map_batches(DecodeAndLabel, fn_constructor_args=(source.labels, classes, size),
                         batch_format="pyarrow", batch_size=256, concurrency=1))
    out = parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])
    return out.materialize()


def split_arrays(sources: list[Source], classes: list[str], split: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(normalised model input, label indices) of every labelled image of `split` in `sources`."""
    index = {c: i for i, c in enumerate(classes)}
    xs, ys = [], []
    for source in sources:
        table = source.dataset.read_images(["image_id", "image"])
        for image_id, blob in zip(table.column("image_id").to_pylist(), table.column("image").to_pylist()):
            if split_of(image_id) == split and source.labels.get(image_id) in index:
                xs.append(decode_image(blob))
                ys.append(index[source.labels[image_id]])
    if not xs:
        raise ConfigError(f"No labelled {split} images in {', '.join(s.dataset.dataset_id for s in sources)}.",
                          hint="Train on a dataset with more labelled images.")
    return to_model_input(xs, size), np.array(ys, dtype=np.int64)


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
