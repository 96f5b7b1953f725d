"""Recording for review in the real Serve app: a replica whose environment names a review DB and a
site store (as the site's Serve config sets it) queues its decisions with the request's metadata,
and a replica whose review DB is unusable still answers every request."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import httpx
import pytest

from serve_apps.review_db import ReviewDB
from tests.serve_fixtures import export_tiny_model, free_port, synth_png
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def serve_url():
    import ray
    from ray import serve

    root = Path(tempfile.mkdtemp(prefix="adcpr-", dir="/tmp"))  # short: Ray's socket paths
    port = free_port()
    try:
        ray.init(address="local", num_cpus=4, object_store_memory=200 * 1024**2, include_dashboard=False,
                 _temp_dir=str(root / "ray"))
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield root, f"http://127.0.0.1:{port}"
    finally:
        try:
            if ray.is_initialized():
                serve.shutdown()
        finally:
            ray.shutdown()
            shutil.rmtree(root, ignore_errors=True)


def deploy(model_uri: str, env: dict[str, str], **user) -> None:
    from ray import serve

    from serve_apps.adc import ADCDeployment

    app = ADCDeployment.options(
        user_config={"model_uri": model_uri, "max_batch_size": 8, **user},
        ray_actor_options={"num_cpus": 1, "runtime_env": {"env_vars": env}},
    ).bind()
    serve.run(app, name="adc", route_prefix="/")


def test_a_replica_records_with_metadata_and_survives_a_broken_db(serve_url):
    root, url = serve_url
    model = export_tiny_model(root / "model", "1", seed=1)[0]
    store = root / "site-store"
    db_url = f"sqlite:///{root}/review.db"
    deploy(model, {"ADCP_REVIEW_DB_URL": db_url, "ADCP_SITE_STORE": str(store), "ADCP_SITE": "fab-a"},
           audit_rate=1.0)
    headers = {"content-type": "image/png", "X-ADC-Product": "p1", "X-ADC-AOI-Machine": "aoi-7"}
    for i in range(3):
        r = httpx.post(f"{url}/v1/classify", content=synth_png(i), headers={**headers, "X-ADC-Panel-Id": f"P{i}"},
                       timeout=60)
        assert r.status_code == 200, r.text
    db = ReviewDB(db_url)
    try:
        items = wait_for(lambda: len(db.items()) == 3 and db.items(), 60, "3 recorded items")
        assert {it["panel_id"] for it in items} == {"P0", "P1", "P2"}
        assert {(it["site"], it["product"], it["aoi_machine"], it["why"], it["model_version"]) for it in items} == {
            ("fab-a", "p1", "aoi-7", "audit", "adc-test@1")}
        for it in items:
            assert Path(it["image_uri"].removeprefix("file://")).is_file()
        wait_for(lambda: db.stats() and db.stats()[0]["classified"] == 3, 60, "3 decisions counted")
    finally:
        db.close()

    (root / "a-file").write_text("not a folder")
    deploy(model, {"ADCP_REVIEW_DB_URL": f"sqlite:///{root}/a-file/review.db", "ADCP_SITE_STORE": str(store),
                   "ADCP_SITE": "fab-a"}, audit_rate=1.0)
    for i in range(3):
        r = httpx.post(f"{url}/v1/classify", content=synth_png(10 + i), headers=headers, timeout=60)
        assert r.status_code == 200 and r.json()["model_version"] == "adc-test@1", r.text
