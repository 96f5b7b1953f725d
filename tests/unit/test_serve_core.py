"""The Serve app's Ray-free core and HTTP layer: decoding, limits, OIP, decisions, model loading
and swapping. No Ray cluster: the FastAPI app runs around a plain `AdcService` in-process."""

from __future__ import annotations

import asyncio
import shutil
import threading
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
import ray
from fastapi.testclient import TestClient
from pydantic import ValidationError

from configs.errors import IntegrityError, ModelUnavailableError, NotFoundError
from configs.models import ServeUserConfig
from data.model_format import ModelMetadata
from data.preprocess import input_spec
from serve_apps import oip
from serve_apps.api import build_api
from serve_apps.classifier import AdcService, answers, load_model, torch_threads
from tests.serve_fixtures import b64, encode, export_tiny_model, synth_pixels, synth_png

PNG = {"content-type": "image/png"}


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("unit tests must not start Ray")

    monkeypatch.setattr(ray, "init", forbidden)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, ModelMetadata]]:
    root = tmp_path_factory.mktemp("models")
    return {
        "v1": export_tiny_model(root / "v1", "1", seed=1),
        "v2": export_tiny_model(root / "v2", "2", seed=2),
    }


@pytest.fixture
def service(models) -> AdcService:
    svc = AdcService()
    svc.reconfigure({"model_uri": models["v1"][0]})
    return svc


@pytest.fixture
def client(service: AdcService) -> TestClient:
    with TestClient(build_api(service)) as c:
        yield c


def assert_answer(body: dict, version: str = "adc-test@1") -> None:
    assert set(body) >= {"class", "confidence", "top3", "decision", "model_version"}
    assert body["model_version"] == version
    assert body["decision"] in ("defect", "false_defect", "review")
    assert len(body["top3"]) == 3
    assert body["top3"][0] == {"class": body["class"], "confidence": body["confidence"]}
    confs = [t["confidence"] for t in body["top3"]]
    assert confs == sorted(confs, reverse=True) and 0 < confs[0] <= 1


def assert_error(r: httpx.Response, status: int, *words: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert "error" in body and "detail" in body
    text = " ".join(str(v) for v in body.values()).lower()
    for w in words:
        assert w.lower() in text, (w, body)
    return body


# --- single and batch decoding ----------------------------------------------------------------


@pytest.mark.parametrize("ctype", ["image/png", "application/octet-stream", "image/jpeg"])
def test_classify_raw_body(client, ctype):
    data = synth_png(3, fmt="JPEG" if ctype == "image/jpeg" else "PNG")
    r = client.post("/v1/classify", content=data, headers={"content-type": ctype})
    assert r.status_code == 200, r.text
    assert_answer(r.json())


@pytest.mark.parametrize("field", ["file", "image"])
def test_classify_multipart(client, field):
    r = client.post("/v1/classify", files={field: ("panel-7.png", synth_png(7), "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert_answer(body)
    assert body["id"] == "panel-7.png"


def test_classify_json_base64(client):
    r = client.post("/v1/classify", json={"image": b64(synth_png(1)), "id": "x1"})
    assert r.status_code == 200, r.text
    assert r.json()["id"] == "x1"


def test_same_image_same_answer_every_way(client):
    data = synth_png(5)
    raw = client.post("/v1/classify", content=data, headers=PNG).json()
    form = client.post("/v1/classify", files={"file": ("a.png", data, "image/png")}).json()
    batch = client.post("/v1/classify/batch", json={"images": [b64(data)]}).json()["results"][0]
    form.pop("id")
    assert raw == form == batch


def test_batch_multipart_keeps_order_and_ids(client):
    files = [("files", (f"img-{i}.png", synth_png(i), "image/png")) for i in range(5)]
    r = client.post("/v1/classify/batch", files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == "adc-test@1"
    assert [x["id"] for x in body["results"]] == [f"img-{i}.png" for i in range(5)]
    singles = [
        client.post("/v1/classify", content=synth_png(i), headers=PNG).json() for i in range(5)
    ]
    for one, row in zip(singles, body["results"]):
        assert row["class"] == one["class"]
        assert row["confidence"] == pytest.approx(one["confidence"], rel=1e-5)


def test_batch_json_mixed_items(client):
    images = [b64(synth_png(0)), {"id": "b", "data": b64(synth_png(1))}]
    r = client.post("/v1/classify/batch", json={"images": images})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert "id" not in results[0] and results[1]["id"] == "b"


def test_batch_larger_than_max_batch_size_is_chunked(models):
    calls: list[int] = []

    async def runner(model, x):
        calls.append(len(x))
        return model.forward(x)

    svc = AdcService(runner=runner, chunk=lambda: 4)
    svc.reconfigure({"model_uri": models["v1"][0]})
    with TestClient(build_api(svc)) as c:
        r = c.post("/v1/classify/batch", json={"images": [b64(synth_png(i)) for i in range(10)]})
    assert r.status_code == 200 and len(r.json()["results"]) == 10
    assert calls == [4, 4, 2]


def test_rgb_and_grey_give_same_answer(client):
    grey = synth_pixels(2)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    a = client.post("/v1/classify", content=encode(grey), headers=PNG).json()
    b = client.post("/v1/classify", content=encode(rgb), headers=PNG).json()
    assert a["class"] == b["class"]
    assert a["confidence"] == pytest.approx(b["confidence"], rel=1e-4)


# --- bad input: always 4xx JSON that says what was wrong and what is allowed -----------------


def test_empty_body(client):
    assert_error(client.post("/v1/classify", content=b"", headers=PNG), 400, "empty")


def test_not_an_image(client):
    r = client.post("/v1/classify", content=b"GIF89a nonsense" * 10, headers=PNG)
    body = assert_error(r, 400, "not a readable image")
    assert "PNG" in body["allowed"]


def test_unsupported_content_type(client):
    r = client.post("/v1/classify", content=b"hello", headers={"content-type": "text/plain"})
    body = assert_error(r, 415, "text/plain")
    assert "image/png" in body["allowed"]
    r = client.post("/v1/classify/batch", content=synth_png(1), headers=PNG)
    assert_error(r, 415, "multipart/form-data")


def test_image_too_large(client, service):
    service.reconfigure({**service.config.model_dump(), "max_image_bytes": 1024})
    data = synth_png(1)
    assert len(data) > 1024
    body = assert_error(client.post("/v1/classify", content=data, headers=PNG), 413, "1024")
    assert "allowed" in body
    r = client.post("/v1/classify/batch", files=[("f", ("big.png", data, "image/png"))])
    assert_error(r, 413, "big.png")
    r = client.post("/v1/classify/batch", json={"images": [b64(data)]})
    assert_error(r, 413, "max_image_bytes")


def test_streamed_body_without_length_is_capped(client, service):
    service.reconfigure({**service.config.model_dump(), "max_image_bytes": 1024})

    def chunks():
        for _ in range(10):
            yield b"\0" * 512

    r = client.post("/v1/classify", content=chunks(), headers=PNG)
    assert_error(r, 413, "1024")


def test_too_many_images(client, service):
    service.reconfigure({**service.config.model_dump(), "max_images_per_request": 2})
    files = [("files", (f"{i}.png", synth_png(i), "image/png")) for i in range(3)]
    body = assert_error(client.post("/v1/classify/batch", files=files), 413, "3 images")
    assert "at most 2" in body["allowed"]
    r = client.post("/v1/classify/batch", json={"images": [b64(synth_png(0))] * 3})
    assert_error(r, 413, "max_images_per_request")
    r = client.post("/v1/classify/batch", json={"images": []})
    assert_error(r, 400, "no image")


@pytest.mark.parametrize("side", [8, 100])
def test_image_side_out_of_range(client, service, side):
    service.reconfigure({**service.config.model_dump(), "min_side": 16, "max_side": 64})
    data = encode(np.full((side, side), 128, np.uint8))
    r = client.post("/v1/classify", content=data, headers=PNG)
    body = assert_error(r, 400, f"{side}x{side}")
    assert body["allowed"] == "width and height from 16 to 64 pixels"


def _png_claiming(side: int) -> bytes:
    """A 16 x 16 PNG whose header says side x side (the pixel data is never reached)."""
    png = bytearray(encode(np.zeros((16, 16), np.uint8)))
    png[16:24] = side.to_bytes(4, "big") * 2  # IHDR width, height
    png[29:33] = (zlib.crc32(bytes(png[12:29])) & 0xFFFFFFFF).to_bytes(4, "big")
    return bytes(png)


@pytest.mark.parametrize(
    "side, words", [(6000, ["6000x6000", "4096"]), (20000, ["too large", "4096"])]
)
def test_huge_image_refused_from_its_header(client, side, words):
    """Refused from the header, before a bitmap of side x side is allocated."""
    r = client.post("/v1/classify", content=_png_claiming(side), headers=PNG)
    assert_error(r, 400, *words)


def test_bad_multipart_and_json(client):
    r = client.post("/v1/classify", files={"other": ("a.png", synth_png(1), "image/png")})
    assert_error(r, 400, "other", '"file" or "image"')
    r = client.post(
        "/v1/classify", content=b"--x\r\n", headers={"content-type": "multipart/form-data"}
    )
    assert r.status_code == 400 and "error" in r.json()
    json_type = {"content-type": "application/json"}
    r = client.post("/v1/classify/batch", content=b"{not json", headers=json_type)
    assert_error(r, 400, "not valid JSON")
    assert_error(client.post("/v1/classify/batch", json={"imgs": []}), 400, '"images"')
    assert_error(client.post("/v1/classify/batch", json={"images": ["%%%"]}), 400, "base64")
    assert_error(client.post("/v1/classify/batch", json={"images": [3]}), 400, "not a string")


def test_no_model_answers_503(models):
    svc = AdcService()
    with TestClient(build_api(svc)) as c:
        for method, path in [
            ("GET", "/healthz"),
            ("GET", "/v1/model"),
            ("POST", "/v1/classify"),
            ("POST", "/v1/classify/batch"),
            ("GET", "/v2/health/ready"),
            ("GET", "/v2/models/adc/ready"),
            ("POST", "/v2/models/adc/infer"),
        ]:
            r = c.request(method, path, content=synth_png(1), headers=PNG)
            assert r.status_code == 503, (path, r.text)
        assert "model_uri" in c.get("/healthz").json()["hint"]
        assert c.get("/v2/health/live").json() == {"live": True}


def test_unknown_route_is_json_404(client):
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"] == "HTTPError"


# --- model metadata and health ---------------------------------------------------------------


def test_model_and_health(client, models):
    info = client.get("/v1/model").json()
    assert info["model_version"] == "adc-test@1"
    assert info["name"] == "adc-test" and info["version"] == "1"
    assert len(info["classes"]) == 6 and info["input"]["size"] == 64
    assert set(info["thresholds"]) == set(info["classes"])
    assert info["metrics"] == {"val_accuracy": 0.0} and info["lineage"]["seed"] == 1
    assert info["sha256"] == models["v1"][1].sha256
    assert client.get("/healthz").json() == {"status": "ok", "model_version": "adc-test@1"}


# --- Open Inference Protocol ------------------------------------------------------------------


def test_oip_health_and_metadata(client):
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2/models/adc/ready").json() == {"name": "adc", "ready": True}
    assert client.get("/v2").json()["name"] == "adcp"
    meta = client.get("/v2/models/adc").json()
    assert meta["name"] == "adc" and meta["versions"] == ["adc-test@1"]
    assert meta["platform"] == "pytorch_torchexport"
    assert meta["inputs"][0] == {"name": "image", "datatype": "BYTES", "shape": [-1]}
    assert {o["name"] for o in meta["outputs"]} == set(oip.OUTPUTS)
    assert client.get("/v2/models/adc/versions/adc-test@1").status_code == 200
    r = client.get("/v2/models/other")
    assert r.status_code == 404 and isinstance(r.json()["error"], str)
    assert "other" in r.json()["error"]
    assert client.get("/v2/models/adc/versions/9/ready").status_code == 503


def _bytes_request(n: int, **extra) -> dict:
    data = [b64(synth_png(i)) for i in range(n)]
    return {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [n], "data": data}], **extra}


def test_oip_infer_bytes(client):
    r = client.post("/v2/models/adc/infer", json=_bytes_request(3, id="req-1"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "req-1" and body["model_name"] == "adc"
    assert body["model_version"] == "adc-test@1"
    out = {o["name"]: o for o in body["outputs"]}
    assert set(out) == {"label", "confidence", "decision", "probabilities"}
    assert out["label"]["datatype"] == "BYTES" and out["label"]["shape"] == [3]
    assert out["confidence"]["datatype"] == "FP32" and len(out["confidence"]["data"]) == 3
    assert out["decision"]["shape"] == [3]
    assert out["probabilities"]["shape"] == [3, 6] and len(out["probabilities"]["data"]) == 18
    probs = np.array(out["probabilities"]["data"]).reshape(3, 6)
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert np.allclose(probs.max(axis=1), out["confidence"]["data"])
    single = client.post("/v1/classify", content=synth_png(1), headers=PNG).json()
    assert out["label"]["data"][1] == single["class"]


def test_oip_infer_raw_pixels_match_png(client):
    px = np.stack([synth_pixels(i) for i in range(2)])  # (2, 64, 64) uint8
    flat = {
        "inputs": [
            {
                "name": "pixels",
                "datatype": "UINT8",
                "shape": list(px.shape),
                "data": px.ravel().tolist(),
            }
        ]
    }
    rgb = np.repeat(px[..., None], 3, axis=3).astype(np.float32)
    nested = {
        "inputs": [
            {"name": "pixels", "datatype": "FP32", "shape": list(rgb.shape), "data": rgb.tolist()}
        ],
        "outputs": [{"name": "probabilities"}],
    }
    a = client.post("/v2/models/adc/infer", json=flat)
    b = client.post("/v2/models/adc/infer", json=nested)
    c = client.post("/v2/models/adc/infer", json=_bytes_request(2))
    assert a.status_code == b.status_code == c.status_code == 200, (a.text, b.text)
    pa = {o["name"]: o for o in a.json()["outputs"]}["probabilities"]["data"]
    (pb,) = [o["data"] for o in b.json()["outputs"]]
    pc = {o["name"]: o for o in c.json()["outputs"]}["probabilities"]["data"]
    assert np.allclose(pa, pc, atol=1e-6) and np.allclose(pa, pb, atol=1e-4)
    assert [o["name"] for o in b.json()["outputs"]] == ["probabilities"]


@pytest.mark.parametrize(
    "tensor, words",
    [
        ({"datatype": "INT8", "shape": [1, 16, 16], "data": [0] * 256}, ["INT8", "BYTES"]),
        ({"datatype": "UINT8", "shape": [1, 256], "data": [0] * 256}, ["[1, 256]"]),
        ({"datatype": "UINT8", "shape": [1, 16, 16, 2], "data": [0] * 512}, ["[1, 16, 16, 2]"]),
        ({"datatype": "UINT8", "shape": [1, 16, 16], "data": [0] * 255}, ["256 elements", "255"]),
        ({"datatype": "UINT8", "shape": [1, 16, 16], "data": [300] * 256}, ["0 to 255"]),
        ({"datatype": "FP32", "shape": [1, 16, 16], "data": ["a"] * 256}, ["not FP32"]),
        ({"datatype": "UINT8", "shape": [1, 8, 8], "data": [0] * 64}, ["8x8", "16 to 4096"]),
        ({"datatype": "BYTES", "shape": [2], "data": ["AAAA"]}, ["1 elements"]),
        ({"datatype": "BYTES", "shape": [1], "data": ["not base64!"]}, ["base64"]),
        ({"datatype": "BYTES", "shape": [1], "data": [b64(b"not an image")]}, ["readable image"]),
        ({"datatype": "BYTES", "shape": [1, 2], "data": ["AAAA", "AAAA"]}, ["shape [N]"]),
        ({"datatype": "UINT8", "shape": "1,16,16", "data": []}, ["shape"]),
        ({"datatype": "UINT8", "shape": [1, 16, 16]}, ["no `data`"]),
    ],
)
def test_oip_bad_tensors(client, tensor, words):
    r = client.post("/v2/models/adc/infer", json={"inputs": [{"name": "x", **tensor}]})
    body = assert_error(r, 400, *words)
    assert isinstance(body["error"], str) and body["error_type"] == "InputError"


def test_oip_bad_requests(client, service):
    two = {"inputs": [{"name": "a"}, {"name": "b"}]}
    assert_error(client.post("/v2/models/adc/infer", json=two), 400, "2 \"inputs\"")
    assert_error(client.post("/v2/models/adc/infer", json=[1]), 400, "JSON object")
    bad_out = _bytes_request(1, outputs=[{"name": "logits"}])
    assert_error(client.post("/v2/models/adc/infer", json=bad_out), 400, "logits")
    octet = {"content-type": "application/octet-stream"}
    r = client.post("/v2/models/adc/infer", content=b"x", headers=octet)
    assert_error(r, 415, "binary tensor")
    r = client.post("/v2/models/nope/infer", json=_bytes_request(1))
    assert_error(r, 404, "nope")
    service.reconfigure({**service.config.model_dump(), "max_images_per_request": 2})
    assert_error(client.post("/v2/models/adc/infer", json=_bytes_request(3)), 413, "3 images")


# --- decisions -------------------------------------------------------------------------------


def _meta(**thresholds: float) -> ModelMetadata:
    classes = ["particle", "scratch", "false_defect"]
    return ModelMetadata(
        name="m",
        version="1",
        classes=classes,
        no_defect_classes=["false_defect"],
        input=input_spec(64),
        thresholds={c: thresholds.get(c, 0.5) for c in classes},
        created_at="2026-01-01T00:00:00+00:00",
        sha256="0" * 64,
    )


def test_decisions_follow_thresholds():
    probs = np.array(
        [
            [0.90, 0.05, 0.05],  # particle above 0.8 -> defect
            [0.70, 0.20, 0.10],  # particle below 0.8 -> review
            [0.05, 0.05, 0.90],  # false_defect above 0.5 -> false_defect
            [0.30, 0.30, 0.40],  # false_defect below 0.5 -> review
        ],
        dtype=np.float32,
    )
    rows = answers(probs, _meta(particle=0.8), ids=["a", None, "c", None])
    assert [r["decision"] for r in rows] == ["defect", "review", "false_defect", "review"]
    assert [r["class"] for r in rows] == ["particle", "particle", "false_defect", "false_defect"]
    assert rows[0]["id"] == "a" and "id" not in rows[1]
    assert [t["class"] for t in rows[1]["top3"]] == ["particle", "scratch", "false_defect"]
    assert rows[0]["model_version"] == "m@1"
    # A class missing from thresholds is auto-decided only at a confidence of 1.0.
    meta = _meta()
    meta.thresholds.pop("scratch")
    assert answers(np.array([[0.005, 0.99, 0.005]]), meta)[0]["decision"] == "review"


# --- model loading and swapping --------------------------------------------------------------


def test_load_verifies_sha256(models, tmp_path):
    src = Path(models["v1"][0])
    dst = tmp_path / "tampered"
    shutil.copytree(src, dst)
    blob = bytearray((dst / "model.pt2").read_bytes())
    blob[-100] ^= 0xFF
    (dst / "model.pt2").write_bytes(bytes(blob))
    with pytest.raises(IntegrityError) as e:
        load_model(str(dst))
    assert "sha256" in str(e.value) and models["v1"][1].sha256 in str(e.value)
    assert "copy or export it again" in str(e.value)


def test_load_missing(tmp_path, models):
    with pytest.raises(NotFoundError, match="metadata.json is missing"):
        load_model(str(tmp_path / "nothing"))
    shutil.copytree(models["v1"][0], tmp_path / "nomodel")
    (tmp_path / "nomodel" / "model.pt2").unlink()
    with pytest.raises(NotFoundError, match="model.pt2"):
        load_model(str(tmp_path / "nomodel"))


def test_load_over_fsspec_memory(models):
    import fsspec

    fs = fsspec.filesystem("memory")
    for name in ("model.pt2", "metadata.json"):
        fs.pipe(f"/adc-unit/{name}", (Path(models["v1"][0]) / name).read_bytes())
    try:
        assert load_model("memory://adc-unit").model_id == "adc-test@1"
    finally:
        fs.rm("/adc-unit", recursive=True)


def test_failed_reconfigure_keeps_serving_the_old_model(service, client, tmp_path):
    before, config = service.model, service.config
    cfg = service.reconfigure({"model_uri": str(tmp_path / "missing"), "max_batch_size": 4})
    assert cfg == config and service.model is before and service.config.max_batch_size == 64
    err = service.reconfigure_error
    assert err["error"] == "NotFoundError" and err["model_uri"] == str(tmp_path / "missing")
    assert err["serving"] == "adc-test@1"
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "degraded"
    assert client.get("/v1/model").json()["reconfigure_error"]["error"] == "NotFoundError"
    assert client.post("/v1/classify", content=synth_png(1), headers=PNG).status_code == 200
    # An invalid config is kept out the same way, and a good one clears the error.
    service.reconfigure({"model_uri": before.uri, "max_batch_sise": 8})
    assert service.reconfigure_error["error"] == "ValidationError"
    service.reconfigure({"model_uri": before.uri, "max_batch_size": 8})
    assert service.reconfigure_error is None and service.config.max_batch_size == 8
    assert client.get("/healthz").json() == {"status": "ok", "model_version": "adc-test@1"}


def test_failed_first_load_raises(tmp_path):
    with pytest.raises(NotFoundError):
        AdcService().reconfigure({"model_uri": str(tmp_path / "missing")})
    with pytest.raises(ValidationError):
        AdcService().reconfigure({"max_batch_sise": 8})
    with pytest.raises(ModelUnavailableError):
        AdcService().require_model()


def test_reconfigure_same_uri_keeps_loaded_model(service):
    before = service.model
    service.reconfigure({"model_uri": before.uri, "max_batch_size": 8})
    assert service.model is before and service.config.max_batch_size == 8
    service.reconfigure({})
    assert service.model is None


def test_swap_under_concurrent_load_fails_nothing(service, models):
    """Requests keep flowing while v2 loads and swaps in: none fails, answers move to v2."""
    app = build_api(service)
    seen: list[str] = []
    failures: list[str] = []
    swapped = threading.Event()

    async def worker(client: httpx.AsyncClient, i: int) -> None:
        after_swap = 0
        while after_swap < 5:
            r = await client.post("/v1/classify", content=synth_png(i), headers=PNG)
            if r.status_code != 200:
                failures.append(r.text)
                return
            seen.append(r.json()["model_version"])
            if swapped.is_set():
                after_swap += 1

    async def main() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            tasks = [asyncio.create_task(worker(client, i)) for i in range(8)]
            while len(seen) < 20:  # load is flowing before the swap starts
                await asyncio.sleep(0.01)
            await asyncio.to_thread(service.reconfigure, {"model_uri": models["v2"][0]})
            swapped.set()
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=120)

    asyncio.run(main())
    assert failures == []
    assert seen[0] == "adc-test@1" and seen[-1] == "adc-test@2"
    first_v2 = seen.index("adc-test@2")
    assert seen[first_v2:].count("adc-test@1") <= 8  # at most the requests in flight at the swap


# --- small pieces ----------------------------------------------------------------------------


def test_torch_threads(monkeypatch):
    monkeypatch.delenv("ADCP_SERVE_TORCH_THREADS", raising=False)
    assert torch_threads(None) == 1
    assert torch_threads(0.5) == 1
    assert torch_threads(1.0) == 1
    assert torch_threads(10_000) >= 1
    monkeypatch.setenv("ADCP_SERVE_TORCH_THREADS", "3")
    assert torch_threads(1) == 3


def test_forward_jobs_groups_by_model(models):
    from serve_apps.adc import _forward_jobs, _Job, _job_sizes

    m1, m2 = load_model(models["v1"][0]), load_model(models["v2"][0])
    x = np.random.default_rng(0).normal(size=(5, 1, 64, 64)).astype(np.float32)
    jobs = [_Job(m1, x[:2]), _Job(m2, x[2:3]), _Job(m1, x[3:])]
    out = _forward_jobs(jobs)
    assert _job_sizes(jobs) == 5
    assert [len(o) for o in out] == [2, 1, 2]
    assert np.allclose(out[0], m1.forward(x[:2]), atol=1e-6)
    assert np.allclose(out[1], m2.forward(x[2:3]), atol=1e-6)
    assert np.allclose(out[2], m1.forward(x[3:]), atol=1e-6)


def test_build_app_args():
    from ray.serve import Application

    from serve_apps.adc import build_app

    app = build_app({"model_uri": "file:///m", "num_replicas": "2", "max_batch_size": "32"})
    assert isinstance(app, Application)
    with pytest.raises(ValidationError):
        build_app({"num_replica": 2})
    with pytest.raises(ValidationError):
        build_app({"user_config": {"max_batch_size": 0}})


def test_user_config_defaults_are_valid():
    cfg = ServeUserConfig()
    assert cfg.model_uri is None and cfg.max_batch_size >= 1
