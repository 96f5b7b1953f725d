"""`adcp dashboard` without a running coordinator: a one-line error and exit 1 (the working path,
against a real coordinator, is in tests/integration/test_dashboard_browser.py)."""

from __future__ import annotations

from tests.platform_fixtures import run_cli


def test_dashboard_url_without_a_coordinator_is_one_clear_line(capsys, tmp_path):
    code, out, err = run_cli(capsys, tmp_path / "home", "dashboard", "--url")
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "No coordinator is running" in err and "adcp up" in err


def test_dashboard_without_an_action_is_a_usage_error(capsys, tmp_path):
    code, _, err = run_cli(capsys, tmp_path / "home", "dashboard")
    assert code == 2 and "--url" in err


def test_dashboard_valid_for_is_bounded(capsys, tmp_path):
    code, _, err = run_cli(capsys, tmp_path / "home", "dashboard", "--url", "--valid-for", "0")
    assert code == 2 and "--valid-for" in err
