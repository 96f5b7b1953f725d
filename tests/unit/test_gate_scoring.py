"""The gate: its pass rule on hand-made figures, the calibration/test halves, the figures, and
`python -m train_jobs.gate` run in-process on local datasets and exported models."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest

from configs.lines import GateLimits
from configs.models import GateJobConfig, SynthConfig
from configs.protocol import GATE_MODULE, Marker, entrypoint, find_line
from data.artifacts import ArtifactRef, ArtifactStore
from data.dataset import write_synthetic
from data.model_format import ModelMetadata
from data.preprocess import input_spec
from data.schema import split_of
from tests.gate_fixtures import export_oracle, publish_patterns
from tests.serve_fixtures import export_tiny_model
from train_jobs import export, gate, scoring

LIMITS = GateLimits(max_escape_rate=0.01, min_auto_precision=0.99, max_automation_drop=0.05)


def _f(escape: float = 0.0, precision: float = 1.0, automation: float = 0.8) -> dict:
    return {"escape_rate": escape, "auto_precision": precision, "automation_rate": automation}


# --- the pass rule -------------------------------------------------------------------------------

@pytest.mark.parametrize(("challenger", "champion", "failed", "reason"), [
    (_f(escape=0.004), _f(escape=0.002), ["escape_rate"], "challenger escape 0.0040 > champion 0.0020"),
    (_f(escape=0.02), _f(escape=0.03), ["escape_rate"], "challenger escape 0.0200 > limit 0.0100"),
    (_f(escape=0.02), None, ["escape_rate"], "challenger escape 0.0200 > limit 0.0100"),
    (_f(precision=0.98), _f(precision=0.97), ["auto_precision"], "challenger auto_precision 0.9800 < limit 0.9900"),
    (_f(automation=0.70), _f(automation=0.80), ["automation_rate"],
     "challenger automation 0.7000 < champion 0.8000 - 0.0500"),
    (_f(escape=0.05, precision=0.5, automation=0.1), _f(), ["escape_rate", "auto_precision", "automation_rate"],
     "challenger escape 0.0500 > champion 0.0000"),
])
def test_each_broken_rule_fails_and_names_its_figure(challenger, champion, failed, reason):
    passed, got, reasons = scoring.verdict(challenger, champion, LIMITS)
    assert not passed and got == failed
    assert reason in reasons


@pytest.mark.parametrize(("challenger", "champion"), [
    (_f(), _f()),  # equal figures pass: "not above", "not lower by more than"
    (_f(escape=0.001, precision=0.99, automation=0.76), _f(escape=0.001, automation=0.81)),  # drop 0.05 is allowed
    (_f(escape=0.01), None),  # no champion: the limits alone, at the limit
    (_f(automation=0.0), None),  # no champion, no automation floor
])
def test_all_good_passes(challenger, champion):
    assert scoring.verdict(challenger, champion, LIMITS) == (True, [], [])


# --- halves and figures --------------------------------------------------------------------------

def test_halves_split_golden_images_though_split_of_put_them_all_in_test():
    ids = [f"img-{i}" for i in range(4000)]
    golden = [i for i in ids if split_of(i) == "test"]
    halves = [scoring.gate_half(i) for i in golden]
    assert halves == [scoring.gate_half(i) for i in golden]  # stable
    share = halves.count("calibration") / len(halves)
    assert 0.4 < share < 0.6 and set(halves) == {"calibration", "test"}
    assert [scoring.held_out_recent(i) for i in ids] == [split_of(i) != "train" for i in ids]


def test_figures_count_escapes_and_per_class_recall_and_precision():
    meta = ModelMetadata(name="m", version="1", classes=["scratch", "false_defect"], no_defect_classes=["false_defect"],
                         input=input_spec(64), thresholds={"scratch": 0.6, "false_defect": 0.6}, created_at="-",
                         sha256="-")
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.55, 0.45], [0.1, 0.9]])
    truth = ["scratch", "scratch", "scratch", "false_defect"]
    f = scoring.figures(probs, truth, meta)
    assert f["escape_rate"] == pytest.approx(1 / 3)  # the scratch called false_defect at 0.8
    assert f["automation_rate"] == 0.75 and f["auto_precision"] == pytest.approx(2 / 3) and f["images"] == 4
    assert f["per_class"]["scratch"] == {"recall": pytest.approx(2 / 3), "precision": 1.0, "n": 3}
    assert f["per_class"]["false_defect"] == {"recall": 1.0, "precision": 0.5, "n": 1}
    # thresholds given replace the model's: at 0.85 the escape goes to review instead
    assert scoring.figures(probs, truth, meta, {"false_defect": 0.85})["escape_rate"] == 0.0


# --- the job, in-process -------------------------------------------------------------------------

def _run(tmp_path: Path, capsys, name: str, **fields) -> dict:
    cfg = GateJobConfig(output=(tmp_path / "out" / name).as_posix(), **fields)
    argv = shlex.split(entrypoint(cfg, GATE_MODULE))[3:]
    assert gate.main(argv) == 0, capsys.readouterr().err
    line = find_line(Marker.GATE, capsys.readouterr().out)
    report = json.loads((tmp_path / "out" / name / "gate.json").read_text())
    assert line == {**report, "uri": f"{cfg.output}/gate.json"}  # what the coordinator reads either way
    return report


@pytest.fixture(scope="module")
def patterns(tmp_path_factory):
    """A store with a pattern dataset, one mislabelled in its test half, the oracle and the shuffled oracle."""
    root = tmp_path_factory.mktemp("gate")
    store = ArtifactStore(root.as_posix())
    urls = {}
    for name, mislabel in (("patterns", None), ("mislabelled", "test")):
        imp = publish_patterns(store, name, mislabel_half=mislabel, only_test_split=mislabel is not None)
        version = imp.dataset.split("@")[1]
        urls[name] = store.manifest_url(ArtifactRef("dataset", name, version))
    urls["good"] = export_oracle(root / "good", "1")
    urls["good2"] = export_oracle(root / "good2", "2")
    urls["bad"] = export_oracle(root / "bad", "3", shuffled=True)
    return urls


def test_a_good_challenger_passes_against_a_good_champion(patterns, tmp_path, capsys):
    r = _run(tmp_path, capsys, "good", challenger=patterns["good2"], champion=patterns["good"],
             golden=patterns["patterns"])
    assert r["passed"] and r["failed"] == [] and r["reasons"] == []
    assert r["challenger"] == "gate-line@2" and r["champion"] == "gate-line@1"
    ch, champ = r["figures"]["challenger"], r["figures"]["champion"]
    assert ch["escape_rate"] == 0.0 and ch["auto_precision"] == 1.0 and ch["automation_rate"] == 1.0
    assert champ["accuracy"] == 1.0 and set(ch["per_class"]) == set(r["thresholds"])
    assert r["data"]["golden"] == "patterns@1" and r["data"]["recent"] is None
    assert r["data"]["calibration_images"] + r["data"]["test_images"] == 6 * 18 == ch["images"] + r["data"][
        "calibration_images"]


def test_a_shuffled_labels_challenger_fails_against_a_good_champion(patterns, tmp_path, capsys):
    r = _run(tmp_path, capsys, "bad", challenger=patterns["bad"], champion=patterns["good"],
             golden=patterns["patterns"])
    assert not r["passed"] and r["failed"] == ["automation_rate"]
    # recalibrated on the calibration half, where every answer is wrong: nothing is trusted any more
    assert set(r["thresholds"].values()) == {1.0}
    assert r["figures"]["challenger"]["automation_rate"] == 0.0 and r["figures"]["challenger"]["accuracy"] == 0.0
    assert r["figures"]["champion"]["automation_rate"] == 1.0
    assert any(reason.startswith("challenger automation 0.0000 < champion 1.0000") for reason in r["reasons"])


def test_the_champion_keeps_its_own_thresholds(patterns, tmp_path, capsys):
    """The shuffled model as champion is scored with its shipped thresholds (0.5): it escapes."""
    r = _run(tmp_path, capsys, "vs-bad", challenger=patterns["good"], champion=patterns["bad"],
             golden=patterns["patterns"])
    assert r["passed"]
    n = {c: v["n"] for c, v in r["figures"]["champion"]["per_class"].items()}
    real = sum(v for c, v in n.items() if c != "false_defect")
    assert r["figures"]["champion"]["escape_rate"] == pytest.approx(n["pinhole"] / real)  # every pinhole: false
    assert r["figures"]["champion"]["automation_rate"] == 1.0


def test_calibration_never_sees_test_images(patterns, tmp_path, capsys, monkeypatch):
    """Every test-half image is mislabelled: had calibration seen one, the oracle's thresholds
    would rise to 1.0; they stay where the clean calibration half puts them."""
    seen: list[int] = []
    calibrate = export.calibrate_thresholds

    def spy(probs, labels, *args):
        seen.append(len(labels))
        return calibrate(probs, labels, *args)

    monkeypatch.setattr(export, "calibrate_thresholds", spy)
    r = _run(tmp_path, capsys, "leak", challenger=patterns["good"], golden=patterns["mislabelled"])
    assert seen == [r["data"]["calibration_images"]]
    assert max(r["thresholds"].values()) < 1.0
    assert r["figures"]["challenger"]["accuracy"] == 0.0  # the test half's labels are all wrong
    assert not r["passed"] and "auto_precision" in r["failed"] and r["champion"] is None


def test_recent_verdicts_join_only_with_images_training_never_fits(patterns, tmp_path, capsys):
    store = ArtifactStore((tmp_path / "recent").as_posix())
    imp = publish_patterns(store, "reviewed-patterns", per_half=0, others=12)  # only non-test-split images
    recent = store.manifest_url(ArtifactRef("dataset", "reviewed-patterns", "1"))
    annotations = store.manifest_url(ArtifactRef("annotations", "reviewed-patterns", imp.annotations.split("@")[1]))
    ids = [i for i in open_ids(recent)]
    held = sum(1 for i in ids if split_of(i) != "train")
    assert 0 < held < len(ids)
    r = _run(tmp_path, capsys, "recent", challenger=patterns["good"], golden=patterns["patterns"],
             recent_dataset=recent, recent_annotations=annotations)
    assert r["data"]["recent"] == "reviewed-patterns@1"
    assert r["data"]["calibration_images"] + r["data"]["test_images"] == 6 * 18 + held


def open_ids(url: str) -> list[str]:
    from data.dataset import open_dataset

    return open_dataset(url).read_images(["image_id"]).column("image_id").to_pylist()


def test_main_on_a_synthetic_dataset_and_tiny_models(tmp_path, capsys):
    url = (tmp_path / "syn").as_posix()
    write_synthetic(url, SynthConfig(images=40, shard_rows=16), name="syn", version="1")
    champion, _ = export_tiny_model(tmp_path / "m1", "1", seed=1)
    challenger, _ = export_tiny_model(tmp_path / "m2", "2", seed=2)
    r = _run(tmp_path, capsys, "syn", challenger=challenger, champion=champion, golden=url,
             limits={"max_escape_rate": 1.0, "min_auto_precision": 0.0, "max_automation_drop": 1.0})
    assert r["passed"]  # limits that let anything through
    assert r["data"] == {"golden": "syn@1", "recent": None, "calibration_images": r["data"]["calibration_images"],
                         "test_images": 40 - r["data"]["calibration_images"]}
    for who in ("champion", "challenger"):
        assert set(r["figures"][who]) == {"escape_rate", "auto_precision", "automation_rate", "accuracy", "images",
                                          "per_class"}
    assert r["limits"]["max_escape_rate"] == 1.0 and r["limits"]["recent_share"] == 0.2


def test_main_refuses_unknown_limits_and_a_missing_model(tmp_path, capsys):
    golden = (tmp_path / "g").as_posix()
    write_synthetic(golden, SynthConfig(images=6), name="g", version="1")
    model, _ = export_tiny_model(tmp_path / "m", "1")
    base = ["--challenger", model, "--golden", golden, "--output", (tmp_path / "o").as_posix()]
    assert gate.main([*base, "--limits", '{"max_escape": 0.1}']) == 2
    assert "max_escape" in capsys.readouterr().err
    assert gate.main(["--challenger", (tmp_path / "none").as_posix(), *base[2:]]) == 2
    assert "No model at" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
