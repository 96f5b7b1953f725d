"""Checkpoints as artifacts, resuming from one, GPUs declared but absent, and the tune job's
options, without Ray: the pieces `train_jobs.train` and `train_jobs.tune` are built from."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import torch

from configs import ConfigError, InputError, NotFoundError, TrainConfig
from configs.models import TuneConfig, artifact_name
from configs.protocol import entrypoint
from data.artifacts import ArtifactRef, ArtifactStore
from data.model_format import read_metadata
from data.preprocess import input_spec
from data.publish import publish_artifact
from data.schema import DEFECT_CLASSES, NO_DEFECT_CLASSES
from train_jobs import train, tune
from train_jobs.checkpoints import read_checkpoint_state, restore, save_state
from train_jobs.export import export_model
from train_jobs.model import ADCNet
from train_jobs.steps import one_cycle_lr
from train_jobs.train import CheckpointPublisher, gpu_plan, parse_args, report_model

CLASSES = list(DEFECT_CLASSES)


def _lines(out: str, tag: str) -> list[dict]:
    return [json.loads(line[len(tag) + 1 :]) for line in out.splitlines() if line.startswith(tag + " ")]


# --- options ----------------------------------------------------------------------------------


def test_new_fields_round_trip_through_the_entrypoint():
    cfg = TrainConfig(
        dataset="file:///s/artifacts/dataset/aoi/1.json", output="s3://b/m/v2", artifact_store="s3://b/site store",
        checkpoint_name="adc-aoi-v1", init_checkpoint="file:///home/store/artifacts/checkpoint/adc-aoi-v1/3.json",
        lineage={"trained_for": "fab-a", "ran_at": ["fab-b", "fab-a"], "resumed_from": "checkpoint/adc-aoi-v1@3",
                 "job": None, "retried": True, "attempt": 2},
        use_gpu=True,
    )
    args = shlex.split(entrypoint(cfg))
    assert "--lineage" in args and "--init-checkpoint" in args and "--artifact-store" in args
    assert parse_args(args[3:]) == cfg


def test_defaults_add_no_flags():
    cfg = TrainConfig(dataset="d", output="o")
    assert shlex.split(entrypoint(cfg))[3:] == ["--dataset", "d", "--output", "o"]
    assert (cfg.artifact_store, cfg.checkpoint_name, cfg.init_checkpoint, cfg.lineage) == (None, None, None, {})


def test_lineage_accepts_python_literals_and_refuses_non_objects(capsys):
    cfg = parse_args(["--dataset", "d", "--output", "o", "--lineage", "{'ran_at': ['fab-b'], 'ok': True}"])
    assert cfg.lineage == {"ran_at": ["fab-b"], "ok": True}
    with pytest.raises(SystemExit):
        parse_args(["--dataset", "d", "--output", "o", "--lineage", "[1, 2]"])
    assert "not a JSON object" in capsys.readouterr().err


def test_a_bad_checkpoint_name_is_refused_with_the_rule():
    with pytest.raises(ConfigError, match="checkpoint_name.*a-z 0-9"):
        parse_args(["--dataset", "d", "--output", "o", "--checkpoint-name", "Adc/v1"])


@pytest.mark.parametrize(
    "model_name, output, run_name, expected",
    [
        ("adc-aoi", "file:///h/models/adc-aoi/20260101-120000", None, "adc-aoi-20260101-120000"),
        ("adc-aoi", "file:///h/models/adc-aoi/2-a1/", "v2-a3", "adc-aoi-v2-a3"),
        ("ADC AOI", "s3://b/Run@7", None, "adc-aoi-run-7"),
        ("_adc", "o", "x", "adc-x"),
    ],
)
def test_checkpoint_name_defaults_to_a_sanitised_model_and_run(model_name, output, run_name, expected):
    cfg = TrainConfig(dataset="d", output=output, run_name=run_name)
    assert cfg.checkpoint_artifact_name(model_name) == expected
    ArtifactRef("checkpoint", expected, "1")  # a valid artifact name
    given = TrainConfig(dataset="d", output=output, checkpoint_name="given")
    assert given.checkpoint_artifact_name(model_name) == "given"


def test_long_names_stay_valid_and_distinct():
    a, b = artifact_name("m" * 70 + "-run-1"), artifact_name("m" * 70 + "-run-2")
    assert a != b and len(a) <= 63 and len(b) <= 63
    ArtifactRef("checkpoint", a)
    assert artifact_name("***") == "checkpoint"


def test_tune_options_round_trip_and_ranges():
    cfg = tune.parse_args(["--dataset", "d", "--output", "o", "--trials", "4", "--epochs", "3",
                           "--batch-sizes", "16,32", "--lr-min", "0.001", "--lr-max", "0.02",
                           "--lineage", '{"for": "fab-a"}', "--artifact-store", "file:///s"])
    assert (cfg.trials, cfg.epochs, cfg.batch_sizes, cfg.lineage) == (4, 3, [16, 32], {"for": "fab-a"})
    assert cfg.tune_path == "o-tune" and cfg.run == "o"
    with pytest.raises(ConfigError, match="lr_max must be greater than or equal to lr_min"):
        tune.parse_args(["--dataset", "d", "--output", "o", "--lr-min", "0.1", "--lr-max", "0.01"])
    with pytest.raises(ConfigError, match="batch_sizes"):
        tune.parse_args(["--dataset", "d", "--output", "o", "--batch-sizes", "0,32"])


def test_tune_search_space_is_constant_where_a_range_is_a_point():
    from ray.tune.search.sample import Categorical, Float

    space = tune.search_space(TuneConfig(dataset="d", output="o", augment_min=0.5, augment_max=0.5))
    assert isinstance(space["lr"], Float) and isinstance(space["batch_size"], Categorical)
    assert space["augment"] == 0.5


# --- schedule, state, resume ------------------------------------------------------------------


@pytest.mark.parametrize("total", [5, 13, 241])
def test_one_cycle_lr_matches_torch(total):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=4e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=4e-3, total_steps=total, pct_start=0.25)
    for step in range(total):
        assert one_cycle_lr(step, total, 4e-3) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-15)
        opt.step()
        if step < total - 1:
            sched.step()
    assert one_cycle_lr(total + 10, total, 4e-3) == one_cycle_lr(total - 1, total, 4e-3)  # no overrun


def _trained(width: int = 4) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = ADCNet(len(CLASSES), width=width)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 1, 64, 64)).sum().backward()
    opt.step()
    return model, opt


def _checkpoint_folder(tmp_path: Path, epoch: int = 2, width: int = 4) -> tuple[Path, torch.nn.Module]:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    model, opt = _trained(width)
    save_state(str(folder), model, opt, epoch=epoch, step=30, classes=CLASSES)
    return folder, model


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("store_url", ["file", "memory://ckpt-store"])
def test_state_loads_from_a_folder_or_a_manifest_url(tmp_path, store_url):
    folder, model = _checkpoint_folder(tmp_path)
    store = ArtifactStore(tmp_path / "store" if store_url == "file" else store_url)
    manifest = publish_artifact(store, "checkpoint", "adc-x", "3", folder, meta={"epoch": 3})
    for url in (str(folder), folder.as_uri(), store.manifest_url(manifest.ref)):
        state = read_checkpoint_state(url)
        assert state["epoch"] == 2 and state["classes"] == CLASSES
        fresh = ADCNet(len(CLASSES), width=4)
        opt = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
        assert restore(fresh, opt, state) == (3, 30)  # the next epoch (0-based) and the steps done
        assert _same_weights(fresh, model)
        assert opt.state_dict()["state"][0]["step"] == 1  # AdamW's state came back too


def test_a_missing_checkpoint_is_a_not_found_error(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    with pytest.raises(NotFoundError, match="state.pt"):
        read_checkpoint_state(str(tmp_path))
    with pytest.raises(NotFoundError):
        read_checkpoint_state(store.manifest_url(ArtifactRef("checkpoint", "none", "1")))


def test_an_old_checkpoint_with_a_scheduler_state_resumes_at_its_step():
    model, opt = _trained()
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 0,
             "schedule": {"last_epoch": 17}, "classes": CLASSES}
    assert restore(ADCNet(len(CLASSES), width=4), torch.optim.AdamW(ADCNet(len(CLASSES), width=4).parameters()),
                   state)[1] == 17


@pytest.mark.parametrize(
    "change, match",
    [
        ({"classes": ["particle", "scratch"]}, "classes"),
        ({"width": 8}, "width"),
        ({"epochs": 3}, "leaves nothing to train"),
    ],
)
def test_an_init_checkpoint_that_cannot_continue_the_run_is_refused(tmp_path, change, match):
    folder, _ = _checkpoint_folder(tmp_path, epoch=2)
    state = read_checkpoint_state(str(folder))
    cfg = TrainConfig(dataset="d", output="o", width=change.get("width", 4), epochs=change.get("epochs", 6))
    with pytest.raises(ConfigError, match=match):
        train._check_init_state(state, str(folder), cfg, change.get("classes", CLASSES))
    train._check_init_state(state, str(folder), TrainConfig(dataset="d", output="o", width=4, epochs=4), CLASSES)


# --- publishing -------------------------------------------------------------------------------


def _epoch_folder(tmp_path: Path, epoch: int) -> str:
    folder = tmp_path / f"epoch-{epoch}"
    folder.mkdir()
    model, opt = _trained()
    save_state(str(folder), model, opt, epoch=epoch - 1, step=10 * epoch, classes=CLASSES)
    return str(folder)


METRICS = {"epoch": 1, "loss": 1.5, "accuracy": 0.5, "val_loss": 1.25, "val_accuracy": 0.625, "val_recall/mura": 1.0}


def test_publisher_publishes_each_epoch_in_order_and_cleans_up(tmp_path, capsys):
    store = ArtifactStore(tmp_path / "store")
    meta = {"run": "r1", "site": "fab-b", "model_name": "adc-aoi", "model_version": "r1"}
    publisher = CheckpointPublisher(store.url, "adc-aoi-r1", meta)
    folders = [_epoch_folder(tmp_path, e) for e in (1, 2, 3)]
    for epoch, folder in enumerate(folders, 1):
        publisher.submit(folder, epoch, METRICS)
    publisher.close()

    assert store.versions("checkpoint", "adc-aoi-r1") == ["1", "2", "3"]
    lines = _lines(capsys.readouterr().out, "ADCP_CHECKPOINT")
    assert [(line["ref"], line["epoch"]) for line in lines] == [(f"checkpoint/adc-aoi-r1@{e}", e) for e in (1, 2, 3)]
    m = store.manifest(ArtifactRef("checkpoint", "adc-aoi-r1", "2"))
    assert lines[1]["manifest_url"] == store.manifest_url(m.ref)
    assert m.meta == {**meta, "epoch": 2, "metrics": {"loss": 1.5, "accuracy": 0.5, "val_loss": 1.25,
                                                      "val_accuracy": 0.625}}
    assert read_checkpoint_state(lines[1]["manifest_url"])["step"] == 20
    assert not any(Path(f).exists() for f in folders)


def test_a_checkpoint_that_cannot_be_published_is_a_warning_not_a_failure(tmp_path, capsys):
    store = ArtifactStore(tmp_path / "store")
    publish_artifact(store, "checkpoint", "adc-x", "1", _epoch_folder(tmp_path, 9))  # other content under @1
    publisher = CheckpointPublisher(store.url, "adc-x", {})
    folders = [_epoch_folder(tmp_path, 1), _epoch_folder(tmp_path, 2)]
    publisher.submit(folders[0], 1, METRICS)
    publisher.submit(folders[1], 2, METRICS)
    publisher.close()
    out = capsys.readouterr().out
    (warning,) = _lines(out, "ADCP_WARNING")
    assert warning["code"] == "checkpoint_not_published" and warning["ref"] == "checkpoint/adc-x@1"
    assert "immutable" in warning["message"]
    assert [line["epoch"] for line in _lines(out, "ADCP_CHECKPOINT")] == [2]
    assert not any(Path(f).exists() for f in folders)


def test_report_model_publishes_and_names_the_artifact(tmp_path, capsys):
    model_dir = (tmp_path / "model").as_uri()
    meta = export_model(ADCNet(len(CLASSES), width=4), model_dir, name="adc-aoi", version="7", classes=CLASSES,
                        no_defect_classes=list(NO_DEFECT_CLASSES), input_spec=input_spec(64),
                        thresholds={c: 0.9 for c in CLASSES}, metrics={"val": {"accuracy": 0.5}},
                        lineage={"ran_at": ["fab-b"]})
    store = ArtifactStore(tmp_path / "store")
    report_model(model_dir, meta, store.url)
    (line,) = _lines(capsys.readouterr().out, "ADCP_MODEL")
    assert line["artifact"] == "model/adc-aoi@7" and line["model"] == "adc-aoi@7"
    assert line["manifest_url"] == store.manifest_url(ArtifactRef("model", "adc-aoi", "7"))
    assert read_metadata(line["manifest_url"]) == meta
    assert store.manifest(ArtifactRef.parse(line["artifact"])).meta == {
        "model_id": "adc-aoi@7", "metrics": {"accuracy": 0.5}, "lineage": {"ran_at": ["fab-b"]}}
    report_model(model_dir, meta, None)
    assert set(_lines(capsys.readouterr().out, "ADCP_MODEL")[0]) == {"uri", "model", "metrics"}


def test_a_published_model_version_is_refused_before_training(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    train.check_model_unpublished(store.url, "adc-aoi", "7")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "metadata.json").write_text("{}")
    publish_artifact(store, "model", "adc-aoi", "7", model_dir)
    with pytest.raises(InputError, match="already published.*never change"):
        train.check_model_unpublished(store.url, "adc-aoi", "7")
    with pytest.raises(InputError, match="Invalid artifact name"):
        train.check_model_unpublished(store.url, "ADC aoi", "8")


# --- GPUs -------------------------------------------------------------------------------------


def test_gpu_plan(monkeypatch, capsys):
    assert gpu_plan(False, 2) == ("cpu", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert gpu_plan(True, 2) == ("cuda", False)
    assert capsys.readouterr().out == ""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_plan(True, 3) == ("cpu", True)
    (warning,) = _lines(capsys.readouterr().out, "ADCP_WARNING")
    assert warning["code"] == "gpu_absent" and warning["gpus_reserved"] == 3
    assert "training on CPU" in warning["message"]
