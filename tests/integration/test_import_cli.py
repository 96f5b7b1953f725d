"""`adcp data import` through a running coordinator (`adcp up` of a platform with no sites, so no
Ray): a folder per class with a truncated file is published with that file refused, a re-import
changes nothing and says so, bad requests exit non-zero with one line, and images on a real S3
server (SeaweedFS) import with the source's storage options."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.platform_fixtures import run_cli, running_platform
from tests.s3_server import s3_server  # noqa: F401 - session fixture

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    with running_platform(tmp_path_factory.mktemp("import") / "home", {}) as home:
        yield home


def encode(seed: int, fmt: str = "PNG", size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


def put(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_import_a_folder_then_again(home, capsys, tmp_path):
    src = tmp_path / "factory"
    put(src / "short/a.png", encode(1))
    put(src / "short/b.bmp", encode(2, "BMP"))
    put(src / "open/c.tif", encode(3, "TIFF"))
    cut = encode(4, size=64)
    put(src / "open/cut.png", cut[: len(cut) // 2])

    code, out, err = run_cli(capsys, home, "data", "import", str(src), "--name", "x", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["dataset"] == "x@1" and report["annotations"] == "x@1"
    assert report["images"] == 3 and report["bytes"] > 0 and report["changed"] is True
    assert report["rejected"] == [{"path": "open/cut.png", "reason": "truncated"}]

    code, out, err = run_cli(capsys, home, "data", "list", "--json")
    assert code == 0 and {"name": "x", "versions": ["1"]} in json.loads(out)
    code, out, _ = run_cli(capsys, home, "artifacts", "--kind", "annotations", "--json")
    assert [(a["name"], a["version"]) for a in json.loads(out)] == [("x", "1")]

    code, out, err = run_cli(capsys, home, "data", "import", str(src), "--name", "x")
    assert code == 0, err
    assert "nothing changed" in out and "x@1" in out
    assert "open/cut.png: truncated" in err


def test_bad_requests_exit_with_one_line(home, capsys, tmp_path):
    put(tmp_path / "ok/short/a.png", encode(5))
    code, _, err = run_cli(capsys, home, "data", "import", str(tmp_path / "ok"), "--name", "Bad Name")
    assert code == 1 and "Invalid artifact name" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, home, "data", "import", str(tmp_path / "nowhere"), "--name", "y")
    assert code == 1 and "No folder at" in err
    put(tmp_path / "empty/readme.txt", b"no images")
    code, _, err = run_cli(capsys, home, "data", "import", str(tmp_path / "empty"), "--name", "y")
    assert code == 1 and "No image files found" in err


def test_import_from_s3(home, capsys, s3_server):  # noqa: F811
    fs = s3_server.filesystem()
    prefix = s3_server.url()
    fs.pipe({f"{prefix}/scratch/{i}.png": encode(10 + i) for i in range(3)})
    fs.pipe_file(f"{prefix}/scratch/broken.jpg", b"\xff\xd8\xff not really a jpeg")
    options = json.dumps(s3_server.storage_options)
    code, out, err = run_cli(capsys, home, "data", "import", prefix, "--name", "from-s3",
                             "--storage-options", options, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["dataset"] == "from-s3@1" and report["images"] == 3
    assert [r["path"] for r in report["rejected"]] == ["scratch/broken.jpg"]
