from __future__ import annotations

import shlex

import numpy as np
import pytest
import torch

from configs import ConfigError, TrainConfig
from configs.protocol import entrypoint
from data.model_format import ModelMetadata, decide, read_metadata
from data.preprocess import input_spec, normalize
from data.schema import DEFECT_CLASSES, NO_DEFECT_CLASSES
from data.synth import generate
from train_jobs.export import calibrate_thresholds, decision_metrics, export_model
from train_jobs.model import ADCNet
from train_jobs.pipeline import DecodeAndLabel, augment, only_split
from train_jobs.train import parse_args


def test_entrypoint_round_trips_through_the_job_parser():
    cfg = TrainConfig(dataset="file:///s/d 1", output="s3://b/m", epochs=3, use_gpu=True, classes=["mura", "scratch"],
                      lr=0.01, site="fab-b")
    args = shlex.split(entrypoint(cfg))
    assert args[:3] == ["python", "-m", "train_jobs.train"]
    assert parse_args(args[3:]) == cfg


def test_job_rejects_bad_options_with_the_field_name():
    with pytest.raises(ConfigError, match="epochs"):
        parse_args(["--dataset", "d", "--output", "o", "--epochs", "0"])


def test_model_shapes():
    model = ADCNet(6, width=8)
    assert model(torch.zeros(3, 1, 64, 64)).shape == (3, 6)
    assert model(torch.zeros(1, 1, 96, 96)).shape == (1, 6)


def _meta(thresholds):
    return ModelMetadata(name="m", version="1", classes=["a", "b", "false_defect"], no_defect_classes=["false_defect"],
                         input=input_spec(64), thresholds=thresholds, created_at="-", sha256="-")


def test_calibration_finds_the_precise_prefix():
    # class a: confident ones right, one wrong at 0.7; false_defect: a real defect at 0.8
    probs = np.array([[0.99, 0.005, 0.005], [0.95, 0.04, 0.01], [0.9, 0.05, 0.05], [0.7, 0.3, 0.0],
                      [0.6, 0.2, 0.2], [0.65, 0.3, 0.05],
                      [0.0, 0.02, 0.98], [0.0, 0.03, 0.97], [0.0, 0.04, 0.96], [0.1, 0.1, 0.8], [0.1, 0.2, 0.7],
                      [0.2, 0.1, 0.7]])
    labels = np.array([0, 0, 0, 1, 0, 0, 2, 2, 2, 0, 2, 2])
    th = calibrate_thresholds(probs, labels, ["a", "b", "false_defect"], 0.99, ["false_defect"])
    assert th["a"] == pytest.approx(0.9)  # the prefix may not include the wrong 0.7 one
    assert th["false_defect"] == pytest.approx(0.96)  # strictly above the escaped real defect at 0.8
    assert th["b"] == 1.0  # too few predictions to calibrate: always reviewed
    decided = decide(probs, _meta(th))
    assert [d for _, _, d in decided][:4] == ["defect", "defect", "defect", "review"]
    m = decision_metrics(probs, labels, _meta(th))
    assert m["escape_rate"] == 0.0 and m["auto_precision"] == 1.0


def test_export_then_load_gives_the_same_outputs(tmp_path):
    torch.manual_seed(0)
    model = ADCNet(len(DEFECT_CLASSES), width=4).eval()
    meta = export_model(model, tmp_path.as_uri(), name="m", version="v1", classes=list(DEFECT_CLASSES),
                        no_defect_classes=list(NO_DEFECT_CLASSES), input_spec=input_spec(64),
                        thresholds={c: 0.5 for c in DEFECT_CLASSES})
    assert read_metadata(tmp_path.as_uri()) == meta
    loaded = torch.export.load(str(tmp_path / "model.pt2")).module()
    x = torch.randn(5, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-5)


def test_pipeline_decodes_labels_and_augments():
    import pyarrow as pa

    samples = list(generate(seed=0, count=40))
    table = pa.table({"image_id": [s.image_id for s in samples], "image": [s.png() for s in samples]})
    labels = {s.image_id: s.label for s in samples[:-1]}  # last one unlabelled: dropped
    out = DecodeAndLabel(labels, list(DEFECT_CLASSES), 48)(table)
    assert out["pixels"].shape == (39, 48, 48)
    assert [DEFECT_CLASSES[i] for i in out["label"]] == [s.label for s in samples[:-1]]
    train = only_split(out, "train")
    batch = augment(train, strength=1.0, seed=0)
    assert batch["x"].shape == (len(train["label"]), 1, 48, 48) and batch["x"].dtype == np.float32
    plain = augment(train, strength=0.0)
    assert np.allclose(plain["x"], normalize(train["pixels"]))
    assert not np.allclose(batch["x"], plain["x"])


def test_decision_figures_count_escapes_and_reviews():
    from data.model_format import decision_figures

    figures = decision_figures(
        predicted=["mura", "false_defect", "particle", "false_defect", "scratch"],
        decisions=["defect", "false_defect", "review", "false_defect", "defect"],
        truth=["mura", "mura", "particle", "false_defect", "particle"],
        no_defect={"false_defect"},
    )
    assert figures == {"accuracy": 0.6, "automation_rate": 0.8, "auto_precision": 0.5,
                       "escape_rate": 0.25, "images": 5}
