"""The review station in the KubeRay and Karmada renders (issue 12): the RayService holds both Serve
apps, the containers carry the apps' environment, the review DB URL comes from a Secret through
secretKeyRef, and Karmada pins each site's Secret to that site's cluster only."""

from __future__ import annotations

import json

import yaml

from configs import site_env
from configs.platform import PlatformConfig
from karmada import policies, render
from raycluster import kuberay
from tests.crd_schema import errors


def platform() -> PlatformConfig:
    return PlatformConfig.model_validate({
        "center": {"store": {"url": "s3://center/store"}, "api": {"public_url": "https://adcp.example.com/"}},
        "display_names": {"products": {"p1": "55寸面板"}, "classes": {"mura": "色斑"}},
        "sites": [
            {"name": "fab-a", "display_name": "北京一厂", "store": {"url": "s3://a/store"},
             "runtime": {"kind": "kuberay", "workers": [{"name": "cpu", "replicas": 1}]},
             "gateway": {"kind": "karmada", "cluster": "member-a"}, "review": {"audit_rate": 0.1}},
            {"name": "fab-b", "store": {"url": "s3://b/store", "options": {"anon": True}},
             "runtime": {"kind": "kuberay"}, "gateway": {"kind": "karmada", "cluster": "member-b"},
             "review": {"db_secret": "fab-b-review-pg", "lease_s": 120}},
        ],
    })


def _containers(service: dict) -> list[dict]:
    spec = service["spec"]["rayClusterConfig"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def _env(container: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_the_rayservice_runs_both_apps_with_the_db_url_from_the_secret():
    rendered = render.render(platform(), "kuberay", model_uri="s3://a/store/model/m@1", center_public_key="PEM")
    for name, secret in (("fab-a", "adcp-review-db-fab-a"), ("fab-b", "fab-b-review-pg")):
        (service,) = rendered[f"{name}/rayservice.yaml"]
        assert errors(service) == []
        cfg = yaml.safe_load(service["spec"]["serveConfigV2"])
        adc, review = cfg["applications"]
        assert (adc["route_prefix"], adc["import_path"]) == ("/", "serve_apps.adc:app")
        assert (review["name"], review["route_prefix"], review["import_path"]) == (
            "review", "/review", "serve_apps.review:app")
        containers = _containers(service)
        assert len(containers) >= 2  # head and worker
        for c in containers:
            env = _env(c)
            assert env[site_env.REVIEW_DB_URL] == {"secretKeyRef": {"name": secret, "key": "url"}}
            assert env[site_env.SITE] == name
            assert env[site_env.SITE_STORE] == f"s3://{name[-1]}/store"
            assert env[site_env.CENTER_PUBLIC_KEY] == "PEM"
            assert env[site_env.CENTER_URL] == "https://adcp.example.com"
            assert set(json.loads(env[site_env.DISPLAY_NAMES])) == {"site", "products", "classes"}
    fab_a = _env(_containers(rendered["fab-a/rayservice.yaml"][0])[0])
    shown = json.loads(fab_a[site_env.DISPLAY_NAMES])
    assert shown["site"] == "北京一厂" and shown["products"] == {"p1": "55寸面板"}
    assert shown["classes"]["mura"] == "色斑" and shown["classes"]["scratch"] == "划伤"
    fab_b = _env(_containers(rendered["fab-b/rayservice.yaml"][0])[0])
    assert json.loads(fab_b[site_env.DISPLAY_NAMES])["site"] == "fab-b"
    assert json.loads(fab_b[site_env.SITE_STORE_OPTIONS]) == {"anon": True}
    assert fab_b[site_env.REVIEW_LEASE_S] == "120"
    # the jobs cluster does not run the stations: no DB URL there
    cluster_env = _env(rendered["fab-a/raycluster.yaml"][0]["spec"]["headGroupSpec"]["template"]["spec"]
                       ["containers"][0])
    assert site_env.REVIEW_DB_URL not in cluster_env


def test_no_plain_db_url_even_when_the_env_holds_one():
    site = platform().sites[0]
    env = site_env.site_env(site, platform().display_names, db_url="postgresql+psycopg://u:secret@db/r")
    service = kuberay.ray_service(site, env=env)
    for c in _containers(service):
        (entry,) = [e for e in c["env"] if e["name"] == site_env.REVIEW_DB_URL]
        assert "value" not in entry and "secret@" not in json.dumps(c)


def test_karmada_template_names_no_site_secret_and_each_site_gets_its_own():
    p = platform()
    own = render.render(p, "kuberay")
    rendered = render.render(p, "karmada")
    template = rendered["templates/rayservice.yaml"][0]
    for c in _containers(template):
        assert _env(c)[site_env.REVIEW_DB_URL]["secretKeyRef"]["name"] == render.TEMPLATE_DB_SECRET
    for site in p.sites:
        cluster = site.gateway.cluster
        op = next(o for o in rendered[f"policies/override-{site.name}.yaml"]
                  if o["spec"]["resourceSelectors"][0]["kind"] == "RayService")
        delivered = policies.apply_overrides(template, op, cluster)
        assert delivered["spec"] == own[f"{site.name}/rayservice.yaml"][0]["spec"]
        for c in _containers(delivered):
            assert _env(c)[site_env.REVIEW_DB_URL]["secretKeyRef"]["name"] == site.review_db_secret


def test_karmada_pins_each_sites_db_secret_to_its_cluster():
    p = platform()
    rendered = render.render(p, "karmada")
    pols = rendered["policies/review-db-secrets.yaml"]
    assert len(pols) == len(p.sites)
    for pol, site in zip(pols, p.sites):
        assert errors(pol) == []
        assert pol["spec"]["resourceSelectors"] == [
            {"apiVersion": "v1", "kind": "Secret", "name": site.review_db_secret, "namespace": p.karmada.namespace}]
        assert pol["spec"]["placement"]["clusterAffinity"] == {"clusterNames": [site.gateway.cluster]}
    scoped = PlatformConfig.model_validate({**p.model_dump(mode="json"), "karmada": {"cluster_scoped": True}})
    for pol in render.render(scoped, "karmada")["policies/review-db-secrets.yaml"]:
        assert pol["kind"] == "ClusterPropagationPolicy" and errors(pol) == []


def test_adcp_render_passes_the_center_public_key(tmp_path, capsys):
    from pathlib import Path

    from tests.platform_fixtures import run_cli

    example = Path(__file__).resolve().parents[2] / "configs" / "platform-karmada.yaml"
    key = tmp_path / "center.pem"
    key.write_text("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----\n")
    out = tmp_path / "deploy"
    code, _, err = run_cli(capsys, tmp_path / "home", "--platform", str(example), "render", "--target", "kuberay",
                           "--out", str(out), "--center-public-key", str(key))
    assert code == 0, err
    (service,) = yaml.safe_load_all((out / "fab-a" / "rayservice.yaml").read_text())
    env = _env(_containers(service)[0])
    assert env[site_env.CENTER_PUBLIC_KEY] == key.read_text()
    assert env[site_env.CENTER_URL] == "https://adcp.example.com"
    assert json.loads(env[site_env.DISPLAY_NAMES])["site"] == "北京一厂"
    assert env[site_env.REVIEW_DB_URL] == {"secretKeyRef": {"name": "adcp-review-db-fab-a", "key": "url"}}


def test_a_site_whose_platform_file_gives_the_db_url_gets_its_secret_rendered(tmp_path):
    cfg = platform()
    cfg.sites[0].review.db_url = "postgresql+psycopg://adc:pw@pg.fab-a/review"
    kube = render.render(cfg, "kuberay", model_uri="s3://a/store/model/m@1")
    (secret,) = kube["fab-a/review-db-secret.yaml"]
    assert secret["kind"] == "Secret" and secret["metadata"]["name"] == "adcp-review-db-fab-a"
    assert secret["metadata"]["namespace"] == "ray-system"
    assert secret["stringData"] == {"url": "postgresql+psycopg://adc:pw@pg.fab-a/review"}
    assert "fab-b/review-db-secret.yaml" not in kube  # no db_url: the operator creates fab-b's

    fed = render.render(cfg, "karmada", model_uri="s3://a/store/model/m@1")
    assert [s["metadata"]["name"] for s in fed["secrets/review-db-fab-a.yaml"]] == ["adcp-review-db-fab-a"]
    assert not any(k.startswith("secrets/review-db-fab-b") for k in fed)
    # the Secret's name is the one the site's policy propagates and its override points the RayService at
    selected = [r["name"] for p in fed["policies/review-db-secrets.yaml"]
                for r in p["spec"]["resourceSelectors"]]
    assert "adcp-review-db-fab-a" in selected
    for path in render.write(fed, tmp_path):
        assert path.stat().st_mode & 0o077 == 0  # credentials: readable by the owner only
    assert "postgresql+psycopg://adc:pw@" not in json.dumps(fed["templates/rayservice.yaml"])
