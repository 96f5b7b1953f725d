"""Unit tests run without Ray: starting or joining a cluster here is a bug in the test."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _forbid_ray_init(monkeypatch):
    import ray

    def refuse(*args, **kwargs):
        raise AssertionError("unit tests must not call ray.init(); put the test under tests/integration")

    monkeypatch.setattr(ray, "init", refuse)
