"""The production example platform file (`configs/platform-karmada.yaml`) renders, through the CLI a
user runs, into YAML files whose every object passes its upstream CRD."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from configs.platform import load_platform
from tests import crd_schema
from tests.platform_fixtures import run_cli

EXAMPLE = Path(__file__).resolve().parents[2] / "configs" / "platform-karmada.yaml"


@pytest.mark.parametrize("target", ["kuberay", "karmada"])
def test_example_platform_renders_valid_objects(target, tmp_path, capsys):
    out = tmp_path / "deploy"
    code, stdout, err = run_cli(capsys, tmp_path / "home", "--platform", str(EXAMPLE), "render",
                                "--target", target, "--out", str(out))
    assert code == 0, err
    files = sorted(out.rglob("*.yaml"))
    assert files and all(str(f.relative_to(out)) in stdout for f in files)
    kinds = set()
    for f in files:
        for obj in yaml.safe_load_all(f.read_text()):
            assert crd_schema.errors(obj) == [], (f, crd_schema.errors(obj)[:5])
            kinds.add(obj["kind"])
    karmada_kinds = {"PropagationPolicy", "OverridePolicy"} if target == "karmada" else set()
    expected = {"RayCluster", "RayService"} | karmada_kinds
    assert kinds == expected


def test_example_sites_are_kuberay_behind_karmada(tmp_path):
    platform = load_platform(EXAMPLE, tmp_path)
    assert [s.runtime.kind for s in platform.sites] == ["kuberay", "kuberay"]
    assert {s.gateway.kind for s in platform.sites} == {"karmada"}
    assert platform.sites[1].runtime.gpus > 0 and platform.sites[0].runtime.gpus == 0


def test_render_without_kuberay_sites_is_one_clear_line(tmp_path, capsys):
    code, _, err = run_cli(capsys, tmp_path / "home", "render", "--target", "karmada", "--out", str(tmp_path / "o"))
    assert code == 1 and len(err.strip().splitlines()) == 1 and "kuberay" in err.lower(), err


def test_rayjob_training_needs_a_kuberay_runtime():
    from configs.errors import ConfigError
    from configs.loader import validate
    from configs.platform import SiteConfig

    spec = {"name": "fab-b", "store": {"url": "/s"}, "runtime": {"kind": "local"},
            "gateway": {"kind": "karmada", "cluster": "member-fab-b", "training": "rayjob"}}
    with pytest.raises(ConfigError, match="rayjob needs runtime.kind kuberay"):
        validate(SiteConfig, spec, "site fab-b")
    spec["runtime"] = {"kind": "kuberay"}
    assert validate(SiteConfig, spec, "site fab-b").gateway.training == "rayjob"


def test_training_job_carries_the_submission_id(tmp_path):
    from karmada.render import training_job

    platform = load_platform(EXAMPLE, tmp_path)
    job, policy = training_job(platform, "fab-b", name="adcp-3f2a-1", entrypoint="python -m train_jobs.train",
                               runtime_env={"working_dir": "s3://b/x.zip"}, gpus=2, cluster="own", job_id="adcp-3f2a-1")
    assert job["spec"]["jobId"] == "adcp-3f2a-1" and crd_schema.errors(job) == []
    assert policy["spec"]["placement"]["clusterAffinity"]["clusterNames"] == ["member-fab-b"]


def test_repeated_worker_group_names_are_named():
    from configs.errors import ConfigError
    from configs.kube import KubeRayRuntime
    from configs.loader import validate

    with pytest.raises(ConfigError, match="worker group names must be unique; repeated: gpu"):
        validate(KubeRayRuntime, {"workers": [{"name": "gpu"}, {"name": "cpu"}, {"name": "gpu"}]}, "runtime")
