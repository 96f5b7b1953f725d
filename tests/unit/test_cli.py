"""The CLI without a coordinator: how it finds one (environment, saved context, local home), what
it says when there is none, its one-line errors, and tables that fit 80 columns."""

from __future__ import annotations

import io
import json
import os
import stat
import zipfile

import pytest
from rich.console import Console

from configs.errors import ConfigError, NotFoundError, SiteError
from coordinator.center import bundle
from coordinator.cli.client import config_path, load_config, resolve, save_config
from coordinator.cli.main import main
from coordinator.cli.monitoring import top_table
from data.artifacts import ArtifactRef, ArtifactStore


@pytest.mark.parametrize(
    "args, message",
    [
        (["data", "synth", "--name", "Bad Name"], 'Got "Bad Name"'),
        (["data", "synth", "--name", "x", "--size", "32"], "size"),
        (["train", "--for", "fab-a", "--dataset", "nothing"], "No coordinator is running"),
        (["model", "deploy", "m@1", "--to", "fab-a"], "No coordinator is running"),
        (["status"], "adcp up"),
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


def test_the_old_single_site_forms_say_what_replaces_them(tmp_path, capsys):
    code = main(["--home", str(tmp_path), "train", "--for", "fab-a", "--dataset", "aoi", "--site", "fab-a"])
    assert code == 2 and "--for fab-a --on fab-a" in capsys.readouterr().err
    assert main(["--home", str(tmp_path), "serve", "deploy", "--model", "m@1"]) == 2


def test_environment_names_the_coordinator_first(tmp_path, monkeypatch):
    token = tmp_path / "tok"
    token.write_text("from-file\n")
    monkeypatch.setenv("ADCP_API", "http://10.9.8.7:8080/")
    monkeypatch.setenv("ADCP_TOKEN_FILE", str(token))
    c = resolve(tmp_path, home_given=True)
    assert (c.url, c.token) == ("http://10.9.8.7:8080", "from-file") and "ADCP_API" in c.source
    monkeypatch.setenv("ADCP_TOKEN", "inline")
    assert resolve(tmp_path, home_given=False).token == "inline"
    monkeypatch.delenv("ADCP_TOKEN")
    monkeypatch.delenv("ADCP_TOKEN_FILE")
    with pytest.raises(ConfigError, match="ADCP_TOKEN"):
        resolve(tmp_path, home_given=False)


def test_saved_context_beats_the_default_home_but_not_an_explicit_one(tmp_path):
    token = tmp_path / "tok"
    token.write_text("ctx-token")
    save_config({"contexts": {"lab": {"api": "http://127.0.0.1:1", "token_file": str(token)}}, "current": "lab"})
    assert stat.S_IMODE(os.stat(config_path()).st_mode) == 0o600
    c = resolve(tmp_path, home_given=False)
    assert (c.url, c.token) == ("http://127.0.0.1:1", "ctx-token") and "context lab" in c.source
    with pytest.raises(SiteError, match="No coordinator is running"):
        resolve(tmp_path, home_given=True)  # --home on the command line names a local coordinator
    assert resolve(tmp_path, home_given=True, context="lab").token == "ctx-token"
    with pytest.raises(NotFoundError, match="lab"):
        resolve(tmp_path, home_given=False, context="nope")
    assert load_config()["current"] == "lab"


def test_context_commands(tmp_path, capsys):
    token = tmp_path / "tok"
    token.write_text("t")
    save_config({"contexts": {"a": {"api": "http://h1:1", "token_file": str(token)},
                              "b": {"api": "http://h2:2", "token_file": str(token)}}, "current": "a"})
    assert main(["context", "use", "b"]) == 0
    assert load_config()["current"] == "b"
    capsys.readouterr()
    assert main(["context", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["current"] == "b"
    assert main(["context", "use", "zzz"]) == 1
    assert "No context zzz" in capsys.readouterr().err


def test_an_unreachable_coordinator_is_one_clear_line(tmp_path, capsys, monkeypatch):
    import socket

    with socket.socket() as s:  # bound, never listening: nothing answers there while the test runs
        s.bind(("127.0.0.1", 0))
        monkeypatch.setenv("ADCP_API", f"http://127.0.0.1:{s.getsockname()[1]}")
        monkeypatch.setenv("ADCP_TOKEN", "x")
        code = main(["jobs"])
    err = capsys.readouterr().err
    assert code == 1 and "Cannot reach the coordinator" in err and "ADCP_API" in err


def _overview(n: int) -> dict:
    site = {"name": "", "health": "ok", "reachable": True, "error": None, "jobs": {"running": 1},
            "serve": {"status": "RUNNING"}, "automation_rate": 0.93,
            "latest": {"cpu_util": 12.5, "mem_used": 3 * 2**30, "mem_total": 16 * 2**30, "disk_util": 40,
                       "net_rx_bps": 1200, "net_tx_bps": 800, "gpu_util": None, "inference_rps": 4.2}}
    return {"totals": {"up": n, "sites": n, "alerts_active": 0, "jobs_running": n, "inference_rps": 4.2 * n,
                       "images_total": 999}, "generated_at": "2026-12-03T12:00:00Z",
            "sites": [{**site, "name": f"fab-{chr(97 + i)}"} for i in range(n)]}


def test_top_fits_an_80_column_terminal():
    out = io.StringIO()
    Console(file=out, width=80).print(top_table(_overview(3)))
    text = out.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    for word in ("fab-a", "health", "CPU", "mem", "jobs", "req/s", "auto", "12.5 %", "93 %"):
        assert word in text
    wide = io.StringIO()
    Console(file=wide, width=160).print(top_table(_overview(3), wide=True))
    assert "net in/out" in wide.getvalue() and "RUNNING" in wide.getvalue()


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
    meta = store.manifest(ArtifactRef("code", "adcp", first.version)).meta
    assert meta["entrypoints"]["serve"] == "serve_apps.adc:app"
