"""Shadow at a real local site: `adcp model deploy` of a champion with a challenger as shadow
(through the coordinator's API), classification over the site's Serve endpoint, and the shadow
results read back from the site's review station (`GET /review/api/shadow`, center token).
Every answer a caller gets is the champion's."""

from __future__ import annotations

import json

import pytest

from configs.station_tokens import STATION_TOKEN_HEADER
from coordinator.center.core import Center
from tests.platform_fixtures import run_cli, running_platform
from tests.serve_fixtures import b64, export_tiny_model, synth_png, wait_for

pytestmark = pytest.mark.integration

N = 8


def test_a_shadow_challenger_never_answers_a_caller(tmp_path, capsys):
    home = tmp_path / "home"
    with running_platform(home, {"fab-a": {}}):
        for version, seed in (("1", 1), ("2", 2)):
            folder = tmp_path / f"adc-sh-{version}"
            export_tiny_model(folder, version, seed=seed, name="adc-sh")
            code, _, err = run_cli(capsys, home, "upload", str(folder), "--as", f"model/adc-sh@{version}")
            assert code == 0, err
        code, _, err = run_cli(capsys, home, "model", "deploy", "adc-sh@1", "--to", "fab-a", "--shadow-rate", "1")
        assert code != 0 and "--shadow-rate needs --shadow" in err
        code, out, err = run_cli(capsys, home, "model", "deploy", "adc-sh@1", "--to", "fab-a",
                                 "--shadow", "adc-sh@2", "--shadow-rate", "1.0", "--json")
        assert code == 0, err
        row = json.loads(out)[0]
        assert row["status"] == "serving" and row["shadow"] == "model/adc-sh@2" and not row.get("shadow_error")

        center = Center.open(home)
        with center.gateway("fab-a").client("serve", timeout_s=30) as serve:
            info = serve.get("/v1/model").raise_for_status().json()
            assert info["model_version"] == "adc-sh@1" and info["shadow"]["model_version"] == "adc-sh@2"
            images = [{"id": f"img-{i}", "data": b64(synth_png(i))} for i in range(N)]
            r = serve.post("/v1/classify/batch", json={"images": images, "product": "p1"})
            assert r.status_code == 200, r.text
            assert {a["model_version"] for a in r.json()["results"]} == {"adc-sh@1"}
            single = serve.post("/v1/classify", content=synth_png(N), headers={"content-type": "image/png"})
            assert single.json()["model_version"] == "adc-sh@1"

            headers = {STATION_TOKEN_HEADER: center.station_keys.center_token()}

            def shadowed():
                got = serve.get("/review/api/shadow", params={"model_version": "adc-sh@2"}, headers=headers)
                body = got.raise_for_status().json()
                return body if body["shadowed"] >= N + 1 else None

            stats = wait_for(shadowed, 60, "the shadow results at fab-a's review station")
        assert stats["challenger"] == "adc-sh@2" and stats["champion"] == "adc-sh@1"
        assert stats["shadowed"] == N + 1 and 0.0 <= stats["agreement"] <= 1.0
