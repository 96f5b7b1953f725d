from __future__ import annotations

import json
import zipfile
import io

import pytest

from data.artifacts import ArtifactRef, ArtifactStore
from click.testing import CliRunner

from coordinator.center import bundle
from coordinator.cli.main import cli, main
from coordinator.cli.workspace import Workspace


def run(args, home):
    return CliRunner().invoke(cli, ["--home", str(home), *args], catch_exceptions=False, standalone_mode=False)


def test_synth_writes_a_dataset_and_a_preview(tmp_path, capsys):
    code = main(["--home", str(tmp_path), "data", "synth", "--name", "aoi", "--images", "12",
                 "--preview", str(tmp_path / "sheet.png"), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["dataset"] == "aoi@1" and out["rows"] == 12
    assert (tmp_path / "sheet.png").stat().st_size > 10_000
    main(["--home", str(tmp_path), "data", "synth", "--name", "aoi", "--images", "6", "--json"])
    assert json.loads(capsys.readouterr().out)["dataset"] == "aoi@2"
    assert Workspace.at(tmp_path).resolve("dataset", "aoi")[1] == "2"


@pytest.mark.parametrize(
    "args, message",
    [
        (["data", "synth", "--name", "Bad Name"], 'Got "Bad Name"'),
        (["data", "synth", "--name", "x", "--size", "32"], "size"),
        (["train", "--dataset", "nothing"], "not running"),
        (["serve", "deploy", "--model", "m@1"], "not running"),
    ],
)
def test_user_errors_are_one_line_and_exit_non_zero(tmp_path, capsys, args, message):
    code = main(["--home", str(tmp_path), *args])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert message in err and err.startswith("error:")
    assert "Traceback" not in err and len(err.splitlines()) <= 3


def test_debug_shows_the_traceback(tmp_path):
    from configs import InputError

    with pytest.raises(InputError):
        main(["--home", str(tmp_path), "--debug", "data", "synth", "--name", "Bad Name"])


def test_conflicting_flags_are_usage_errors(tmp_path, capsys):
    img = tmp_path / "a.png"
    img.write_bytes(b"x")
    code = main(["--home", str(tmp_path), "classify", str(img), "--site", "fab-a", "--url", "http://127.0.0.1:1"])
    assert code == 2 and "not both" in capsys.readouterr().err


def test_dataset_resolution_errors_name_what_exists(tmp_path):
    from configs import NotFoundError

    ws = Workspace.at(tmp_path)
    run(["data", "synth", "--name", "aoi", "--images", "6"], tmp_path)
    with pytest.raises(NotFoundError, match="aoi@1"):
        ws.resolve("dataset", "aoi@7")
    with pytest.raises(NotFoundError, match="No dataset named zzz"):
        ws.resolve("dataset", "zzz")


def test_code_bundle_is_deterministic_and_one_folder(tmp_path):
    a, b = bundle.build_zip(), bundle.build_zip()
    assert a == b
    names = zipfile.ZipFile(io.BytesIO(a)).namelist()
    assert {n.split("/")[0] for n in names} == {"adcp-code"}
    assert "adcp-code/train_jobs/train.py" in names and "adcp-code/serve_apps/adc.py" in names
    assert not any("coordinator" in n or "__pycache__" in n for n in names)
    store = ArtifactStore(tmp_path.as_uri())
    first = bundle.publish(store)
    again = bundle.publish(store)
    assert first == again and first.uri.endswith(".zip") and first.sha256 in first.uri
    assert [(m.kind, m.name, m.version) for m in store.list()] == [("code", "adcp", first.version)]
    assert store.manifest(ArtifactRef("code", "adcp", first.version)).meta["entrypoints"]["serve"] == "serve_apps.adc:app"
