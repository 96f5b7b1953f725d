"""Train the ADC model with Ray Train and export it: `python -m train_jobs.train --dataset URL --output URL`.

Runs as a Ray job at a site: a `TorchTrainer` fed by Ray Data, per-epoch metrics (loss,
accuracy, per-class recall) reported with checkpoints to `--storage-path` (any fsspec URL).
Re-running with the same storage path resumes from the latest checkpoint. At the end the model is
exported (`model.pt2` + `metadata.json`) with per-class thresholds calibrated on the validation
split.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from typing import Any, get_args

import numpy as np
import torch

from configs.errors import AdcpError, ConfigError
from configs.loader import validate
from configs.models import TrainConfig
from data.dataset import open_dataset
from data.fs import arrow_fs
from data.model_format import ModelMetadata, decide, decision_figures
from data.preprocess import decode_image, input_spec, to_model_input
from data.schema import NO_DEFECT_CLASSES, split_of
from train_jobs.export import calibrate_thresholds, export_model
from train_jobs.model import ADCNet
from train_jobs.pipeline import DecodeAndLabel, augment, only_split, to_tensors

STATE_FILE = "state.pt"


def _arg_type(annotation: Any):
    types = [t for t in (get_args(annotation) or (annotation,)) if t is not type(None)]
    return types[0]


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """Command-line options generated from `TrainConfig`, so the job and the CLI share one model."""
    parser = argparse.ArgumentParser(prog="python -m train_jobs.train", description=__doc__)
    for name, field in TrainConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        kind = _arg_type(field.annotation)
        if kind is bool:
            parser.add_argument(flag, dest=name, action="store_true", default=None, help=field.description)
        elif kind is list or getattr(kind, "__origin__", None) is list:
            parser.add_argument(flag, dest=name, default=None, help=f"{field.description} (comma-separated)",
                                type=lambda s: [c for c in s.split(",") if c])
        else:
            parser.add_argument(flag, dest=name, type=kind, default=None, help=field.description,
                                required=field.is_required())
    values = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    return validate(TrainConfig, values, "train options")


def _confusion(logits: torch.Tensor, y: torch.Tensor, classes: int) -> torch.Tensor:
    pred = logits.argmax(dim=1)
    return torch.bincount(y * classes + pred, minlength=classes * classes).reshape(classes, classes)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: DDP training with a one-cycle schedule, eval, report + checkpoint."""
    import ray.train
    import ray.train.torch

    torch.set_num_threads(max(1, int(config["cpus_per_worker"])))
    torch.manual_seed(config["seed"])
    ctx = ray.train.get_context()
    world, rank = ctx.get_world_size(), ctx.get_world_rank()
    device = ray.train.torch.get_device()
    classes = config["classes"]
    n_cls = len(classes)

    weights = torch.tensor(
        [1.0 if name in config["no_defect_classes"] else config["defect_weight"] for name in classes], device=device
    )
    model = ADCNet(n_cls, in_channels=1, width=config["width"]).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    steps_per_epoch = max(1, -(-config["train_rows"] // (world * config["batch_size"])))
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config["lr"], total_steps=config["epochs"] * steps_per_epoch + 1, pct_start=0.25
    )
    start_epoch = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        start_epoch = state["epoch"] + 1
        if rank == 0:
            print(f"resuming from checkpoint after epoch {start_epoch}", flush=True)
    model = ray.train.torch.prepare_model(model)

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    for epoch in range(start_epoch, config["epochs"]):
        t0 = time.monotonic()
        model.train()
        loss_sum = torch.zeros((), device=device)
        seen = torch.zeros((), device=device)
        conf_train = torch.zeros(n_cls, n_cls, dtype=torch.long, device=device)
        for batch in train_shard.iter_torch_batches(
            batch_size=config["batch_size"], dtypes={"x": torch.float32, "y": torch.long}, device=device
        ):
            x = batch["x"].contiguous(memory_format=torch.channels_last)
            logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits, batch["y"], weight=weights, label_smoothing=0.02)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if schedule.last_epoch < schedule.total_steps - 1:
                schedule.step()
            loss_sum += loss.detach() * len(x)
            seen += len(x)
            conf_train += _confusion(logits.detach(), batch["y"], n_cls)

        model.eval()
        conf_val = torch.zeros(n_cls, n_cls, dtype=torch.long, device=device)
        val_loss = torch.zeros((), device=device)
        with torch.no_grad():
            for batch in val_shard.iter_torch_batches(
                batch_size=256, dtypes={"x": torch.float32, "y": torch.long}, device=device
            ):
                logits = model(batch["x"].contiguous(memory_format=torch.channels_last))
                val_loss += torch.nn.functional.cross_entropy(logits, batch["y"], reduction="sum")
                conf_val += _confusion(logits, batch["y"], n_cls)
        if world > 1:
            for t in (loss_sum, seen, conf_train, conf_val, val_loss):
                torch.distributed.all_reduce(t)
        metrics = _epoch_metrics(epoch, loss_sum, seen, conf_train, conf_val, val_loss, classes)
        metrics["epoch_seconds"] = round(time.monotonic() - t0, 2)

        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:
                inner = model.module if hasattr(model, "module") else model
                torch.save(
                    {"model": inner.state_dict(), "optimizer": optimizer.state_dict(),
                     "schedule": schedule.state_dict(), "epoch": epoch, "classes": classes},
                    os.path.join(tmp, STATE_FILE),
                )
                ckpt = ray.train.Checkpoint.from_directory(tmp)
                print(
                    f"epoch {epoch + 1}/{config['epochs']} loss={metrics['loss']:.4f} "
                    f"acc={metrics['accuracy']:.4f} val_acc={metrics['val_accuracy']:.4f} "
                    f"({metrics['epoch_seconds']:.1f}s)",
                    flush=True,
                )
            ray.train.report(metrics, checkpoint=ckpt)


def _epoch_metrics(epoch, loss_sum, seen, conf_train, conf_val, val_loss, classes) -> dict[str, Any]:
    conf_train, conf_val = conf_train.cpu(), conf_val.cpu()
    val_n = max(1, int(conf_val.sum()))
    recall = conf_val.diag().float() / conf_val.sum(dim=1).clamp(min=1).float()
    out: dict[str, Any] = {
        "epoch": epoch + 1,
        "loss": float(loss_sum / seen.clamp(min=1)),
        "accuracy": float(conf_train.diag().sum()) / max(1, int(conf_train.sum())),
        "val_loss": float(val_loss) / val_n,
        "val_accuracy": float(conf_val.diag().sum()) / val_n,
    }
    out.update({f"val_recall/{name}": round(float(r), 4) for name, r in zip(classes, recall)})
    return out


def _split_arrays(dataset, labels: dict[str, str], classes: list[str], split: str, size: int):
    table = dataset.read_images(["image_id", "image"])
    index = {c: i for i, c in enumerate(classes)}
    xs, ys = [], []
    for image_id, blob in zip(table.column("image_id").to_pylist(), table.column("image").to_pylist()):
        if split_of(image_id) == split and labels.get(image_id) in index:
            xs.append(decode_image(blob))
            ys.append(index[labels[image_id]])
    return to_model_input(xs, size), np.array(ys, dtype=np.int64)


def _probabilities(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
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


def run(cfg: TrainConfig) -> ModelMetadata:
    """Train, calibrate and export; returns the exported model's metadata."""
    import ray
    import ray.data
    import ray.train
    from ray.train.torch import TorchTrainer

    started = time.monotonic()
    dataset = open_dataset(cfg.dataset)
    labels = dataset.labels()
    classes = cfg.classes or dataset.classes
    unknown = set(classes) - set(dataset.classes)
    if unknown:
        raise ConfigError(
            f"Classes {sorted(unknown)} are not in dataset {dataset.dataset_id}.",
            allowed=", ".join(dataset.classes),
        )
    no_defect = [c for c in classes if c in NO_DEFECT_CLASSES]
    ray.init(ignore_reinit_error=True, log_to_driver=True)
    ray.data.DataContext.get_current().enable_progress_bars = False

    filesystem, _ = arrow_fs(dataset.url)
    paths = [arrow_fs(u)[1] for u in dataset.shard_urls]
    decoded = (
        ray.data.read_parquet(paths, filesystem=filesystem, columns=["image_id", "image"])
        .map_batches(DecodeAndLabel, fn_constructor_args=(labels, classes, cfg.image_size),
                     batch_format="pyarrow", batch_size=256, concurrency=1)
        .materialize()
    )
    train_ds = decoded.map_batches(only_split, fn_kwargs={"split": "train"}, batch_format="numpy")
    train_rows = train_ds.count()
    train_ds = train_ds.map_batches(augment, fn_kwargs={"strength": cfg.augment}, batch_format="numpy")
    val_ds = decoded.map_batches(only_split, fn_kwargs={"split": "val"}, batch_format="numpy").map_batches(
        to_tensors, batch_format="numpy")

    storage_fs, storage_path = arrow_fs(cfg.checkpoint_path)
    run_name = cfg.run
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={**cfg.model_dump(), "classes": classes, "no_defect_classes": no_defect,
                           "train_rows": train_rows},
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
            resources_per_worker={"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=storage_path, storage_filesystem=storage_fs,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
        datasets={"train": train_ds, "val": val_ds},
    )
    fit_started = time.monotonic()
    result = trainer.fit()
    fit_seconds = time.monotonic() - fit_started
    if result.checkpoint is None:
        raise AdcpError("Training finished without a checkpoint.", hint=str(result.error or ""))

    model = ADCNet(len(classes), in_channels=1, width=cfg.width)
    with result.checkpoint.as_directory() as d:
        state = torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    model.eval()

    x_val, y_val = _split_arrays(dataset, labels, classes, "val", cfg.image_size)
    probs = _probabilities(model, x_val)
    thresholds = calibrate_thresholds(probs, y_val, classes, cfg.target_precision, no_defect)
    version = cfg.model_version or datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    name = cfg.model_name or f"adc-{dataset.name}"
    provisional = ModelMetadata(
        name=name, version=version, classes=classes, no_defect_classes=no_defect,
        input=input_spec(cfg.image_size), thresholds=thresholds, created_at="-", sha256="-",
    )
    last = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
    metrics = {
        **last,
        "val": decision_metrics(probs, y_val, provisional),
        "train_seconds": round(fit_seconds, 1),
        "job_seconds": round(time.monotonic() - started, 1),
        "train_rows": train_rows,
    }
    lineage = {
        "dataset": dataset.dataset_id,
        "dataset_url": dataset.url,
        "dataset_sha256": dataset.sha256,
        "annotations_version": dataset.manifest["annotations"]["version"],
        "code_version": cfg.code_version or os.environ.get("ADCP_CODE_VERSION", "unknown"),
        "trained_at": [cfg.site],
        "checkpoints": cfg.checkpoint_path,
        "config": cfg.model_dump(exclude={"dataset", "output", "storage_path"}),
    }
    meta = export_model(
        model, cfg.output, name=name, version=version, classes=classes, no_defect_classes=no_defect,
        input_spec=input_spec(cfg.image_size), thresholds=thresholds, metrics=metrics, lineage=lineage,
    )
    print("ADCP_MODEL " + json.dumps({"uri": cfg.output, "model": meta.model_id, "metrics": metrics["val"]}),
          flush=True)
    return meta


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_args(argv)
        run(cfg)
    except AdcpError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
