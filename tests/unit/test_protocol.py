"""The coordinator <-> job protocol (`configs.protocol`): a config goes through its command line
and the job's own parser unchanged, and every marker line a job prints parses back."""

from __future__ import annotations

import shlex

import pytest

from configs.models import TrainConfig, TuneConfig
from configs.protocol import (
    TRAIN_MODULE,
    TUNE_MODULE,
    Marker,
    arguments,
    entrypoint,
    epoch_lines,
    find_line,
    format_epoch,
    format_line,
    marker_lines,
    parse_line,
)
from train_jobs import train, tune

LINEAGE = {"trained_for": "fab-a", "ran_at": ["fab-b", "fab-a"], "job_id": "j1", "resumed_from": None,
           "dataset": "dataset/aoi@1"}


@pytest.mark.parametrize("cfg", [
    TrainConfig(dataset="file:///s/d 1", output="s3://b/m v2", epochs=3, batch_size=16, lr=0.0125, use_gpu=True,
                num_workers=2, classes=["mura", "scratch"], site="fab-b", storage_path="file:///s/checkpoints/adc",
                checkpoint_name="adc-aoi-v1", init_checkpoint="file:///s/artifacts/checkpoint/adc/3.json",
                artifact_store="s3://b/site store", lineage=LINEAGE, model_name="adc-aoi", model_version="v2"),
    TrainConfig(dataset="d", output="o"),
])
def test_a_train_config_round_trips_through_the_job_parser(cfg):
    args = shlex.split(entrypoint(cfg))
    assert args[:3] == ["python", "-m", TRAIN_MODULE]
    assert train.parse_args(args[3:]) == cfg


@pytest.mark.parametrize("cfg", [
    TuneConfig(dataset="file:///s/d", output="file:///s/out", trials=3, epochs=2, batch_sizes=[16, 32, 64],
               lr_min=0.002, lr_max=0.02, augment_min=0.1, augment_max=0.7, cpus_per_trial=2.0, max_concurrent=2,
               classes=["mura", "false_defect"], lineage=LINEAGE, artifact_store="file:///s", site="fab-a"),
    TuneConfig(dataset="d", output="o"),
])
def test_a_tune_config_round_trips_through_the_job_parser(cfg):
    args = shlex.split(entrypoint(cfg, TUNE_MODULE))
    assert args[:3] == ["python", "-m", TUNE_MODULE]
    assert tune.parse_args(args[3:]) == cfg


def test_defaults_give_only_the_required_flags():
    assert arguments(TrainConfig(dataset="d", output="o")) == ["--dataset", "d", "--output", "o"]


def test_a_list_item_with_a_comma_is_refused_not_split():
    with pytest.raises(ValueError, match="comma"):
        arguments(TrainConfig(dataset="d", output="o", classes=["a,b", "c"]))


@pytest.mark.parametrize("marker, payload", [
    (Marker.TRANSFER, {"ref": "dataset/aoi@1", "objects_copied": 3, "bytes_copied": 1024, "seconds": 0.5}),
    (Marker.ARTIFACTS, {"artifacts": [{"kind": "model", "name": "adc", "version": "1", "bytes": 9}]}),
    (Marker.CHECKPOINT, {"ref": "checkpoint/adc@2", "epoch": 2, "manifest_url": "file:///m.json",
                         "metrics": {"loss": 0.5}}),
    (Marker.WARNING, {"code": "gpu_absent", "message": "training on CPU", "gpus_reserved": 1}),
    (Marker.MODEL, {"uri": "file:///o", "model": "adc@1", "metrics": {"accuracy": 0.9}}),
    (Marker.TUNE, {"best": {"lr": 0.004}, "best_trial": "t1", "metrics": {"val": {}}, "trials": [{"id": "t1"}]}),
])
def test_every_marker_line_parses_back(marker, payload):
    line = format_line(marker, payload)
    assert line.startswith(f"{marker.value} {{") and "\n" not in line
    assert parse_line(marker, line) == payload
    assert parse_line(marker, "  " + line) == payload  # indented by a log prefix of blanks
    others = [m for m in Marker if m is not marker]
    assert all(parse_line(m, line) is None for m in others)
    logs = "\n".join(["starting", format_line(marker, {"first": 1}), "epoch 1/1 loss=0.1", line, "done"])
    assert marker_lines(marker, logs) == [{"first": 1}, payload]
    assert find_line(marker, logs) == payload


@pytest.mark.parametrize("line", ["ADCP_TUNE", "ADCP_TUNE not json", "ADCP_TUNE [1, 2]", "see ADCP_TUNE {}",
                                  "ADCP_TUNES {}"])
def test_lines_that_only_look_like_markers_are_not_read(line):
    assert parse_line(Marker.TUNE, line) is None
    assert find_line(Marker.TUNE, line) is None


def test_epoch_lines_parse_back():
    metrics = {"loss": 0.123456, "accuracy": 0.9, "val_accuracy": 0.85, "epoch_seconds": 1.25}
    logs = "\n".join([format_epoch(1, 3, metrics), "trial t1 epoch 1/3: val_acc=0.5", format_epoch(2, 3, metrics)])
    lines = epoch_lines(logs)
    assert [(e.epoch, e.epochs) for e in lines] == [(1, 3), (2, 3)]
    assert lines[0].summary == "loss=0.1235 acc=0.9000 val_acc=0.8500 (1.2s)"
