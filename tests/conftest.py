"""Shared test settings: a fresh ADCP_HOME per test session, no saved coordinator contexts, and no
stray Ray address."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path_factory):
    # Tests must never talk to a developer's own clusters or write into ~/.adcp.
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("ADCP_HOME", str(tmp_path_factory.getbasetemp() / "adcp-home"))
    # ... nor use a developer's saved coordinator contexts or environment
    monkeypatch.setenv("ADCP_CONFIG", str(tmp_path_factory.getbasetemp() / "adcp-client" / "config.yaml"))
    for name in ("ADCP_API", "ADCP_TOKEN", "ADCP_TOKEN_FILE", "ADCP_CA_FILE", "ADCP_PLATFORM"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ADCP_REVIEW_SYNC_S", "0")  # no scheduled verdict sync unless a test asks for one
    monkeypatch.setenv("ADCP_RETRAIN_CHECK_S", "0")  # nor retrain trigger loop
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
