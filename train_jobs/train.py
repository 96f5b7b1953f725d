"""Train the ADC model with Ray Train and export it: `python -m train_jobs.train --dataset URL --output URL`.

Runs as a Ray job at a site: a `TorchTrainer` fed by Ray Data, per-epoch metrics (loss,
accuracy, per-class recall) reported with checkpoints to `--storage-path` (any fsspec URL).
Re-running with the same storage path and run name resumes from the latest checkpoint; a new run
can start from another run's checkpoint (`--init-checkpoint`, e.g. one relayed from a site that
died) or fine-tune from an exported model's weights (`--init-model`, `train_jobs.init_weights`).
`--extra-dataset URL --extra-annotations URL` (pairs, repeatable) add more labelled images, e.g. a
line's reviewed images with their verdict labels (`train_jobs.pipeline.Source`). With
`--artifact-store` every epoch's checkpoint is published there as an artifact while the next epoch
trains. At the end the model is exported (`model.pt2` + `metadata.json`) with per-class
thresholds calibrated on the validation split.

Machine-readable lines in the job's log (one JSON object after the tag):
`ADCP_CHECKPOINT` per published checkpoint, `ADCP_WARNING` for a degraded run (GPUs declared but
absent, a checkpoint that could not be published, an init model that could not be used),
`ADCP_MODEL` for the exported model.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from types import UnionType
from typing import Any, Union, get_args, get_origin

import torch
from pydantic import BaseModel

from configs.errors import AdcpError, ConfigError, InputError
from configs.loader import validate
from configs.models import TrainConfig
from configs.protocol import Marker, format_epoch, format_line
from data.artifacts import ArtifactRef, ArtifactStore
from data.fs import arrow_fs
from data.model_format import ModelMetadata
from data.publish import publish_artifact
from data.schema import NO_DEFECT_CLASSES
from train_jobs.checkpoints import STATE_FILE, read_checkpoint_state, restore, save_state
from train_jobs.export import calibrate_and_export, publish_model
from train_jobs.init_weights import load_init_weights
from train_jobs.model import ADCNet
from train_jobs.pipeline import augment, decoded_dataset, only_split, run_classes, run_sources, split_arrays, to_tensors
from train_jobs.steps import class_weights, epoch_metrics, evaluate, train_epoch

__all__ = [
    "CheckpointPublisher",
    "check_model_unpublished",
    "gpu_plan",
    "main",
    "model_identity",
    "parse_args",
    "parse_config",
    "report_model",
    "run",
    "train_loop_per_worker",
]


# --- command line ----------------------------------------------------------------------------


def _arg_type(annotation: Any):
    """The type of a field, without the `| None` of an optional one."""
    if get_origin(annotation) not in (Union, UnionType):
        return annotation
    return next(t for t in get_args(annotation) if t is not type(None))


def _json_object(text: str) -> dict[str, Any]:
    """A JSON object from the command line. Python's literal syntax (`{'a': True}`, what `str()`
    of a dict gives) is accepted too, so a flag built with `str(value)` still parses."""
    try:
        value = json.loads(text)
    except ValueError:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise argparse.ArgumentTypeError(f"not a JSON object: {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"not a JSON object: {text!r}")
    return value


def parse_config(model: type[BaseModel], argv: list[str] | None, *, prog: str, description: str | None) -> Any:
    """Parse command-line options generated from the fields of `model` (one flag per field,
    `--snake-case`), so a job and the CLI that builds its arguments share one model."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, field in model.model_fields.items():
        flag = "--" + name.replace("_", "-")
        kind = _arg_type(field.annotation)
        if kind is bool:
            parser.add_argument(flag, dest=name, action="store_true", default=None, help=field.description)
        elif kind is list or get_origin(kind) is list:  # comma-separated, and the flag may repeat
            parser.add_argument(flag, dest=name, default=None, action="append",
                                help=f"{field.description} (comma-separated, or the flag repeated)",
                                type=lambda s: [c for c in s.split(",") if c])
        elif kind is dict or get_origin(kind) is dict:
            parser.add_argument(flag, dest=name, default=None, type=_json_object, help=field.description)
        else:
            parser.add_argument(flag, dest=name, type=kind, default=None, help=field.description,
                                required=field.is_required())
    values = {k: [c for part in v for c in part] if isinstance(v, list) else v
              for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    return validate(model, values, f"{prog.rsplit('.', 1)[-1]} options")


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    return parse_config(TrainConfig, argv, prog="python -m train_jobs.train", description=__doc__)


def _check_init_state(state: dict[str, Any], url: str, cfg: TrainConfig, classes: list[str]) -> None:
    """ConfigError unless the checkpoint at `url` can continue this run."""
    if state.get("classes") != classes:
        raise ConfigError(f"The checkpoint {url} was trained for classes {state.get('classes')}, "
                          f"not this run's {classes}.", hint="Train with the checkpoint's classes.")
    try:
        ADCNet(len(classes), in_channels=1, width=cfg.width).load_state_dict(state["model"])
    except RuntimeError as e:
        raise ConfigError(f"The checkpoint {url} is not an ADCNet of width {cfg.width}.",
                          hint="Give the --width the checkpoint was trained with.") from e
    if state["epoch"] + 1 >= cfg.epochs:
        raise ConfigError(f"The checkpoint {url} is after epoch {state['epoch'] + 1}, so --epochs "
                          f"{cfg.epochs} leaves nothing to train.",
                          allowed=f"--epochs greater than {state['epoch'] + 1}")


# --- checkpoints as artifacts -----------------------------------------------------------------


class CheckpointPublisher:
    """Publishes each epoch's checkpoint folder as `checkpoint/<name>@<epoch>` on one background
    thread, in epoch order, while the next epoch trains; removes each folder once published.

    A checkpoint that cannot be published gives an `ADCP_WARNING` line and training goes on: the
    run's own checkpoints (Ray Train storage) are still there, and losing hours of training for
    one failed copy would be the worse outcome.
    """

    def __init__(self, store_url: str, name: str, meta: dict[str, Any]) -> None:
        self.store_url = store_url
        self.name = name
        self.meta = meta
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="adcp-publish")
        self._store: ArtifactStore | None = None

    def submit(self, folder: str, epoch: int, metrics: dict[str, Any]) -> None:
        self._pool.submit(self._publish, folder, epoch, metrics)

    def close(self) -> None:
        """Wait for every submitted checkpoint to be published."""
        self._pool.shutdown(wait=True)

    def _publish(self, folder: str, epoch: int, metrics: dict[str, Any]) -> None:
        ref = ArtifactRef("checkpoint", self.name, str(epoch))
        summary = {k: round(float(metrics[k]), 6) for k in ("loss", "accuracy", "val_loss", "val_accuracy")}
        try:
            self._store = self._store or ArtifactStore(self.store_url)
            manifest = publish_artifact(self._store, "checkpoint", ref.name, ref.version, folder,
                                        meta={**self.meta, "epoch": epoch, "metrics": summary})
            line = {"ref": str(manifest.ref), "epoch": epoch, "manifest_url": self._store.manifest_url(ref),
                    "metrics": summary}
            print(format_line(Marker.CHECKPOINT, line), flush=True)
        except Exception as e:  # noqa: BLE001 - reported on its own line; see the class docstring
            warning = {"code": "checkpoint_not_published", "ref": str(ref), "message": f"{type(e).__name__}: {e}"}
            print(format_line(Marker.WARNING, warning), flush=True)
        finally:
            shutil.rmtree(folder, ignore_errors=True)


# --- Ray Train --------------------------------------------------------------------------------


def _starting_state(config: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The state to start from: the run's own latest checkpoint, else `init_checkpoint`."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            return torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=False), "checkpoint"
    if config.get("init_checkpoint"):
        return read_checkpoint_state(config["init_checkpoint"]), config["init_checkpoint"]
    return None, ""


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: DDP training with a one-cycle schedule, eval, report + checkpoint;
    rank 0 also publishes each checkpoint when the run has an artifact store."""
    import ray.train
    import ray.train.torch

    torch.set_num_threads(max(1, int(config["cpus_per_worker"])))
    torch.manual_seed(config["seed"])
    ctx = ray.train.get_context()
    world, rank = ctx.get_world_size(), ctx.get_world_rank()
    # "cpu" when the site declares GPUs this machine lacks: the GPUs are held, the work is on CPU.
    device = torch.device("cpu") if config["device"] == "cpu" else ray.train.torch.get_device()
    classes = config["classes"]
    n_cls = len(classes)

    weights = class_weights(classes, config["no_defect_classes"], config["defect_weight"]).to(device)
    # On the device before the optimizer exists, so restored optimizer state lands there too.
    model = ADCNet(n_cls, in_channels=1, width=config["width"])
    if config.get("init_weights") is not None:  # fine-tuning; a checkpoint below still goes first
        model.load_state_dict(config["init_weights"])
    model = model.to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    steps_per_epoch = max(1, -(-config["train_rows"] // (world * config["batch_size"])))
    total_steps = config["epochs"] * steps_per_epoch + 1
    start_epoch, step = 0, 0
    state, origin = _starting_state(config)
    if state is not None:
        start_epoch, step = restore(model, optimizer, state)
        if rank == 0:
            print(f"resuming from {origin} after epoch {start_epoch}", flush=True)
    model = ray.train.torch.prepare_model(model, move_to_device=device)

    publish = config.get("publish")
    publisher = None
    if publish and rank == 0:
        publisher = CheckpointPublisher(publish["store"], publish["name"], publish["meta"])
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    dtypes = {"x": torch.float32, "y": torch.long}
    try:
        for epoch in range(start_epoch, config["epochs"]):
            t0 = time.monotonic()
            loss_sum, seen, conf_train, step = train_epoch(
                model, optimizer,
                ((b["x"], b["y"]) for b in train_shard.iter_torch_batches(
                    batch_size=config["batch_size"], dtypes=dtypes, device=device)),
                weights=weights, max_lr=config["lr"], total_steps=total_steps, step=step,
            )
            conf_val, val_loss = evaluate(
                model, ((b["x"], b["y"]) for b in val_shard.iter_torch_batches(
                    batch_size=256, dtypes=dtypes, device=device)), n_cls, device)
            if world > 1:
                for t in (loss_sum, seen, conf_train, conf_val, val_loss):
                    torch.distributed.all_reduce(t)
            metrics = epoch_metrics(epoch, loss_sum, seen, conf_train, conf_val, val_loss, classes)
            metrics["epoch_seconds"] = round(time.monotonic() - t0, 2)

            folder, ckpt = None, None
            if rank == 0:
                folder = tempfile.mkdtemp(prefix="adcp-checkpoint-")
                save_state(folder, model, optimizer, epoch=epoch, step=step, classes=classes)
                ckpt = ray.train.Checkpoint.from_directory(folder)
                print(format_epoch(epoch + 1, config["epochs"], metrics), flush=True)
            ray.train.report(metrics, checkpoint=ckpt)  # uploads the folder before it returns
            if folder is not None:
                if publisher is not None:
                    publisher.submit(folder, epoch + 1, metrics)
                else:
                    shutil.rmtree(folder, ignore_errors=True)
    finally:
        if publisher is not None:
            publisher.close()


def model_identity(name: str | None, version: str | None, dataset_name: str) -> tuple[str, str]:
    """The exported model's (name, version): as given, else `adc-<dataset>` and the UTC time."""
    return (name or f"adc-{dataset_name}",
            version or datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S"))


def check_model_unpublished(store_url: str, name: str, version: str) -> None:
    """InputError when `model/<name>@<version>` is not a valid artifact name or already is in
    the store: published models never change, so training it again could only fail at the end."""
    ref = ArtifactRef("model", name, version)
    if ArtifactStore(store_url).exists(ref):
        raise InputError(f"{ref} is already published in {store_url}; published models never change.",
                         hint="Give a new --model-version.")


def gpu_plan(use_gpu: bool, num_workers: int) -> tuple[str, bool]:
    """(device the workers train on, whether the GPUs are declared but absent). Sites may declare
    GPUs to Ray that the machine lacks (so capacity planning can be exercised); the GPUs are then
    still reserved as planned and the work runs on CPU, with one `ADCP_WARNING` line saying so."""
    if not use_gpu:
        return "cpu", False
    if torch.cuda.is_available():
        return "cuda", False
    warning = {
        "code": "gpu_absent",
        "message": f"use_gpu is set but CUDA is not available here: holding 1 GPU per worker "
        f"({num_workers} in all) as planned and training on CPU.",
        "gpus_reserved": num_workers,
    }
    print(format_line(Marker.WARNING, warning), flush=True)
    return "cpu", True


def run(cfg: TrainConfig) -> ModelMetadata:
    """Train, calibrate and export (and publish, with an artifact store); returns the exported
    model's metadata."""
    import ray
    import ray.data
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    started = time.monotonic()
    sources = run_sources(cfg.dataset, cfg.annotations, cfg.extra())
    dataset, annotations = sources[0].dataset, sources[0].annotations
    present = run_classes(sources)
    classes = cfg.classes or present
    unknown = set(classes) - set(present)
    if unknown:
        raise ConfigError(
            f"Classes {sorted(unknown)} are not in dataset {dataset.dataset_id}"
            + (f" with annotations {annotations}" if annotations else "")
            + (f" nor in the extra datasets {[s.dataset.dataset_id for s in sources[1:]]}." if sources[1:] else "."),
            allowed=", ".join(present),
        )
    if not classes:
        raise ConfigError(f"Dataset {dataset.dataset_id} has no labelled images.",
                          hint="Label it first (an import with labels, or --annotations NAME@V).")
    no_defect = [c for c in classes if c in NO_DEFECT_CLASSES]
    name, version = model_identity(cfg.model_name, cfg.model_version, dataset.name)
    checkpoint_name = cfg.checkpoint_artifact_name(name)
    if cfg.artifact_store:  # checked now, not after the training they would be published from
        check_model_unpublished(cfg.artifact_store, name, version)
        ArtifactRef("checkpoint", checkpoint_name, "1")
    if cfg.init_checkpoint:
        _check_init_state(read_checkpoint_state(cfg.init_checkpoint), cfg.init_checkpoint, cfg, classes)
    init = load_init_weights(cfg.init_model, classes, cfg.width) if cfg.init_model else None
    if init is not None:
        init.report()

    # Ray Train's print patch both logs and echoes a worker's print, so each line would reach the
    # job log twice; the epoch and ADCP_ lines are read by machines. (Passed on to the workers.)
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    ray.init(ignore_reinit_error=True, log_to_driver=True)
    ray.data.DataContext.get_current().enable_progress_bars = False
    device, gpu_absent = gpu_plan(cfg.use_gpu, cfg.num_workers)

    decoded = decoded_dataset(sources, classes, cfg.image_size)
    train_ds = decoded.map_batches(only_split, fn_kwargs={"split": "train"}, batch_format="numpy")
    train_rows = train_ds.count()
    train_ds = train_ds.map_batches(augment, fn_kwargs={"strength": cfg.augment}, batch_format="numpy")
    val_ds = decoded.map_batches(only_split, fn_kwargs={"split": "val"}, batch_format="numpy").map_batches(
        to_tensors, batch_format="numpy")

    publish = None
    if cfg.artifact_store:
        publish = {"store": cfg.artifact_store, "name": checkpoint_name,
                   "meta": {"run": cfg.run, "site": cfg.site, "model_name": name, "model_version": version,
                            "dataset": dataset.dataset_id}}
    storage_fs, storage_path = arrow_fs(cfg.checkpoint_path)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={**cfg.model_dump(), "classes": classes, "no_defect_classes": no_defect,
                           "train_rows": train_rows, "device": device, "publish": publish,
                           "init_weights": init.state if init is not None else None},
        # The GPUs are reserved either way (Ray refuses GPU in resources_per_worker without
        # use_gpu); without CUDA the process group must be gloo, as NCCL needs CUDA.
        torch_config=TorchConfig(backend="gloo") if gpu_absent else None,
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
            resources_per_worker={"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            name=cfg.run, storage_path=storage_path, storage_filesystem=storage_fs,
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

    x_val, y_val = split_arrays(sources, classes, "val", cfg.image_size)
    last = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
    metrics = {
        **last,
        "train_seconds": round(fit_seconds, 1),
        "job_seconds": round(time.monotonic() - started, 1),
        "train_rows": train_rows,
    }
    lineage = {
        "dataset": dataset.dataset_id,
        "dataset_url": dataset.url,
        "dataset_sha256": dataset.sha256,
        "annotations_version": dataset.manifest["annotations"]["version"],
        "annotations": annotations,
        "code_version": cfg.code_version or os.environ.get("ADCP_CODE_VERSION", "unknown"),
        "trained_at": [cfg.site],
        "checkpoints": cfg.checkpoint_path,
        "training": {"device": device, "workers": cfg.num_workers,
                     "gpus_reserved": cfg.num_workers if cfg.use_gpu else 0},
        "config": cfg.model_dump(exclude={"dataset", "output", "storage_path", "lineage", "annotations",
                                          "init_model", "extra_dataset", "extra_annotations"}),
    }
    if sources[1:]:
        lineage["extra"] = [{"dataset": s.dataset.dataset_id, "annotations": s.annotations} for s in sources[1:]]
    if init is not None:
        lineage.update(init.lineage())
    if cfg.artifact_store:
        lineage["checkpoint_artifact"] = f"checkpoint/{checkpoint_name}"
    lineage.update(cfg.lineage)
    meta = calibrate_and_export(
        model, cfg.output, x_val=x_val, y_val=y_val, name=name, version=version, classes=classes,
        no_defect_classes=no_defect, image_size=cfg.image_size, target_precision=cfg.target_precision,
        metrics=metrics, lineage=lineage,
    )
    report_model(cfg.output, meta, cfg.artifact_store)
    return meta


def report_model(output: str, meta: ModelMetadata, artifact_store: str | None) -> dict[str, Any]:
    """Publish the exported model when there is a store, and print the `ADCP_MODEL` line."""
    line: dict[str, Any] = {"uri": output, "model": meta.model_id, "metrics": meta.metrics["val"]}
    if artifact_store:
        manifest, url = publish_model(artifact_store, output, meta)
        line.update(artifact=str(manifest.ref), manifest_url=url)
    print(format_line(Marker.MODEL, line), flush=True)
    return line


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
