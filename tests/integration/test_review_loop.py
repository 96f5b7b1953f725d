"""The line's loop on one real local Ray site, as its users run it: an engineer imports a factory's
own images (`adcp data import`), a model is rolled out (both Serve apps: ADC at `/`, the review
station at `/review`), an AOI machine classifies over HTTP with its product, every `review`
decision and the audit sample land in the site's review queue (`adcp review queue`), a reviewer
the center issued logs in at the station in Chromium with their API token and judges by keyboard,
then through the station's JSON routes (one verdict undone and given again), the
coordinator pulls them back (`adcp review sync`, twice: nothing is counted twice), and production
quality is measured from them (`adcp quality`).

The station page in depth (50 by keyboard, two reviewers apart, 403 at another site, layouts) is
tests/integration/test_review_station_browser.py.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from configs.station_tokens import STATION_TOKEN_HEADER
from data.schema import DEFECT_CLASSES, NO_DEFECT_CLASSES
from tests.platform_fixtures import run_cli, running_platform
from tests.serve_fixtures import export_tiny_model, wait_for

pytestmark = pytest.mark.integration

CLASSES = ("particle", "scratch", "false_defect")
PER_CLASS = 6


def _cli_json(capsys, home: Path, *args: str):
    code, out, err = run_cli(capsys, home, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def _factory_folder(root: Path) -> dict[str, str]:
    """A folder per class of PNG, BMP and 16-bit TIFF images, plus one truncated PNG; returns
    file name -> class of the good files."""
    rng = np.random.default_rng(7)
    labels = {}
    for label in CLASSES:
        (root / label).mkdir(parents=True)
        for i in range(PER_CLASS):
            name = f"{label}-{i}"
            if i % 3 == 2:
                pixels = rng.integers(0, 65535, (48, 40), dtype=np.uint16)
                Image.fromarray(pixels).save(root / label / f"{name}.tif")
                labels[f"{name}.tif"] = label
            else:
                pixels = rng.integers(0, 255, (40, 48), dtype=np.uint8)
                ext = "bmp" if i % 3 == 1 else "png"
                Image.fromarray(pixels).save(root / label / f"{name}.{ext}")
                labels[f"{name}.{ext}"] = label
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (40, 48), dtype=np.uint8)).save(buf, format="PNG")
    (root / "particle" / "broken.png").write_bytes(buf.getvalue()[:200])
    return labels


def _mixed_model(folder: Path, files: list[Path]) -> tuple[int, float]:
    """(seed, threshold) of an untrained tiny model that calls some of `files` false_defect and
    some a defect, with the median confidence as the threshold: half review, half automatic."""
    from data.preprocess import decode_image
    from serve_apps.classifier import load_model, preprocess

    best = None
    for seed in range(12):
        uri, _ = export_tiny_model(folder / str(seed), "1", seed=seed)
        model = load_model(uri)
        probs = model.forward(preprocess([decode_image(p.read_bytes()) for p in files], model.meta))
        predicted = {model.meta.classes[i] for i in probs.argmax(axis=1)}
        best = best or (seed, float(np.median(probs.max(axis=1))))
        if "false_defect" in predicted and len(predicted) > 1:
            return seed, float(np.median(probs.max(axis=1)))
    return best


KEYS = {"particle": "1", "scratch": "2", "mura": "3", "line_defect": "4", "pinhole": "5", "false_defect": "F"}


def _judge_in_browser(url: str, headers: dict, api_token: str, truth, count: int) -> list[str]:
    """Log in at the station page in Debian's Chromium with a center API token and judge `count`
    images by keyboard (the key of `truth(item_id)`); log out (the rest go back). Item ids judged."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="make install-test installs playwright")
    judged = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"], headless=True)
        try:
            page = browser.new_context(viewport={"width": 1920, "height": 1080},
                                       extra_http_headers=headers).new_page()
            assert page.goto(url).status == 200
            page.locator('input[name="kind"][value="api_token"]').check()
            page.locator("#credential").fill(api_token)
            page.locator("#login-submit").click()
            sync_api.expect(page.locator("#site-name")).to_have_text("北京一厂", timeout=30_000)
            for _ in range(count):
                image = page.locator("#image[data-item-id]")
                sync_api.expect(image).to_be_attached(timeout=30_000)
                item = image.get_attribute("data-item-id")
                page.keyboard.press(KEYS[truth(item)])
                page.wait_for_function("(prev) => document.getElementById('image').dataset.itemId !== prev",
                                       arg=item, timeout=30_000)
                judged.append(item)
            sync_api.expect(page.locator("#done-count")).to_have_text(str(count), timeout=30_000)
            page.locator("#logout").click()
            sync_api.expect(page.locator("#login-view")).to_be_visible(timeout=30_000)
        finally:
            browser.close()
    return judged


@pytest.fixture(scope="module")
def line(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("line")
    home = tmp / "home"
    settings = {"fab-a": {"display_name": "北京一厂", "review": {"audit_rate": 1.0}}}
    with running_platform(home, {"fab-a": {"num_cpus": 2, "object_store_mb": 300}}, settings):
        yield home, tmp


def test_import_classify_review_sync_quality(line, capsys):
    home, tmp = line
    labels = _factory_folder(tmp / "factory")

    # 1. a factory's own images in
    report = _cli_json(capsys, home, "data", "import", str(tmp / "factory"), "--name", "factory")
    assert report["dataset"] == "factory@1"
    assert report["images"] == len(labels)
    assert [Path(r["path"]).name for r in report["rejected"]] == ["broken.png"]
    assert report["bytes"] > 0
    again = _cli_json(capsys, home, "data", "import", str(tmp / "factory"), "--name", "factory")
    assert again["changed"] is False and again["dataset"] == "factory@1"

    # 2. a model at the site whose thresholds send about half of these images to review
    files = sorted(p for p in (tmp / "factory").rglob("*") if p.name in labels)
    seed, threshold = _mixed_model(tmp / "probe", files)
    export_tiny_model(tmp / "adc-line", "1", name="adc-line", seed=seed,
                      thresholds={c: threshold for c in DEFECT_CLASSES})
    assert run_cli(capsys, home, "upload", str(tmp / "adc-line"), "--as", "model/adc-line@1")[0] == 0
    assert run_cli(capsys, home, "model", "deploy", "adc-line@1", "--to", "fab-a")[0] == 0
    env = _cli_json(capsys, home, "site", "env", "fab-a")
    serve, headers = env["serve_url"], env["serve_headers"]

    # 3. the AOI machine classifies, naming its product
    answers = {}
    with httpx.Client(timeout=60, headers=headers) as client:
        for path in files:
            r = client.post(f"{serve}/v1/classify", content=path.read_bytes(),
                            headers={"Content-Type": "application/octet-stream", "X-ADC-Product": "p1",
                                     "X-ADC-AOI-Machine": "aoi-07"})
            assert r.status_code == 200, r.text
            answers[path.name] = r.json()
    decisions = [a["decision"] for a in answers.values()]
    assert "review" in decisions and set(decisions) - {"review"}, decisions

    # every review decision and (audit_rate 1.0) every automatic one reaches the queue, off the request path
    def queued():
        return _cli_json(capsys, home, "review", "queue", "--site", "fab-a")

    wait_for(lambda: len(queued()) == len(files), 60, "every classified image in the review queue")
    items = queued()
    assert {i["why"] for i in items} == {"low_confidence", "audit"}
    assert {i["model_version"] for i in items} == {"adc-line@1"}
    assert sum(i["decision"] == "review" for i in items) == decisions.count("review")

    # 4. a reviewer the center issued logs in at the station in Chromium with the API token the
    # center gave (the station exchanges it for a station token) and judges a few by keyboard
    user = _cli_json(capsys, home, "user", "add", "li", "--role", "reviewer", "--sites", "fab-a")
    station = f"{serve}/review"
    by_sha = {hashlib.sha256(p.read_bytes()).hexdigest(): labels[p.name] for p in files}
    sha_of = {i["id"]: i["image_sha256"] for i in items}
    by_keyboard = _judge_in_browser(f"{station}/", headers, user["token"],
                                    lambda item_id: by_sha[sha_of[item_id]], count=3)
    assert len(set(by_keyboard)) == 3

    # ... and the rest through the station's JSON routes (what the page calls)
    with httpx.Client(timeout=60, headers=headers) as client:
        login = client.post(f"{station}/api/login", json={"api_token": user["token"]})
        assert login.status_code == 200, login.text
        client.headers[STATION_TOKEN_HEADER] = login.json()["token"]
        me = client.get(f"{station}/api/me").json()
        assert me["display_name"] == "北京一厂" and me["user"] == "li"
        bad = client.post(f"{station}/api/verdict", json={"item_id": items[0]["id"], "label": "nonsense"})
        assert bad.status_code in (400, 409, 422) and bad.json()["detail"]

        claimed = client.post(f"{station}/api/claim", json={"n": 100}).json()["items"]
        assert len(claimed) == len(files) - len(by_keyboard)
        assert not {i["id"] for i in claimed} & set(by_keyboard)
        for k, item in enumerate(claimed):
            image = client.get(f"{station}/api/images/{item['image_sha256']}")
            assert image.status_code == 200 and image.content
            verdict = {"item_id": item["id"], "label": by_sha[item["image_sha256"]]}
            r = client.post(f"{station}/api/verdict", json=verdict)
            assert r.status_code == 200, r.text
            if k == 0:  # a slip: undo it and judge again
                assert client.post(f"{station}/api/undo", json={}).status_code == 200
                r = client.post(f"{station}/api/verdict", json=verdict)
                assert r.status_code == 200, r.text
        assert client.get(f"{station}/api/queue").json()["total"] == 0

    # 5. verdicts back to the center, once
    first = _cli_json(capsys, home, "review", "sync")
    assert first["verdicts_new"] == len(files)
    assert first["annotations"].split("@")[0].startswith("reviewed")
    second = _cli_json(capsys, home, "review", "sync")
    assert second["verdicts_new"] == 0

    # 6. production quality from those verdicts, with the counts behind each figure
    automatic = [(a, by_label) for a, by_label in
                 ((answers[p.name], labels[p.name]) for p in files) if a["decision"] != "review"]
    escapes = sum(a["decision"] == "false_defect" and truth not in NO_DEFECT_CLASSES for a, truth in automatic)
    overkill = sum(a["decision"] == "defect" and truth in NO_DEFECT_CLASSES for a, truth in automatic)
    audited_false = sum(a["decision"] == "false_defect" for a, _ in automatic)
    audited_defect = sum(a["decision"] == "defect" for a, _ in automatic)

    def figures():
        sites = _cli_json(capsys, home, "quality", "--site", "fab-a")["sites"]
        return sites[0] if sites and sites[0].get("classified") == len(files) and sites[0]["backlog"] == 0 else None

    site = wait_for(figures, 60, "quality figures of fab-a")
    assert site["display_name"] == "北京一厂"
    assert site["automatic"] == len(automatic)
    assert site["automation_rate"] == pytest.approx(len(automatic) / len(files))
    assert (site["escapes"], site["audited_false_defect"]) == (escapes, audited_false)
    assert (site["overkill"], site["audited_defect"]) == (overkill, audited_defect)
    if audited_false:
        assert site["escape_rate"] == pytest.approx(escapes / audited_false)
