"""Search training hyperparameters with Ray Tune and export the best model:
`python -m train_jobs.tune --dataset URL --output URL --trials N --epochs E`.

Runs as a Ray job at a site. The dataset is decoded once and put in the object store; each
trial trains ADCNet in its own process on `cpus_per_trial` CPUs (no Ray Train: a trial is small),
sampling the learning rate (log-uniform), the batch size (a choice) and the augmentation strength
(uniform). ASHA stops trials whose validation accuracy falls behind. The best trial's model is
calibrated and exported exactly like a training run's (`model.pt2` + `metadata.json`) and, with
`--artifact-store`, published as `model/<name>@<version>`.

Machine-readable lines: `ADCP_TUNE {"best": {...}, "metrics": {...}, "trials": [...]}`, then
`ADCP_MODEL {...}` as `train_jobs.train` prints it.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from configs.errors import AdcpError, ConfigError
from configs.models import TuneConfig
from configs.protocol import Marker, format_line
from data.dataset import Dataset, open_dataset
from data.fs import arrow_fs
from data.model_format import ModelMetadata
from data.preprocess import normalize
from data.schema import NO_DEFECT_CLASSES
from train_jobs.checkpoints import STATE_FILE, save_state
from train_jobs.export import calibrate_and_export
from train_jobs.model import ADCNet
from train_jobs.pipeline import DecodeAndLabel, augment, run_labels
from train_jobs.steps import class_weights, epoch_metrics, evaluate, train_epoch
from train_jobs.train import check_model_unpublished, model_identity, parse_config, report_model

__all__ = ["SEARCHED", "main", "parse_args", "run", "search_space"]

#: What a trial samples, and what `ADCP_TUNE`'s `best` holds.
SEARCHED = ("lr", "batch_size", "augment")


def parse_args(argv: list[str] | None = None) -> TuneConfig:
    return parse_config(TuneConfig, argv, prog="python -m train_jobs.tune", description=__doc__)


def decode_splits(dataset: Dataset, labels: dict[str, str], classes: list[str], size: int) -> dict[str, np.ndarray]:
    """Every labelled image of the train and val splits, decoded once: uint8 train pixels (the
    trials augment them per epoch) and normalised val inputs, with label indices."""
    out = DecodeAndLabel(labels, classes, size)(dataset.read_images(["image_id", "image"]))
    train, val = out["split"] == "train", out["split"] == "val"
    return {
        "train_pixels": out["pixels"][train], "train_labels": out["label"][train],
        "val_x": normalize(out["pixels"][val]), "val_y": out["label"][val],
    }


def _train_batches(pixels: np.ndarray, labels: np.ndarray, batch_size: int, strength: float,
                   rng: np.random.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    order = rng.permutation(len(labels))
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        batch = augment({"pixels": pixels[idx], "label": labels[idx]}, strength, seed=int(rng.integers(2**31)))
        yield torch.from_numpy(batch["x"]), torch.from_numpy(batch["y"])


def _val_batches(x: torch.Tensor, y: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for i in range(0, len(y), 256):
        yield x[i : i + 256], y[i : i + 256]


def trial(config: dict[str, Any], data: dict[str, np.ndarray], fixed: dict[str, Any]) -> None:
    """One Tune trial: train for up to `fixed["epochs"]` epochs, reporting validation metrics and
    a checkpoint after each (ASHA may stop it after any report)."""
    import ray.tune

    torch.set_num_threads(max(1, int(fixed["cpus_per_trial"])))
    torch.manual_seed(fixed["seed"])
    rng = np.random.default_rng(fixed["seed"])
    classes = fixed["classes"]
    lr, batch_size, strength = float(config["lr"]), int(config["batch_size"]), float(config["augment"])
    weights = class_weights(classes, fixed["no_defect_classes"], fixed["defect_weight"])
    model = ADCNet(len(classes), in_channels=1, width=fixed["width"]).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=fixed["weight_decay"])
    rows = len(data["train_labels"])
    total_steps = fixed["epochs"] * max(1, -(-rows // batch_size)) + 1
    trial_id = ray.tune.get_context().get_trial_id()
    # The arrays are read-only views of the object store; torch wants tensors it may write.
    val_x, val_y = torch.from_numpy(data["val_x"].copy()), torch.from_numpy(data["val_y"].copy())
    step = 0
    for epoch in range(fixed["epochs"]):
        t0 = time.monotonic()
        loss_sum, seen, conf_train, step = train_epoch(
            model, optimizer, _train_batches(data["train_pixels"], data["train_labels"], batch_size, strength, rng),
            weights=weights, max_lr=lr, total_steps=total_steps, step=step,
        )
        conf_val, val_loss = evaluate(model, _val_batches(val_x, val_y), len(classes), "cpu")
        metrics = epoch_metrics(epoch, loss_sum, seen, conf_train, conf_val, val_loss, classes)
        metrics["epoch_seconds"] = round(time.monotonic() - t0, 2)
        # Not "epoch N/M loss=": that is a training run's epoch line, which followers parse.
        print(f"trial {trial_id} epoch {epoch + 1}/{fixed['epochs']}: val_acc={metrics['val_accuracy']:.4f} "
              f"loss={metrics['loss']:.4f} lr={lr:.2e} batch={batch_size} augment={strength:.2f}", flush=True)
        with tempfile.TemporaryDirectory(prefix="adcp-trial-") as folder:
            save_state(folder, model, optimizer, epoch=epoch, step=step, classes=classes)
            ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(folder))


def search_space(cfg: TuneConfig) -> dict[str, Any]:
    """Tune's param space: log-uniform lr, a batch-size choice, uniform augmentation."""
    from ray import tune

    return {
        "lr": tune.loguniform(cfg.lr_min, cfg.lr_max) if cfg.lr_max > cfg.lr_min else cfg.lr_min,
        "batch_size": tune.choice(cfg.batch_sizes),
        "augment": tune.uniform(cfg.augment_min, cfg.augment_max) if cfg.augment_max > cfg.augment_min
        else cfg.augment_min,
    }


def _trial_summary(result) -> dict[str, Any]:
    m = result.metrics or {}
    out = {"trial": m.get("trial_id"), "config": {k: result.config.get(k) for k in SEARCHED},
           "epochs": m.get("epoch"), "val_accuracy": m.get("val_accuracy"), "val_loss": m.get("val_loss")}
    if result.error:
        out["error"] = f"{type(result.error).__name__}: {result.error}"[:500]
    return out


def run(cfg: TuneConfig) -> tuple[ModelMetadata, dict[str, Any]]:
    """Search, export the best trial's model (and publish it, with an artifact store); returns
    its metadata and the `ADCP_TUNE` summary."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    started = time.monotonic()
    dataset = open_dataset(cfg.dataset)
    labels, present, annotations = run_labels(dataset, cfg.annotations)
    classes = cfg.classes or present
    unknown = set(classes) - set(present)
    if unknown or not classes:
        raise ConfigError(f"Classes {sorted(unknown) or 'none'} are not in dataset {dataset.dataset_id}"
                          + (f" with annotations {annotations}." if annotations else "."),
                          allowed=", ".join(present) or "none: label the dataset first")
    no_defect = [c for c in classes if c in NO_DEFECT_CLASSES]
    name, version = model_identity(cfg.model_name, cfg.model_version, dataset.name)
    if cfg.artifact_store:  # fails now, not after the search
        check_model_unpublished(cfg.artifact_store, name, version)

    ray.init(ignore_reinit_error=True, log_to_driver=True)
    data = decode_splits(dataset, labels, classes, cfg.image_size)
    if not len(data["train_labels"]) or not len(data["val_y"]):
        raise ConfigError(f"Dataset {dataset.dataset_id} has no labelled images of {classes} in its "
                          "train or val split.", hint="Tune on a larger dataset.")
    fixed = {"epochs": cfg.epochs, "classes": classes, "no_defect_classes": no_defect, "width": cfg.width,
             "weight_decay": cfg.weight_decay, "defect_weight": cfg.defect_weight, "seed": cfg.seed,
             "cpus_per_trial": cfg.cpus_per_trial}
    # with_parameters puts `data` in the object store once; every trial maps the same arrays.
    trainable = tune.with_resources(tune.with_parameters(trial, data=data, fixed=fixed), {"cpu": cfg.cpus_per_trial})
    scheduler = ASHAScheduler(metric="val_accuracy", mode="max", max_t=cfg.epochs,
                              grace_period=min(cfg.grace_epochs, cfg.epochs), reduction_factor=cfg.reduction_factor)
    storage_fs, storage_path = arrow_fs(cfg.tune_path)
    # Keeping one checkpoint per trial makes Tune snapshot its experiment state at nearly every
    # report and warn about it (three lines each time); the snapshot is a few small files.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    tuner = tune.Tuner(
        trainable,
        param_space=search_space(cfg),
        tune_config=tune.TuneConfig(num_samples=cfg.trials, scheduler=scheduler, reuse_actors=True,
                                    max_concurrent_trials=cfg.max_concurrent,
                                    search_alg=BasicVariantGenerator(random_state=cfg.seed)),
        run_config=tune.RunConfig(name=cfg.run, storage_path=storage_path, storage_filesystem=storage_fs,
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1), verbose=0),
    )
    search_started = time.monotonic()
    grid = tuner.fit()
    search_seconds = time.monotonic() - search_started
    trials = [_trial_summary(r) for r in grid]
    try:
        best = grid.get_best_result(metric="val_accuracy", mode="max")
    except RuntimeError as e:  # no trial reported a metric
        raise AdcpError("No tuning trial finished an epoch.", hint="; ".join(
            t["error"] for t in trials if t.get("error"))[:1000] or None) from e
    if best.checkpoint is None:
        raise AdcpError("The best tuning trial left no checkpoint.", hint=str(best.error or ""))

    model = ADCNet(len(classes), in_channels=1, width=cfg.width)
    with best.checkpoint.as_directory() as d:
        state = torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    best_config = {k: best.config[k] for k in SEARCHED}
    best_metrics = {k: v for k, v in best.metrics.items() if k in ("epoch", "loss", "accuracy", "val_loss",
                                                                    "val_accuracy") or k.startswith("val_recall/")}
    metrics = {**best_metrics, "tune_seconds": round(search_seconds, 1),
               "job_seconds": round(time.monotonic() - started, 1),
               "train_rows": len(data["train_labels"]), "trials": len(trials)}
    lineage = {
        "dataset": dataset.dataset_id,
        "dataset_url": dataset.url,
        "dataset_sha256": dataset.sha256,
        "annotations_version": dataset.manifest["annotations"]["version"],
        "annotations": annotations,
        "code_version": cfg.code_version or os.environ.get("ADCP_CODE_VERSION", "unknown"),
        "trained_at": [cfg.site],
        "training": {"device": "cpu", "workers": 1, "gpus_reserved": 0},
        "tune": {
            "run": cfg.run, "storage": cfg.tune_path, "trials": cfg.trials, "epochs": cfg.epochs,
            "scheduler": {"name": "ASHA", "metric": "val_accuracy", "grace_epochs": cfg.grace_epochs,
                          "reduction_factor": cfg.reduction_factor},
            "search_space": {"lr": ["loguniform", cfg.lr_min, cfg.lr_max], "batch_size": ["choice", cfg.batch_sizes],
                             "augment": ["uniform", cfg.augment_min, cfg.augment_max]},
            "best_trial": best.metrics.get("trial_id"), "best_config": best_config,
        },
        "config": {**cfg.model_dump(exclude={"dataset", "output", "storage_path", "lineage", "annotations"}),
                   **best_config},
        **cfg.lineage,
    }
    meta = calibrate_and_export(
        model, cfg.output, x_val=data["val_x"], y_val=data["val_y"], name=name, version=version, classes=classes,
        no_defect_classes=no_defect, image_size=cfg.image_size, target_precision=cfg.target_precision,
        metrics=metrics, lineage=lineage,
    )
    summary = {"best": best_config, "best_trial": best.metrics.get("trial_id"),
               "metrics": {**best_metrics, "val": meta.metrics["val"]}, "trials": trials}
    print(format_line(Marker.TUNE, summary), flush=True)
    report_model(cfg.output, meta, cfg.artifact_store)
    return meta, summary


def main(argv: list[str] | None = None) -> int:
    try:
        run(parse_args(argv))
    except AdcpError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
