"""A transfer killed with SIGKILL mid-copy leaves no artifact behind, and the next one sends only
what had not landed: `python -m data.transfer` in a subprocess, local folder -> local folder and
local folder -> S3 (SeaweedFS)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from data.artifacts import ArtifactStore
from data.publish import publish_artifact
from tests.s3_server import s3_server  # noqa: F401  (fixture)
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
OBJECTS = 40
OBJECT_BYTES = 4 << 20
#: The copy is capped at this rate (the transfer's own bandwidth cap) so that it takes ~4 s and
#: the test can see it half done; the resumed copy runs at full speed.
CAP_MBPS = 40


def _transfer(src: ArtifactStore, dst: ArtifactStore, *extra: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "data.transfer",
        "--src",
        src.url,
        "--dst",
        dst.url,
        "--ref",
        "dataset/big@1",
    ]
    if dst.storage_options:
        cmd += ["--dst-options", json.dumps(dst.storage_options)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [*cmd, *extra], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _landed(dst: ArtifactStore, keys: set[str]) -> set[str]:
    """Keys of the artifact's objects present at their final key (temp parts are not)."""
    try:
        found = dst.fs.find(dst.path("objects"))
    except FileNotFoundError:
        return set()
    prefix = dst.path("")
    return {p[len(prefix) :] for p in found} & keys


@pytest.fixture
def big_artifact(tmp_path):
    folder = tmp_path / "big"
    folder.mkdir()
    for i in range(OBJECTS):
        (folder / f"part-{i:05d}.parquet").write_bytes(os.urandom(OBJECT_BYTES))
    src = ArtifactStore(tmp_path / "central")
    return src, publish_artifact(src, "dataset", "big", "1", folder)


@pytest.mark.parametrize("dst_kind", ["file", "s3"])
def test_killed_transfer_resumes_with_only_the_missing_objects(dst_kind, big_artifact, tmp_path, request):
    src, manifest = big_artifact
    if dst_kind == "file":
        dst = ArtifactStore(tmp_path / "site")
    else:
        server = request.getfixturevalue("s3_server")
        dst = ArtifactStore(server.url(), server.storage_options)
    keys = {e.key for e in manifest.objects}

    proc = _transfer(src, dst, "--workers", "2", "--max-mbps", str(CAP_MBPS))
    try:
        wait_for(lambda: len(_landed(dst, keys)) >= 5, 60, "the first objects to land", poll_s=0.02)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    landed = _landed(dst, keys)
    assert 5 <= len(landed) < OBJECTS, "the copy should have been killed half way"
    assert dst.list() == [] and not dst.exists(manifest.ref)

    proc = _transfer(src, dst, "--workers", "4")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    (line,) = [x for x in out.splitlines() if x.startswith("ADCP_TRANSFER ")]
    result = json.loads(line.removeprefix("ADCP_TRANSFER "))
    # Every object that had landed is skipped, none is sent twice. An S3 server may still finish a
    # PUT whose body had fully arrived when the client was killed, so one more object can be there
    # by the time the resume lists the store: it is skipped too.
    skipped = result["objects_skipped"]
    assert len(landed) <= skipped <= len(landed) + 2
    assert result["bytes_skipped"] == skipped * OBJECT_BYTES
    assert result["objects_sent"] == result["objects_verified"] == OBJECTS - skipped
    assert result["bytes_sent"] == (OBJECTS - skipped) * OBJECT_BYTES
    assert [m.ref for m in dst.list()] == [manifest.ref]
    check = dst.verify(manifest.ref)
    assert check.ok and check.bad == [] and check.objects_checked == OBJECTS
