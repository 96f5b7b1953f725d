"""The coordinator without Ray: sites registered by hand, pushes between real stores (file:// and a
real S3 server), transfer records, the HTTP API behind its token, and state across a restart.

Sites here are registered with `adcp site add` and never contacted through Ray: push-mode
transfers need only the stores. The coordinator runs as a real process on 127.0.0.1.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import httpx
import pytest

from coordinator import process as server
from coordinator.center.core import Center
from coordinator.cli.main import main
from coordinator.process import read_token, token_path
from data.artifacts import ArtifactRef, ArtifactStore
from data.publish import publish_artifact
from tests.registry_server import registry_server  # noqa: F401
from tests.s3_server import s3_server  # noqa: F401
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

PLATFORM = """
center:
  state_db: "{home}/coordinator.db"
  store: {url: "{home}/store"}
sites: []
"""


@pytest.fixture
def home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    platform = tmp_path / "platform.yaml"
    platform.write_text(PLATFORM)
    monkeypatch.setenv("ADCP_HOME", str(home))
    monkeypatch.setenv("ADCP_PLATFORM", str(platform))
    server.start(home, platform)  # the CLI is a client: every command goes to this coordinator
    yield home
    server.stop(home)


def _artifact(store: ArtifactStore, files: int = 6, size: int = 300_000, name: str = "aoi") -> ArtifactRef:
    src = store.url.removeprefix("file://") + f"-src-{name}"
    Path(src).mkdir(parents=True)
    for i in range(files):
        (Path(src) / f"part-{i:03d}.parquet").write_bytes(bytes([i % 251]) * size + str(i).encode())
    return publish_artifact(store, "dataset", name, None, src).ref


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_push_to_two_sites_records_transfers_and_skips_unchanged(home, tmp_path, capsys):
    for name in ("fab-x", "fab-y"):
        code, _, err = _cli(capsys, "site", "add", name, "--dashboard", "http://127.0.0.1:9", "--store",
                            str(tmp_path / f"{name}-store"))
        assert code == 0, err
    center = Center.open(home)
    ref = _artifact(center.central)

    code, out, err = _cli(capsys, "push", str(ref), "--to", "fab-x,fab-y", "--json")
    assert code == 0, err
    first = {r["site"]: r for r in json.loads(out)}
    total = center.central.manifest(ref).total_bytes
    for site in ("fab-x", "fab-y"):
        r = first[site]
        assert r["direction"] == "push"
        assert r["bytes_sent"] == total and r["bytes_skipped"] == 0 and r["objects_verified"] == 6
        assert {"site", "bytes_sent", "bytes_skipped", "objects_verified", "seconds"} <= set(r)
        held = ArtifactStore((tmp_path / f"{site}-store").as_uri()).list()
        assert [(m.kind, m.name, m.version) for m in held] == [("dataset", "aoi", ref.version)]

    code, out, err = _cli(capsys, "push", str(ref), "--to", "fab-x,fab-y", "--json")
    assert code == 0, err
    for r in json.loads(out):
        assert r["bytes_sent"] == 0 and r["bytes_skipped"] == total

    code, out, _ = _cli(capsys, "artifacts", "--site", "fab-x", "--json")
    assert json.loads(out) == [{**json.loads(out)[0], "kind": "dataset", "name": "aoi", "version": ref.version,
                                "bytes": total}]
    code, out, _ = _cli(capsys, "transfers", "--json")
    rows = json.loads(out)
    assert len(rows) == 4 and {r["status"] for r in rows} == {"succeeded"}
    assert sorted(r["bytes_sent"] for r in rows) == [0, 0, total, total]


def test_corrupt_object_at_site_is_detected_and_repaired(home, tmp_path, capsys):
    assert _cli(capsys, "site", "add", "fab-x", "--dashboard", "http://127.0.0.1:9", "--store",
                str(tmp_path / "fab-x-store"))[0] == 0
    center = Center.open(home)
    ref = _artifact(center.central, files=3)
    assert _cli(capsys, "push", str(ref), "--to", "fab-x")[0] == 0
    site_store = center.store("fab-x")
    victim = site_store.manifest(ref).objects[1]
    path = Path(site_store.object_url(victim).removeprefix("file://"))
    blob = bytearray(path.read_bytes())
    blob[100] ^= 0xFF  # same size, different bytes: only a rehash can tell
    path.write_bytes(bytes(blob))

    code, out, _ = _cli(capsys, "verify", str(ref), "--site", "fab-x", "--json")
    assert code == 1 and json.loads(out)["bad"] == [victim.path]
    code, out, _ = _cli(capsys, "verify", str(ref), "--site", "fab-x", "--repair", "--json")
    assert code == 0 and json.loads(out)["repaired"] == [victim.path]
    assert site_store.verify(ref).ok


def test_push_to_a_site_on_s3(home, tmp_path, capsys, s3_server, monkeypatch):  # noqa: F811
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    # store credentials are the coordinator's (it does the copying): restart it with them
    assert server.stop(home)
    server.start(home)
    # the site's store options carry the endpoint; credentials come from the environment
    code, _, err = _cli(capsys, "site", "add", "fab-s3", "--dashboard", "http://127.0.0.1:9", "--store",
                        s3_server.url("fab-s3"), "--store-options",
                        json.dumps({"client_kwargs": {"endpoint_url": s3_server.endpoint_url}}))
    assert code == 0, err
    center = Center.open(home)
    ref = _artifact(center.central, files=4)
    code, out, err = _cli(capsys, "push", str(ref), "--to", "fab-s3", "--json")
    assert code == 0, err
    assert json.loads(out)[0]["objects_verified"] == 4
    assert center.store("fab-s3").verify(ref).ok
    code, out, _ = _cli(capsys, "push", str(ref), "--to", "fab-s3", "--json")
    assert json.loads(out)[0]["bytes_sent"] == 0


def test_bad_input_is_one_line_and_non_zero(home, capsys):
    code, _, err = _cli(capsys, "push", "dataset/nope@1", "--to", "fab-x")
    assert code == 1 and "No site named fab-x" in err and "Traceback" not in err
    code, _, err = _cli(capsys, "push", "blob/x@1", "--to", "fab-x")
    assert code == 1 and "dataset" in err  # names the allowed kinds
    code, _, err = _cli(capsys, "site", "add", "Fab_X", "--dashboard", "http://h:1", "--store", "/tmp/x")
    assert code == 1 and "DNS label" in err
    code, _, err = _cli(capsys, "site", "remove", "ghost")
    assert code == 1 and "No site named ghost" in err


def test_api_needs_the_token_and_state_survives_restart(home, tmp_path, capsys):
    info = server.start(home)
    assert stat.S_IMODE(token_path(home).stat().st_mode) == 0o600
    token = read_token(home)
    url = info["url"] + "/api/v1/sites"
    assert httpx.get(url).status_code == 401
    wrong = httpx.get(url, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"] == "Unauthorized"
    auth = {"Authorization": f"Bearer {token}"}

    r = httpx.post(url, headers=auth, json={"name": "fab-x", "dashboard": "http://127.0.0.1:9",
                                            "store": str(tmp_path / "fab-x-store")})
    assert r.status_code == 201, r.text
    bad = httpx.post(url, headers=auth, json={"name": "fab-y", "dashboard": "ftp://x", "store": "/tmp/y"})
    assert bad.status_code == 422 and "http" in bad.json()["detail"]
    extra = httpx.post(url, headers=auth, json={"name": "fab-y", "dashboard": "http://h:1", "store": "/y", "x": 1})
    assert extra.status_code == 422 and extra.json()["problems"][0]["where"] == "body.x"

    ref = _artifact(Center.open(home).central, files=2)
    r = httpx.post(info["url"] + "/api/v1/transfers", headers=auth, json={"artifact": str(ref), "to": ["fab-x"]},
                   timeout=60)
    assert r.status_code == 202, r.text
    tid = r.json()["transfers"][0]["transfer_id"]
    done = wait_for(lambda: (t := httpx.get(f"{info['url']}/api/v1/transfers/{tid}", headers=auth).json())["status"]
                    != "running" and t, 60, "the transfer to finish")
    assert done["status"] == "succeeded", done
    r = httpx.post(info["url"] + "/api/v1/transfers", headers=auth, params={"wait": "true"},
                   json={"artifact": str(ref), "to": ["fab-x"]}, timeout=60)
    assert r.status_code == 200 and r.json()["results"][0]["bytes_sent"] == 0, r.text
    missing = httpx.post(info["url"] + "/api/v1/transfers", headers=auth, json={"artifact": "dataset/zzz@1",
                                                                                "to": ["fab-x"]})
    assert missing.status_code == 404 and "zzz" in missing.json()["detail"]

    assert server.stop(home)
    info = server.start(home)
    assert info["url"]
    r = httpx.get(info["url"] + "/api/v1/sites", params={"live": "false"}, headers=auth)
    assert [s["name"] for s in r.json()] == ["fab-x"]
    r = httpx.get(f"{info['url']}/api/v1/transfers/{tid}", headers=auth)
    assert r.json()["status"] == "succeeded" and r.json()["bytes_sent"] > 0
    r = httpx.get(info["url"] + "/api/v1/artifacts", params={"site": "fab-x"}, headers=auth)
    assert [(a["kind"], a["name"]) for a in r.json()] == [("dataset", "aoi")]
    assert httpx.get(info["url"] + "/openapi.json").json()["info"]["title"] == "ADC Platform coordinator"


def test_image_push_lands_in_the_site_registry(home, tmp_path, capsys, registry_server):  # noqa: F811
    from coordinator.center.registry import pull_from_registry
    from data.images import publish_image
    from data.oci_archive import inspect_archive, read_layer_files
    from data.oci_build import build_oci_archive

    code, _, err = _cli(capsys, "site", "add", "fab-r", "--dashboard", "http://127.0.0.1:9", "--store",
                        str(tmp_path / "fab-r-store"), "--registry", registry_server.address)
    assert code == 0, err
    archive = tmp_path / "operator.tar"
    build_oci_archive(archive, [{"app/run.py": b"print('adc operator')\n"}], ref_name="adcp/operator:1")
    center = Center.open(home)
    ref = publish_image(center.central, "operator", archive).ref
    code, out, err = _cli(capsys, "push", str(ref), "--to", "fab-r", "--json")
    assert code == 0, err
    pushed = json.loads(out)[0]
    assert pushed["registry"]["image"] == f"{registry_server.address}/adcp/operator:{ref.version}"
    back = pull_from_registry(registry_server.address, "adcp/operator", ref.version, tmp_path / "back.tar")
    assert [la.digest for la in inspect_archive(back).layers] == [la.digest for la in inspect_archive(archive).layers]
    assert read_layer_files(back)["app/run.py"] == b"print('adc operator')\n"


def test_killed_push_shows_no_half_artifact_and_resumes_with_the_rest(home, tmp_path, capsys):
    import os
    import signal

    assert _cli(capsys, "site", "add", "fab-x", "--dashboard", "http://127.0.0.1:9", "--store",
                str(tmp_path / "fab-x-store"))[0] == 0
    center = Center.open(home)
    ref = _artifact(center.central, files=24, size=1_000_000)
    objects = tmp_path / "fab-x-store" / "objects"

    def landed() -> list[Path]:
        return [p for p in objects.glob("*/*") if ".part-" not in p.name] if objects.exists() else []

    # the push runs inside the coordinator (killing the CLI would not stop it): kill the coordinator
    code, out, err = _cli(capsys, "push", str(ref), "--to", "fab-x", "--max-mbps", "6", "--detach", "--json")
    assert code == 0, err
    pid = server.running(home)["pid"]
    try:
        wait_for(lambda: len(landed()) >= 4, 60, "some objects to land at fab-x")
    finally:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: server.running(home) is None, 30, "the killed coordinator to be gone")
    done = landed()
    assert 4 <= len(done) < 24
    assert center.store("fab-x").list() == []  # no manifest, so no artifact
    server.start(home)
    code, out, _ = _cli(capsys, "artifacts", "--site", "fab-x", "--json")
    assert json.loads(out) == []
    code, out, _ = _cli(capsys, "transfers", "--json")
    assert [r["status"] for r in json.loads(out)] == ["failed"]  # the process that ran it is gone

    code, out, err = _cli(capsys, "push", str(ref), "--to", "fab-x", "--json")
    assert code == 0, err
    r = json.loads(out)[0]
    landed_bytes = sum(p.stat().st_size for p in done)
    assert r["objects_skipped"] == len(done) and r["bytes_skipped"] == landed_bytes
    assert r["bytes_sent"] == center.central.manifest(ref).total_bytes - landed_bytes
    assert center.store("fab-x").verify(ref).ok
