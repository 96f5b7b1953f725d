"""The platform file's review settings and display names (issue 12, contract §2)."""

from __future__ import annotations

import pytest

from configs.errors import ConfigError
from configs.platform import DEFAULT_CLASS_NAMES, DisplayNames, SiteConfig, load_platform


def _load(tmp_path, text: str):
    f = tmp_path / "p.yaml"
    f.write_text(text, encoding="utf-8")
    return load_platform(f, home=tmp_path)


def test_default_platform_sites_have_display_names_and_review_defaults(tmp_path):
    cfg = load_platform(home=tmp_path)
    a, b = cfg.sites
    assert (a.name, a.display_name, a.title) == ("fab-a", "北京一厂", "北京一厂")
    assert b.display_name == "合肥二厂"
    assert a.review.db_url is None and a.review.audit_rate == 0.02 and a.review.lease_s == 300
    assert a.review_db_secret == "adcp-review-db-fab-a"
    assert cfg.display_names.class_names() == DEFAULT_CLASS_NAMES


def test_default_class_names_cover_the_built_in_classes():
    from data.schema import DEFECT_CLASSES

    assert set(DEFAULT_CLASS_NAMES) == set(DEFECT_CLASSES)
    assert DEFAULT_CLASS_NAMES["particle"] == "颗粒" and DEFAULT_CLASS_NAMES["scratch"] == "划伤"


def test_review_settings_and_display_names_parse(tmp_path):
    cfg = _load(tmp_path, """
sites:
  - name: fab-c
    display_name: "  深圳三厂 "
    runtime: {}
    store: {url: /x}
    review: {db_url: "postgresql+psycopg://adcp@db/review", db_secret: my-db, audit_rate: 0.5, lease_s: 60}
display_names:
  products: {p1: 55寸面板}
  classes: {mura: 色斑}
""")
    s = cfg.sites[0]
    assert s.display_name == "深圳三厂"  # trimmed
    assert s.review.db_url == "postgresql+psycopg://adcp@db/review"
    assert s.review_db_secret == "my-db"
    assert (s.review.audit_rate, s.review.lease_s) == (0.5, 60)
    assert cfg.display_names.products == {"p1": "55寸面板"}
    assert cfg.display_names.class_names()["mura"] == "色斑"
    assert cfg.display_names.class_names()["scratch"] == "划伤"


def test_a_site_without_display_name_is_titled_by_its_name():
    s = SiteConfig(name="fab-z", runtime={}, store={"url": "/x"})
    assert s.display_name is None and s.title == "fab-z"


@pytest.mark.parametrize(
    ("site_extra", "message"),
    [
        ("display_name: \"a\\tb\"", "control characters"),
        ("display_name: \"\"", "1 to 64"),
        (f"display_name: {'厂' * 65}", "1 to 64"),
        ("review: {audit_rate: 1.5}", "audit_rate"),
        ("review: {audit_rate: -0.1}", "audit_rate"),
        ("review: {db_url: review.db}", "SQLAlchemy URL"),
        ("review: {db_secret: My_Secret}", "Secret name"),
        ("review: {colour: blue}", "colour"),
    ],
)
def test_bad_review_settings_name_the_problem(tmp_path, site_extra, message):
    with pytest.raises(ConfigError, match=message):
        _load(tmp_path, f"sites:\n  - name: a\n    runtime: {{}}\n    store: {{url: /x}}\n    {site_extra}\n")


def test_site_name_stays_a_dns_label_whatever_the_display_name(tmp_path):
    with pytest.raises(ConfigError, match="DNS label"):
        _load(tmp_path, "sites: [{name: 北京一厂, runtime: {}, store: {url: /x}}]")


def test_display_names_reject_unknown_keys_and_bad_names():
    with pytest.raises(ValueError, match="sites"):
        DisplayNames(sites={"fab-a": "x"})
    with pytest.raises(ValueError, match="control characters"):
        DisplayNames(products={"p1": "a\nb"})
