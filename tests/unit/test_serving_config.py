"""The Serve config of a site holds both apps (ADC and review station) with the site's environment
(issue 12, contract §3 and §4), as data: no Ray, no Serve."""

from __future__ import annotations

import json

import pytest

from configs import site_env as names
from configs.errors import ConfigError
from configs.models import ServeConfig, ServeUserConfig
from configs.platform import DEFAULT_CLASS_NAMES, load_platform
from coordinator.center.core import Center
from coordinator.center.local_sites import review_db_url
from coordinator.jobs import serving


@pytest.fixture
def center(tmp_path):
    c = Center(load_platform(home=tmp_path), tmp_path)
    yield c
    c.close()


def test_serve_config_holds_the_adc_app_and_the_review_station():
    env = {"OMP_NUM_THREADS": "1", names.SITE: "fab-a"}
    cfg = serving.serve_config(ServeConfig(), working_dir="file:///code.zip", http_port=8000, env=env)
    adc, review = cfg["applications"]
    assert (adc["name"], adc["route_prefix"], adc["import_path"]) == ("adc", "/", "serve_apps.adc:app")
    assert (review["name"], review["route_prefix"], review["import_path"]) == (
        "review", "/review", "serve_apps.review:app")
    assert review["runtime_env"] == adc["runtime_env"] == {"working_dir": "file:///code.zip", "env_vars": env}
    assert review["runtime_env"] is not adc["runtime_env"]  # one app's env edited never changes the other's
    assert adc["deployments"][0]["name"] == serving.DEPLOYMENT and "deployments" not in review


def test_the_adc_app_cannot_take_the_review_route():
    with pytest.raises(ConfigError, match="/review"):
        serving.serve_config(ServeConfig(route_prefix="/review"), working_dir="file:///c.zip", http_port=1)


def test_site_env_of_a_local_site(center, tmp_path):
    env = serving.site_env(center, "fab-a")
    assert env[names.SITE] == "fab-a"
    assert env[names.SITE_STORE] == (tmp_path / "sites" / "fab-a" / "store").as_uri()
    assert names.SITE_STORE_OPTIONS not in env  # a local folder needs no options
    assert env[names.REVIEW_DB_URL] == f"sqlite:///{tmp_path / 'sites' / 'fab-a' / 'review.db'}"
    assert (tmp_path / "sites" / "fab-a").is_dir()  # SQLite can create the file there
    assert env[names.REVIEW_LEASE_S] == "300"
    shown = json.loads(env[names.DISPLAY_NAMES])
    assert shown == {"site": "北京一厂", "products": {}, "classes": DEFAULT_CLASS_NAMES}
    assert serving.site_env(center, "fab-a") == env  # the same each rollout: replicas are not restarted
    if hasattr(center, "station_keys"):
        assert env[names.CENTER_PUBLIC_KEY] == center.station_keys.public_pem()
        assert "PUBLIC KEY" in env[names.CENTER_PUBLIC_KEY]


def test_center_url_from_the_platform_file_or_the_running_coordinator(center, tmp_path):
    assert names.CENTER_URL not in serving.site_env(center, "fab-b")  # no coordinator recorded
    (tmp_path / "coordinator").mkdir(exist_ok=True)
    (tmp_path / "coordinator" / "server.json").write_text(json.dumps({"url": "http://0.0.0.0:8765"}))
    assert serving.site_env(center, "fab-b")[names.CENTER_URL] == "http://127.0.0.1:8765"
    center.config.center.api.public_url = "https://adcp.example.com"
    assert serving.center_url(center) == "https://adcp.example.com"


def test_review_db_url_given_in_the_config_wins_and_remote_sites_without_one_record_nothing(tmp_path):
    platform = load_platform(home=tmp_path)
    site = platform.sites[0].model_copy(update={"review": platform.sites[0].review.model_copy(
        update={"db_url": "postgresql+psycopg://adcp@db/review"})})
    assert review_db_url(tmp_path, site) == "postgresql+psycopg://adcp@db/review"
    remote = platform.sites[1].model_copy(update={"runtime": None})
    assert review_db_url(tmp_path, remote) is None


def test_site_store_options_and_env_are_strings(tmp_path):
    platform = load_platform(home=tmp_path)
    site = platform.sites[0].model_copy(update={"store": platform.sites[0].store.model_copy(
        update={"url": "s3://bucket/fab-a", "options": {"anon": False, "endpoint_url": "http://minio:9000"}})})
    env = names.site_env(site, platform.display_names, db_url="sqlite:////x/review.db",
                         public_key="PEM", center_url="http://c:1/")
    assert env[names.SITE_STORE] == "s3://bucket/fab-a"
    assert json.loads(env[names.SITE_STORE_OPTIONS]) == {"anon": False, "endpoint_url": "http://minio:9000"}
    assert env[names.CENTER_URL] == "http://c:1" and env[names.CENTER_PUBLIC_KEY] == "PEM"
    assert all(isinstance(v, str) for v in env.values())


@pytest.mark.skipif("audit_rate" not in ServeUserConfig.model_fields, reason="ServeUserConfig.audit_rate not there yet")
def test_the_adc_app_audits_at_the_site_rate(tmp_path):
    platform = load_platform(home=tmp_path)
    site = platform.sites[0].model_copy(update={"review": platform.sites[0].review.model_copy(
        update={"audit_rate": 0.25})})
    cfg = serving.site_user_config(ServeConfig(), site)
    out = serving.serve_config(cfg, working_dir="file:///c.zip", http_port=1)
    assert out["applications"][0]["deployments"][0]["user_config"]["audit_rate"] == 0.25
