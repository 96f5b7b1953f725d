"""The center's station-token key (coordinator.center.station_keys): one key per home, kept 0600,
tokens that a station verifies with the public half alone."""

from __future__ import annotations

import stat

from configs.station_tokens import ALL_SITES, read_disabled, verify
from coordinator.api.auth import Principal
from coordinator.center.core import Center
from coordinator.center.station_keys import StationKeys
from tests.platform_fixtures import platform_yaml


def test_the_key_is_made_once_per_home_and_readable_by_its_owner_only(tmp_path):
    keys = StationKeys(tmp_path)
    pem = keys.public_pem()
    assert "PUBLIC KEY" in pem
    assert stat.S_IMODE(keys.path.stat().st_mode) == 0o600
    assert keys.path == tmp_path / "coordinator" / "station_key.pem"
    assert StationKeys(tmp_path).public_pem() == pem  # a restarted coordinator signs with the same key
    assert StationKeys(tmp_path / "other").public_pem() != pem


def test_a_reviewer_token_names_its_sites_and_verifies_with_the_public_key(tmp_path):
    keys = StationKeys(tmp_path)
    issued = keys.issue(Principal("line1", "reviewer", ("fab-a",)))
    assert set(issued) == {"token", "expires_at", "user", "role", "sites"}
    claims = verify(keys.public_pem(), issued["token"])
    assert (claims.sub, claims.role, claims.sites) == ("line1", "reviewer", ["fab-a"])
    assert claims.may_use("fab-a") and not claims.may_use("fab-b")
    assert claims.exp - claims.iat == 12 * 3600
    other = StationKeys(tmp_path / "other").public_pem()
    try:
        verify(other, issued["token"])
    except Exception as e:
        assert "not valid" in str(e)
    else:
        raise AssertionError("a token verified with another center's key")


def test_admin_and_unlimited_roles_get_every_site(tmp_path):
    keys = StationKeys(tmp_path)
    assert keys.issue(Principal("admin", "admin", ("fab-a",)))["sites"] == [ALL_SITES]
    assert keys.issue(Principal("eng", "engineer"))["sites"] == [ALL_SITES]


def test_the_center_token_is_reused_until_near_expiry(tmp_path):
    keys = StationKeys(tmp_path)
    token = keys.center_token()
    assert keys.center_token() == token
    claims = verify(keys.public_pem(), token)
    assert (claims.sub, claims.role, claims.sites) == ("center", "admin", [ALL_SITES])
    keys._center = (token, claims.exp - 3600.0)  # as if it were about to expire
    assert keys.center_token() != token


def test_the_disabled_list_is_signed(tmp_path):
    keys = StationKeys(tmp_path)
    names, _ = read_disabled(keys.public_pem(), keys.disabled_list(["bob", "ann", "bob"]))
    assert names == ["ann", "bob"]


def test_center_station_keys_is_made_on_first_use(tmp_path):
    platform = tmp_path / "platform.yaml"
    platform.write_text(platform_yaml({}))
    center = Center.open(tmp_path / "home", platform)
    try:
        assert not (tmp_path / "home" / "coordinator" / "station_key.pem").exists()
        assert center.station_keys is center.station_keys
        assert center.station_keys.public_pem() == StationKeys(tmp_path / "home").public_pem()
    finally:
        center.close()
