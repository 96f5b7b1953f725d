"""The multi-site flows a second time, through the `karmada` site gateway: every site call goes to a
local stand-in of the Karmada apiserver's aggregated cluster proxy (HTTPS, bearer token, the exact
`/apis/cluster.karmada.io/v1alpha1/clusters/<c>/proxy/api/v1/namespaces/<ns>/services/<svc>/proxy/`
shape), which forwards to two real local Ray sites. Status, the monitor's sweeps, `adcp logs`, a
pull-mode push (a Ray job at the site), training at a borrowed site, the rollout at the home site
and classification all go through it, which proves the URLs, the headers (apiserver token consumed, Ray token in
X-Ray-Authorization) and the TLS settings taken from the kubeconfig."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import yaml

from configs.platform import SiteConfig
from coordinator import process as server
from coordinator.center.core import Center
from coordinator.cli.main import main
from coordinator.process import read_token
from coordinator.state.jobs import JobRecords
from karmada.gateway import KarmadaSiteGateway, forget_credentials
from raycluster.gateway import gateway_for, site_status
from raycluster.local import read_state
from tests.karmada_proxy import karmada_proxy
from tests.platform_fixtures import run_cli
from tests.serve_fixtures import synth_png
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

CLUSTERS = {"member-fab-a": "fab-a", "member-fab-b": "fab-b"}
HOME: list[Path] = []
PROXY: list = []


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    return run_cli(capsys, HOME[0], *args)


def _resolver(home: Path):
    def resolve(cluster: str, namespace: str, service: str) -> str | None:
        site = CLUSTERS[cluster]  # KeyError: the proxy answers 404 for unknown clusters
        state = read_state(site, home)
        if state is None or not state.is_running():
            return None  # the member cannot be dialed: 503
        urls = {"adc-head-svc:8265": state.dashboard_url, "adc-serve-serve-svc:8000": state.serve_url,
                "adc-head-svc:8080": state.metrics_url}
        if namespace != "ray-system" or service not in urls:
            return None
        return urls[service]

    return resolve


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    root = tmp_path_factory.mktemp("karmada")
    home = root / "home"
    home.mkdir()
    HOME[:] = [home]
    with karmada_proxy(_resolver(home), root) as proxy:
        PROXY[:] = [proxy]
        kubeconfig = proxy.kubeconfig(root / "karmada.kubeconfig")
        doc = {
            "center": {"state_db": "{home}/coordinator.db", "store": {"url": "{home}/store"}},
            "karmada": {"kubeconfig": str(kubeconfig), "context": "karmada-apiserver"},
            "sites": [
                {"name": "fab-a", "runtime": {"kind": "local", "num_cpus": 4, "object_store_mb": 300},
                 "store": {"url": "{home}/sites/fab-a/store"},
                 "gateway": {"kind": "karmada", "cluster": "member-fab-a"}},
                {"name": "fab-b", "runtime": {"kind": "local", "num_cpus": 4, "num_gpus": 2, "object_store_mb": 300},
                 "store": {"url": "{home}/sites/fab-b/store"}, "transfer": "pull",
                 "gateway": {"kind": "karmada", "cluster": "member-fab-b"}},
            ],
        }
        platform_file = root / "platform.yaml"
        platform_file.write_text(yaml.safe_dump(doc, sort_keys=False))
        try:
            assert main(["--home", str(home), "--platform", str(platform_file), "up"]) == 0
            yield home
        finally:
            main(["--home", str(home), "down"])
            forget_credentials()


def test_flows_through_the_karmada_proxy(platform, capsys, tmp_path):
    proxy = PROXY[0]

    def both_reachable():
        code, out, err = _cli(capsys, "status", "--json")
        assert code == 0, err
        sites = {s["name"]: s for s in json.loads(out)["sites"]}
        return sites if all(s["reachable"] for s in sites.values()) else None

    sites = wait_for(both_reachable, 90, "both sites reachable through the Karmada proxy")
    assert sites["fab-b"]["resources"]["total"]["GPU"] == 2 and sites["fab-a"]["resources"]["total"]["GPU"] == 0
    assert {s.cluster for s in proxy.seen} == set(CLUSTERS)

    # push: fab-a is written directly; fab-b is pull-mode, so a Ray job there (through the proxy) pulls
    assert _cli(capsys, "data", "synth", "--name", "aoi", "--images", "300")[0] == 0
    code, out, err = _cli(capsys, "push", "dataset/aoi@1", "--to", "fab-a,fab-b", "--json")
    assert code == 0, err
    directions = {r["site"]: r["direction"] for r in json.loads(out)}
    assert directions == {"fab-a": "push", "fab-b": "pull"}
    assert any(s.cluster == "member-fab-b" and s.method == "POST" and s.path.startswith("/api/jobs")
               for s in proxy.seen), "the pull job was not submitted through the proxy"

    # train for fab-a on fab-b, bring the model home and roll it out at fab-a: all through the proxy
    code, out, err = _cli(capsys, "train", "--for", "fab-a", "--on", "fab-b", "--dataset", "aoi@1",
                          "--epochs", "1", "--deploy", "--json")
    assert code == 0, err + out
    result = json.loads(out)
    assert result["status"] == "succeeded", result
    assert any(s.cluster == "member-fab-a" and s.method == "PUT" and s.path.startswith("/api/serve/applications")
               for s in proxy.seen), "the rollout did not go through the proxy"

    name, version = result["model"].split("/", 1)[-1].rsplit("@", 1)
    model_id = f"{name}@{version}"
    images = []
    for i in range(2):
        path = tmp_path / f"{i}.png"
        path.write_bytes(synth_png(i))
        images.append(str(path))
    code, out, err = _cli(capsys, "classify", "--site", "fab-a", *images, "--json")
    assert code == 0, err
    answers = json.loads(out)
    assert len(answers) == 2 and all(a["model_version"] == model_id for a in answers), (model_id, answers)
    assert any(s.cluster == "member-fab-a" and s.service == "adc-serve-serve-svc:8000"
               and s.path == "/v1/classify/batch" for s in proxy.seen)

    # what reached the sites: never the apiserver's token, always the site's Ray token
    for seen in proxy.seen:
        headers = {k.lower(): v for k, v in seen.forwarded_headers.items()}
        assert "authorization" not in headers
        if seen.service.endswith(":8265"):
            token = read_state(CLUSTERS[seen.cluster], platform).token
            assert headers.get("x-ray-authorization") == f"Bearer {token}", (seen.path, headers)
    assert all(s.status < 500 for s in proxy.seen if s.service.endswith(":8265")), \
        [(s.path, s.status) for s in proxy.seen if s.status >= 500]


def test_monitoring_logs_and_bad_credentials(platform, tmp_path, capsys):
    proxy = PROXY[0]
    # a Prometheus scrape of the site's Ray metrics, through the same proxy prefix
    before = len(proxy.seen)
    with Center.open(platform).gateway("fab-a").client("metrics") as client:
        scraped = client.get("/metrics")
    assert scraped.status_code == 200 and "ray_" in scraped.text
    assert any(s.service == "adc-head-svc:8080" and s.path == "/metrics" for s in proxy.seen[before:])

    # the coordinator's monitor sweeps both sites through the proxy too
    info = server.running(platform)
    auth = {"Authorization": f"Bearer {read_token(platform)}"}

    def both_ok():
        body = httpx.get(f"{info['url']}/api/v1/overview", headers=auth, timeout=10).json()
        sites = {s["name"]: s for s in body["sites"]}
        return sites if all(s["health"] == "ok" and s["latest"].get("mem_total") for s in sites.values()) else None

    sites = wait_for(both_ok, 60, "both sites ok in the monitor's overview")
    member_a = "/apis/cluster.karmada.io/v1alpha1/clusters/member-fab-a/"
    assert sites["fab-a"]["dashboard_url"].startswith(proxy.url + member_a)

    # a training run's Ray job log, read through the proxy (`adcp logs`)
    job = JobRecords(Center.open(platform).state).list(1)[0].model_dump(mode="json")
    submission = job["attempts"][-1]["submission_id"]
    code, out, err = run_cli(capsys, platform, "logs", "--site", job["attempts"][-1]["site"], "--job", submission)
    assert code == 0 and "epoch 1/1" in out, err

    bad = proxy.kubeconfig(tmp_path / "bad.kubeconfig", token="not-the-token")
    site = SiteConfig.model_validate({"name": "fab-x", "store": {"url": str(tmp_path / "s")},
                                      "gateway": {"kind": "karmada", "cluster": "member-fab-a",
                                                  "kubeconfig": str(bad)}})
    status = site_status(gateway_for(site))
    assert not status["reachable"] and "401" in status["error"], status

    good = proxy.kubeconfig(tmp_path / "good.kubeconfig")
    gone = SiteConfig.model_validate({"name": "fab-y", "store": {"url": str(tmp_path / "s")},
                                      "gateway": {"kind": "karmada", "cluster": "member-gone",
                                                  "kubeconfig": str(good)}})
    gw = gateway_for(gone)
    assert isinstance(gw, KarmadaSiteGateway)
    assert gw.base_url("dashboard") == (proxy.url + "/apis/cluster.karmada.io/v1alpha1/clusters/member-gone/proxy"
                                        "/api/v1/namespaces/ray-system/services/adc-head-svc:8265/proxy")
    status = site_status(gw)
    assert not status["reachable"] and "404" in status["error"], status
