"""Model lines in unit tests: model versions published to a center's central store with valid
metadata (no torch), and rollouts whose site legs are stand-ins (`fake_site_legs`) so that
`rollout.deploy`/`rollback` run for real around them: resolve, locks, deployment rows, alias moves."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from coordinator.center.core import Center
from coordinator.jobs import rollout
from coordinator.state.db import State
from coordinator.state.model_lines import ModelLines
from data.model_format import ModelMetadata
from data.preprocess import input_spec
from data.publish import publish_artifact


def dashboard_center(state: State, site: Any = lambda name: name) -> SimpleNamespace:
    """What the dashboard routes use of a Center: its state, `site(name)`, its model lines (the
    overview shows each site's champion and challenger) and a platform without lines of its own."""
    return SimpleNamespace(state=state, site=site, lines=ModelLines(state), config=SimpleNamespace(lines=[]))


def publish_model(center: Center, tmp: Path, line: str, version: str, **lineage: Any) -> None:
    """`model/<line>@<version>` in the central store: metadata.json (valid) and a stand-in model file."""
    folder = tmp / f"model-{line}-{version}"
    folder.mkdir(parents=True)
    (folder / "model.pt2").write_bytes(f"{line}@{version}".encode())
    meta = ModelMetadata(name=line, version=version, classes=["scratch", "none"], no_defect_classes=["none"],
                         input=input_spec(64), thresholds={"scratch": 0.5, "none": 0.5},
                         metrics={"val_accuracy": 0.9}, lineage=lineage, created_at="2026-01-01T00:00:00Z",
                         sha256="0" * 64)
    (folder / "metadata.json").write_text(json.dumps(meta.model_dump(mode="json")))
    publish_artifact(center.central, "model", line, version, folder)


def fake_site_legs(monkeypatch, center: Center, failing: set[str] | None = None) -> list[tuple[str, str]]:
    """Replace the per-site leg of a rollout (ship, reconfigure, wait) and the code bundle: each leg
    records its deployment row as the real one does and serves at once, or fails at a site in
    `failing`. Returns the (site, model) legs run, in order."""
    legs: list[tuple[str, str]] = []
    failing = failing if failing is not None else set()
    real_manifest = center.central.manifest

    def leg(center_, site, ref, model_id, code_ref, code_entry, serve_cfg, *, started, timeout_s, on_event, **_):
        legs.append((site, str(ref)))
        current = rollout._current(center_, site)
        previous = current["model"] if current else None
        did = center_.state.start_deployment(site, serve_cfg.app_name, str(ref), previous)
        row = {"site": site, "model": str(ref), "previous": previous, "seconds": None, "status": "failed",
               "deployment_id": did}
        if site in failing:
            center_.state.finish_deployment(did, error="the site is down")
            return {**row, "error": "the site is down"}
        center_.state.finish_deployment(did, seconds=0.01)
        return {**row, "status": "serving", "seconds": 0.01}

    monkeypatch.setattr(rollout, "_deploy_site", leg)
    monkeypatch.setattr(rollout.bundle, "publish", lambda store: SimpleNamespace(version="1"))
    monkeypatch.setattr(center.central, "manifest",
                        lambda ref: SimpleNamespace(entry=lambda f: None) if ref.kind == "code" else real_manifest(ref))
    return legs
