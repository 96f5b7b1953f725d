"""The gate through a running coordinator and a real local site, as a user runs it: `adcp model
golden` from a dataset (its test split only; the same again is the same version), then `adcp model
gate` on a good challenger (passes) and on a shuffled-labels one (fails, naming the figure; still
exit 0), both run as Ray jobs at the site, the reports stored with the versions (`adcp model history`)."""

from __future__ import annotations

import json

import pytest

from coordinator.center.core import Center
from data.publish import publish_artifact
from tests.gate_fixtures import export_oracle, publish_patterns
from tests.platform_fixtures import run_cli, running_platform

pytestmark = pytest.mark.integration

LINE = "gate-line"


def test_gate_passes_a_good_challenger_and_refuses_a_shuffled_one(tmp_path, capsys):
    home = tmp_path / "home"
    with running_platform(home, {"fab-a": {"num_cpus": 2}}):
        center = Center.open(home)
        source = publish_patterns(center.central, "patterns", others=3)  # 96 test-split images + 18 others
        assert source.images == 6 * 19
        for version, shuffled in (("1", False), ("2", False), ("3", True)):
            folder = tmp_path / f"model-{version}"
            export_oracle(folder, version, shuffled=shuffled, name=LINE)
            publish_artifact(center.central, "model", LINE, version, folder)
        center.lines.promote(LINE, "fab-a", "1", by="test", why="the first model")

        code, out, err = run_cli(capsys, home, "model", "gate", f"{LINE}@2")
        assert code == 1 and f"adcp model golden {LINE} --from" in err  # no golden set yet: says how to make one

        code, out, err = run_cli(capsys, home, "model", "golden", LINE, "--from", "patterns@1", "--json")
        assert code == 0, err
        golden = json.loads(out)
        assert golden["golden"] == f"golden-{LINE}@1" and golden["changed"]
        assert golden["images"] == golden["test_images"] == 6 * 16  # the other splits stay out
        code, out, err = run_cli(capsys, home, "model", "golden", LINE, "--from", "patterns@1")
        assert code == 0 and f"golden-{LINE}@1 already holds these images and labels: unchanged" in out, err

        code, out, err = run_cli(capsys, home, "model", "gate", f"{LINE}@2", "--json")
        assert code == 0, err
        good = json.loads(out)
        assert good["passed"] and good["failed"] == [] and good["site"] == "fab-a"
        assert good["champion"] == f"{LINE}@1" and good["challenger"] == f"{LINE}@2"
        assert good["data"]["golden"] == f"golden-{LINE}@1" and good["data"]["test_images"] > 0
        assert good["uri"].startswith(center.store("fab-a").url)  # scored at the site, read home

        code, out, err = run_cli(capsys, home, "model", "gate", f"{LINE}@3")
        assert code == 0, err  # a gate that ran and failed is an answer
        assert f"{LINE}@3 FAILED the gate at fab-a against {LINE}@1" in out
        assert "fail challenger automation 0.0000 < champion 1.0000 - 0.0200" in out
        for figure in ("escape_rate", "auto_precision", "automation_rate", "accuracy", "pinhole recall"):
            assert figure in out

        code, out, err = run_cli(capsys, home, "model", "history", LINE, "--json")
        assert code == 0, err
        reports = {v["version"]: (v["reports"] or {}).get("gate") for v in json.loads(out)["versions"]}
        assert reports["2"]["passed"] is True
        assert reports["3"]["passed"] is False and reports["3"]["failed"] == ["automation_rate"]
        assert reports["1"] is None
        center.close()
