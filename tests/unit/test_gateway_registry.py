"""Site gateway kinds found through `raycluster.gateway`'s registry: kind -> factory, imported only
when a site of that kind is used, so a platform of direct sites never imports `karmada`."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from configs.errors import ConfigError
from configs.platform import SiteConfig
from raycluster import gateway
from raycluster.gateway import DirectGateway, SiteGateway, gateway_factory, gateway_for, register_gateway


class FakeGateway(SiteGateway):
    def __init__(self, site: str, options: dict) -> None:
        super().__init__(site)
        self.options = options

    def base_url(self, service):
        return f"fake://{self.site}/{service}"

    def headers(self, service):
        return {}


@pytest.fixture
def registry(monkeypatch):
    """A copy of the registry for one test, so a registered kind does not leak into others."""
    monkeypatch.setattr(gateway, "_registry", dict(gateway._registry))
    return gateway._registry


def test_a_third_kind_is_one_factory_and_one_registry_line(registry):
    def fake(site, *, local_urls=None, token="", **options):
        return FakeGateway(site.name, {"local_urls": local_urls, "token": token, **options})

    register_gateway("fake", fake)
    site = SimpleNamespace(name="fab-f", gateway=SimpleNamespace(kind="fake"))  # no config model for "fake"
    gw = gateway_for(site, token="t", karmada=None)
    assert isinstance(gw, FakeGateway)
    assert gw.url("dashboard", "/api/jobs/") == "fake://fab-f/dashboard/api/jobs/"
    assert gw.options == {"local_urls": None, "token": "t", "karmada": None}
    assert "fake" in gateway.gateway_kinds()
    with pytest.raises(ValueError, match="already registered"):
        register_gateway("fake", fake)


def test_a_kind_named_by_import_path_is_imported_on_first_use(registry):
    register_gateway("fake-lazy", f"{__name__}:_lazy_factory")
    assert registry["fake-lazy"] == f"{__name__}:_lazy_factory"
    assert gateway_factory("fake-lazy") is _lazy_factory
    assert registry["fake-lazy"] is _lazy_factory  # resolved once


def _lazy_factory(site, **_):
    return FakeGateway(site.name, {})


def test_a_missing_module_names_the_kind_and_module(registry):
    register_gateway("broken", "no_such_gateway_module:factory")
    with pytest.raises(ImportError, match="broken site gateway needs no_such_gateway_module"):
        gateway_factory("broken")


def test_an_unknown_kind_lists_the_kinds_there_are():
    with pytest.raises(ConfigError, match="direct, karmada"):
        gateway_factory("carrier-pigeon")


def test_the_karmada_kind_is_karmadas_factory():
    from karmada.gateway import karmada_gateway

    assert gateway_factory("karmada") is karmada_gateway


def test_direct_factory_ignores_other_kinds_options():
    site = SiteConfig.model_validate({"name": "fab-c", "store": {"url": "/s"},
                                      "gateway": {"dashboard": "http://fab-c:8265"}})
    gw = gateway_for(site, local_urls={"serve": "http://127.0.0.1:9000"}, karmada=object())
    assert isinstance(gw, DirectGateway)
    assert gw.urls == {"dashboard": "http://fab-c:8265", "serve": "http://127.0.0.1:9000"}


def test_a_direct_platform_never_imports_karmada(tmp_path):
    """The coordinator's modules, a direct site's gateway and its status: no `karmada` module loaded."""
    code = """
import json, sys
import coordinator.center.core, coordinator.monitoring.monitor, coordinator.jobs.planner
from configs.platform import SiteConfig
from raycluster.gateway import gateway_for, site_status
site = SiteConfig.model_validate({"name": "fab-d", "store": {"url": "/s"},
                                  "gateway": {"dashboard": "http://127.0.0.1:9"}})
status = site_status(gateway_for(site), timeout_s=0.5)
print(json.dumps({"reachable": status["reachable"],
                  "karmada": sorted(m for m in sys.modules if m == "karmada" or m.startswith("karmada."))}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"reachable": False, "karmada": []}
