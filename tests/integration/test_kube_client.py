"""`karmada.kube` through the official kubernetes client against a local Kubernetes API test double
(tests/fake_kube.py): discovery of sites, server-side apply of rendered objects, auth and config
errors, waiting for a Cluster, WorkloadRebalancer, RayJob status; then the `adcp` commands
(`render`, `apply`, `rebalance`, `site register`, `site discover`) in-process."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import yaml

from configs.errors import (
    ConfigError,
    InputError,
    KubeError,
    KubeTimeoutError,
    NotFoundError,
)
from configs.platform import PlatformConfig
from coordinator.cli.kube import add_commands
from coordinator.cli.main import cli
from karmada import render
from karmada.discovery import discover
from karmada.kube import Kube
from karmada.policies import workload_rebalancer
from tests import crd_schema
from tests.fake_kube import FakeKube, fake_kube_fixture  # noqa: F401  (registers the fake_kube fixture)
from tests.platform_fixtures import run_cli
from tests.waiting import wait_for

pytestmark = pytest.mark.integration
LABEL = "adcp.io/site"
GiB = 2**30

add_commands(cli)  # idempotent; coordinator.cli.main may already have added them


@pytest.fixture
def kube(fake_kube: FakeKube):
    with Kube.connect(str(fake_kube.kubeconfig), "fake") as k:
        yield k


def platform_doc(fake: FakeKube) -> dict:
    def site(name, cluster, **extra):
        return {"name": name, "runtime": {"kind": "kuberay"}, "gateway": {"kind": "karmada", "cluster": cluster},
                "store": {"url": f"{{home}}/sites/{name}/store"}, **extra}

    return {"center": {"state_db": "{home}/coordinator.db", "store": {"url": "{home}/store"}},
            "karmada": {"kubeconfig": str(fake.kubeconfig), "context": "fake"},
            "sites": [site("fab-a", "member-a"), site("fab-b", "member-b", registry="reg.fab-b:5000")]}


@pytest.fixture
def platform(fake_kube: FakeKube, tmp_path: Path) -> Path:
    path = tmp_path / "platform.yaml"
    path.write_text(yaml.safe_dump(platform_doc(fake_kube), sort_keys=False))
    return path


def karmada_objects(fake: FakeKube, tmp_path: Path) -> list[dict]:
    doc = platform_doc(fake)
    doc["center"] = {"store": {"url": str(tmp_path / "store")}}
    for s in doc["sites"]:
        s["store"]["url"] = str(tmp_path / s["name"])
    objs = [o for objs in render.render(PlatformConfig.model_validate(doc), "karmada").values() for o in objs]
    for o in objs:
        crd_schema.validate(o)
    return objs


def manifest_part(obj: dict) -> dict:
    """`obj` without the metadata the server adds (uid, resourceVersion...), for the CRD schema."""
    meta = {k: v for k, v in obj["metadata"].items() if k in ("name", "namespace", "labels", "annotations")}
    return {**obj, "metadata": meta}


def polls(fake: FakeKube, path_end: str) -> int:
    return sum(1 for r in list(fake.requests) if r["method"] == "GET" and r["path"].endswith(path_end))


def after_polls(fake: FakeKube, path_end: str, action, times: int = 1) -> threading.Thread:
    """Run `action()` in a thread once the double has answered `times` GETs of `path_end`."""
    def run() -> None:
        wait_for(lambda: polls(fake, path_end) >= times, 20, f"{times} GET of {path_end}", poll_s=0.01)
        action()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


# --- discovery ---------------------------------------------------------------------------------

def test_discovery_of_three_clusters(fake_kube: FakeKube, kube: Kube):
    fake_kube.set_cluster("member-a", labels={LABEL: "fab-a"}, sync_mode="Pull",
                          allocatable={"cpu": "16", "memory": "64Gi", "pods": "110"},
                          allocated={"cpu": "4500m", "memory": "16Gi"})
    fake_kube.set_cluster("member-b", labels={LABEL: "fab-b"},
                          allocatable={"cpu": "32", "memory": "128Gi", "nvidia.com/gpu": "4"},
                          allocated={"nvidia.com/gpu": "1"}, allocating={"nvidia.com/gpu": "1", "cpu": "2"})
    fake_kube.set_cluster("member-c", ready=False, message="cluster is not reachable",
                          allocatable={"cpu": "8"})
    views = {v["name"]: v for v in discover(kube, LABEL)}
    assert sorted(views) == ["fab-a", "fab-b", "member-c"]
    a, b, c = views["fab-a"], views["fab-b"], views["member-c"]
    assert (a["cluster"], a["ready"], a["sync_mode"]) == ("member-a", True, "Pull")
    assert a["resources"]["available"]["CPU"] == 11.5 and a["resources"]["available"]["memory"] == 48 * GiB
    assert a["resources"]["total"]["GPU"] == 0.0
    assert b["resources"]["total"]["GPU"] == 4.0 and b["resources"]["available"]["GPU"] == 2.0
    assert b["resources"]["available"]["CPU"] == 30.0 and b["sync_mode"] == "Push"
    assert (c["ready"], c["ready_message"]) == (False, "cluster is not reachable")


def test_get_unknown_cluster_is_not_found(kube: Kube):
    with pytest.raises(NotFoundError, match="No Karmada cluster named nope"):
        kube.get_cluster("nope")


# --- server-side apply -------------------------------------------------------------------------

def test_apply_creates_then_unchanged_then_changed(fake_kube: FakeKube, kube: Kube, tmp_path: Path):
    objs = karmada_objects(fake_kube, tmp_path)
    first = kube.apply_report(objs)
    assert [a.outcome for a in first] == ["applied"] * len(objs)
    applies = [r for r in fake_kube.requests if r["method"] == "PATCH"]
    assert len(applies) == len(objs)
    for r in applies:
        assert r["content_type"] == "application/apply-patch+yaml"
        assert r["query"]["fieldManager"] == ["adcp"] and r["query"]["force"] == ["true"]
        assert "dryRun" not in r["query"]
    stored = fake_kube.stored("ray.io/v1", "RayCluster", "adc", "ray-system")
    assert stored["spec"] == objs[0]["spec"]
    assert stored["metadata"]["managedFields"][0]["manager"] == "adcp"

    again = kube.apply_report(objs)
    assert [a.outcome for a in again] == ["unchanged"] * len(objs)
    assert [a.object["metadata"]["resourceVersion"] for a in again] == \
           [a.object["metadata"]["resourceVersion"] for a in first]

    changed = json.loads(json.dumps(objs[0]))
    changed["metadata"].setdefault("labels", {})["adcp.io/test"] = "yes"
    [result] = kube.apply([changed])
    assert result["metadata"]["labels"]["adcp.io/test"] == "yes"
    assert result["metadata"]["resourceVersion"] != first[0].object["metadata"]["resourceVersion"]


def test_dry_run_persists_nothing(fake_kube: FakeKube, kube: Kube, tmp_path: Path):
    objs = karmada_objects(fake_kube, tmp_path)
    report = kube.apply_report(objs, dry_run=True)
    assert [a.outcome for a in report] == ["dry-run"] * len(objs)
    assert report[0].object["spec"] == objs[0]["spec"]
    assert all(r["query"].get("dryRun") == ["All"] for r in fake_kube.requests if r["method"] == "PATCH")
    assert fake_kube.count("RayCluster") == fake_kube.count("PropagationPolicy") == 0


def test_apply_of_kinds_the_apiserver_does_not_serve(kube: Kube):
    with pytest.raises(InputError, match="does not serve example.com/v1"):
        kube.apply([{"apiVersion": "example.com/v1", "kind": "Thing", "metadata": {"name": "x"}}])
    with pytest.raises(InputError, match="serves no RayThing") as e:
        kube.apply([{"apiVersion": "ray.io/v1", "kind": "RayThing", "metadata": {"name": "x", "namespace": "n"}}])
    assert "RayCluster" in str(e.value)
    with pytest.raises(InputError, match="namespaced but has no metadata.namespace"):
        kube.apply([{"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "x"}}])


def test_delete(fake_kube: FakeKube, kube: Kube, tmp_path: Path):
    obj = karmada_objects(fake_kube, tmp_path)[0]
    kube.apply([obj])
    kube.delete(obj)
    assert fake_kube.count("RayCluster") == 0
    with pytest.raises(NotFoundError):
        kube.delete(obj)


# --- credentials and configuration -------------------------------------------------------------

def test_wrong_token_forbidden_unknown_context_and_no_server(fake_kube: FakeKube):
    kc = str(fake_kube.kubeconfig)
    with pytest.raises(KubeError, match="rejected the credentials \\(401 Unauthorized\\)") as e:
        Kube.connect(kc, "fake-wrong-token").list_clusters()
    assert fake_kube.url in str(e.value) and "fake-wrong-token" in str(e.value)
    with pytest.raises(KubeError, match="Forbidden"):
        Kube.connect(kc, "fake-forbidden").list_clusters()
    with pytest.raises(ConfigError, match="context no-such-context"):
        Kube.connect(kc, "no-such-context")
    gone = Kube.connect(kc, "fake")
    fake_kube.stop()
    with pytest.raises(KubeError, match="Cannot reach the apiserver") as e:
        gone.list_clusters()
    assert fake_kube.kubeconfig and "127.0.0.1" in str(e.value)


# --- waiting for a Cluster ---------------------------------------------------------------------

def test_wait_cluster_ready_returns_when_ready(fake_kube: FakeKube, kube: Kube):
    fake_kube.set_cluster("member-c", ready=False, message="agent not connected")
    seen: list[str] = []
    flip = after_polls(fake_kube, "/clusters/member-c", lambda: fake_kube.set_cluster("member-c", ready=True), times=2)
    cluster = kube.wait_cluster_ready("member-c", timeout_s=20, poll_s=0.05, on_poll=seen.append)
    flip.join(timeout=5)
    assert cluster["status"]["conditions"][0]["status"] == "True"
    assert seen and seen[0] == "agent not connected"


def test_wait_cluster_ready_for_a_cluster_not_created_yet(fake_kube: FakeKube, kube: Kube):
    after_polls(fake_kube, "/clusters/member-d", lambda: fake_kube.set_cluster("member-d"), times=1)
    assert kube.wait_cluster_ready("member-d", timeout_s=20, poll_s=0.05)["metadata"]["name"] == "member-d"


def test_wait_cluster_ready_times_out_naming_the_condition(fake_kube: FakeKube, kube: Kube):
    fake_kube.set_cluster("member-c", ready=False, message="kube-apiserver of member-c refused the connection")
    start = time.monotonic()
    with pytest.raises(KubeTimeoutError,
                       match="member-c was not Ready after 0.5 s: kube-apiserver of member-c refused"):
        kube.wait_cluster_ready("member-c", timeout_s=0.5, poll_s=0.1)
    assert 0.5 <= time.monotonic() - start < 5


# --- WorkloadRebalancer, RayJob ----------------------------------------------------------------

def _results(obj: dict, result: str = "Successful") -> dict:
    return {"observedGeneration": 1, "finishTime": "2025-01-01T00:00:00Z",
            "observedWorkloads": [{"workload": w, "result": result} | ({} if result == "Successful" else
                                                                          {"reason": "ReferencedBindingNotFound"})
                                  for w in obj["spec"]["workloads"]]}


def test_rebalancer_create_and_status(fake_kube: FakeKube, kube: Kube, tmp_path: Path):
    workloads = [o for o in karmada_objects(fake_kube, tmp_path) if o["kind"] in ("RayCluster", "RayService")]
    wr = workload_rebalancer("adcp-rebalance-test", workloads)
    crd_schema.validate(wr)
    created = kube.create_rebalancer(wr)
    assert created["spec"] == wr["spec"] and "status" not in created
    def set_status():
        fake_kube.set_status("apps.karmada.io/v1alpha1", "WorkloadRebalancer", created["metadata"]["name"], None,
                             _results(created))

    after_polls(fake_kube, "/workloadrebalancers/adcp-rebalance-test", set_status, times=1)
    done = kube.wait_rebalancer("adcp-rebalance-test", timeout_s=20, poll_s=0.05)
    crd_schema.validate(manifest_part(done))
    assert [w["workload"]["name"] for w in done["status"]["observedWorkloads"]] == ["adc", "adc-serve"]
    assert kube.get_rebalancer("adcp-rebalance-test")["status"] == done["status"]
    with pytest.raises(InputError, match="Not a WorkloadRebalancer"):
        kube.create_rebalancer(workloads[0])


def test_rebalancer_wait_times_out(kube: Kube, fake_kube: FakeKube, tmp_path: Path):
    workloads = [o for o in karmada_objects(fake_kube, tmp_path) if o["kind"] == "RayCluster"]
    kube.create_rebalancer(workload_rebalancer("slow", workloads))
    with pytest.raises(KubeTimeoutError, match="0 of 1 workloads have a result"):
        kube.wait_rebalancer("slow", timeout_s=0.3, poll_s=0.1)


def test_rayjob_status(fake_kube: FakeKube, kube: Kube, tmp_path: Path):
    doc = platform_doc(fake_kube)
    doc["center"] = {"store": {"url": str(tmp_path / "store")}}
    for s in doc["sites"]:
        s["store"]["url"] = str(tmp_path / s["name"])
    job, policy = render.training_job(PlatformConfig.model_validate(doc), "fab-b", name="train-1",
                                      entrypoint="python -m train_jobs.train", runtime_env={}, gpus=1, cluster="own")
    kube.apply([job, policy])
    assert kube.rayjob_status("train-1", "ray-system") == dict.fromkeys(
        ["jobStatus", "jobDeploymentStatus", "message", "startTime", "endTime", "dashboardURL", "jobId"])
    status = {"jobStatus": "RUNNING", "jobDeploymentStatus": "Running", "jobId": "train-1-abc",
              "startTime": "2025-01-01T00:00:00Z", "dashboardURL": "adc-head-svc.ray-system.svc:8265",
              "rayClusterName": "train-1-raycluster"}
    fake_kube.set_status("ray.io/v1", "RayJob", "train-1", "ray-system", status)
    crd_schema.validate(manifest_part(fake_kube.stored("ray.io/v1", "RayJob", "train-1", "ray-system")))
    got = kube.rayjob_status("train-1", "ray-system")
    assert {k: v for k, v in got.items() if v is not None} == {k: v for k, v in status.items() if k != "rayClusterName"}
    with pytest.raises(NotFoundError):
        kube.rayjob_status("nope", "ray-system")


# --- the adcp commands -------------------------------------------------------------------------

def adcp(capsys, tmp_path: Path, platform: Path, *args: str) -> tuple[int, str, str]:
    return run_cli(capsys, tmp_path / "home", "--platform", str(platform), *args)


def test_cli_site_register_prints_steps_and_waits(capsys, fake_kube: FakeKube, platform: Path, tmp_path: Path):
    fake_kube.set_cluster("member-a", ready=False, message="agent not connected", labels={LABEL: "fab-a"})
    after_polls(fake_kube, "/clusters/member-a", lambda: fake_kube.set_cluster("member-a", labels={LABEL: "fab-a"}))
    code, out, err = adcp(capsys, tmp_path, platform, "site", "register", "fab-a", "--timeout", "30")
    assert code == 0, err
    assert "karmadactl token create --print-register-command" in out
    assert "--cluster-name member-a" in out and "adcp.io/site=fab-a" in out
    assert f"--kubeconfig {fake_kube.kubeconfig}" in out
    assert "cluster member-a is Ready (site fab-a)" in out and "lacks the label" not in out


def test_cli_site_register_times_out_in_one_line(capsys, fake_kube: FakeKube, platform: Path, tmp_path: Path):
    code, out, err = adcp(capsys, tmp_path, platform, "site", "register", "fab-c", "--cluster", "member-c",
                          "--timeout", "1")
    assert code == 1
    assert "--cluster-name member-c" in out
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Cluster member-c was not Ready after 1 s" in lines[0]
    assert "does not exist yet" in lines[0]


def test_cli_site_register_no_wait_and_unlabelled_cluster(capsys, fake_kube: FakeKube, platform: Path,
                                                          tmp_path: Path):
    code, out, _ = adcp(capsys, tmp_path, platform, "site", "register", "fab-b", "--no-wait")
    assert code == 0 and "--cluster-name member-b" in out
    assert not [r for r in fake_kube.requests if "/clusters" in r["path"]]
    fake_kube.set_cluster("member-b")
    code, out, _ = adcp(capsys, tmp_path, platform, "site", "register", "fab-b")
    assert code == 0 and "lacks the label adcp.io/site=fab-b" in out


def test_cli_site_discover(capsys, fake_kube: FakeKube, platform: Path, tmp_path: Path):
    fake_kube.set_cluster("member-a", labels={LABEL: "fab-a"}, allocatable={"cpu": "8", "nvidia.com/gpu": "2"},
                          allocated={"cpu": "2", "nvidia.com/gpu": "2"})
    fake_kube.set_cluster("member-b", ready=False, labels={LABEL: "fab-b"}, allocatable={"cpu": "4"})
    code, out, err = adcp(capsys, tmp_path, platform, "site", "discover", "--json")
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["fab-a"]["resources"]["available"]["CPU"] == 6.0 and rows["fab-a"]["resources"]["available"]["GPU"] == 0
    assert rows["fab-b"]["ready"] is False and rows["fab-b"]["cluster"] == "member-b"
    code, out, _ = adcp(capsys, tmp_path, platform, "site", "discover")
    assert code == 0 and "fab-a" in out and "member-b" in out and "6/8" in out


def test_cli_render_then_apply_dry_run_then_apply(capsys, fake_kube: FakeKube, platform: Path, tmp_path: Path):
    out_dir = tmp_path / "rendered"
    code, out, err = adcp(capsys, tmp_path, platform, "render", "--target", "karmada", "--out", str(out_dir),
                          "--model-uri", "s3://models/adc@7")
    assert code == 0, err
    files = sorted(out_dir.rglob("*.yaml"))
    assert files and {str(f) for f in files} <= set(out.split())
    objs = render.load([out_dir])
    for o in objs:
        crd_schema.validate(o)
    assert "s3://models/adc@7" in yaml.safe_dump(objs)
    refs = sorted(f"{o['kind']}/{o['metadata']['name']}" for o in objs)

    code, out, err = adcp(capsys, tmp_path, platform, "apply", "--dry-run", str(out_dir))
    assert code == 0, err
    assert sorted(out.splitlines()) == sorted(f"{r}: dry-run" for r in refs)
    assert fake_kube.count("RayCluster") == fake_kube.count("OverridePolicy") == 0
    code, out, _ = adcp(capsys, tmp_path, platform, "apply", str(out_dir))
    assert code == 0 and sorted(out.splitlines()) == sorted(f"{r}: applied" for r in refs)
    assert fake_kube.count("OverridePolicy") == 4
    code, out, _ = adcp(capsys, tmp_path, platform, "apply", str(out_dir), "--context", "fake")
    assert code == 0 and sorted(out.splitlines()) == sorted(f"{r}: unchanged" for r in refs)


def test_cli_render_kuberay_for_one_site(capsys, platform: Path, tmp_path: Path):
    code, _, err = adcp(capsys, tmp_path, platform, "render", "--target", "kuberay", "--site", "fab-b",
                          "--out", str(tmp_path / "k"))
    assert code == 0, err
    assert sorted(p.relative_to(tmp_path / "k").as_posix() for p in (tmp_path / "k").rglob("*.yaml")) == \
           ["fab-b/raycluster.yaml", "fab-b/rayservice.yaml"]
    for o in render.load([tmp_path / "k"]):
        crd_schema.validate(o)


def test_cli_rebalance(capsys, fake_kube: FakeKube, platform: Path, tmp_path: Path):
    fake_kube.on_create("WorkloadRebalancer", _results)
    code, out, err = adcp(capsys, tmp_path, platform, "rebalance", "--all", "--name", "after-fab-b-came-back")
    assert code == 0, err
    assert out.splitlines() == ["RayCluster/adc: Successful", "RayService/adc-serve: Successful"]
    assert fake_kube.stored("apps.karmada.io/v1alpha1", "WorkloadRebalancer", "after-fab-b-came-back")


def test_cli_rebalance_failure_is_one_line(capsys, fake_kube: FakeKube, platform: Path, tmp_path: Path):
    fake_kube.on_create("WorkloadRebalancer", lambda obj: _results(obj, "Failed"))
    code, out, err = adcp(capsys, tmp_path, platform, "rebalance", "--site", "fab-a")
    assert code == 1 and "RayCluster/adc: Failed (ReferencedBindingNotFound)" in out
    assert len(err.strip().splitlines()) == 1 and "failed for 2 workload(s)" in err


@pytest.mark.parametrize("args, code, message", [
    (["apply", "/no/such/file.yaml"], 1, "does not exist"),
    (["site", "register", "Fab A!", "--no-wait"], 1, "site name"),
    (["rebalance"], 2, "--site SITE (repeatable) or --all"),
    (["rebalance", "--all", "--site", "fab-a"], 2, "--site SITE (repeatable) or --all"),
    (["render", "--target", "karmada", "--site", "fab-z", "--out", "x"], 1, "Unknown site: fab-z"),
    (["site", "discover", "--context", "fake-wrong-token"], 1, "401 Unauthorized"),
])
def test_cli_bad_input_is_one_line(capsys, platform: Path, tmp_path: Path, args, code, message):
    got, _, err = adcp(capsys, tmp_path, platform, *args)
    assert got == code and "Traceback" not in err
    if code == 1:  # our errors: one line
        assert err.strip().startswith("error:") and message in err and len(err.strip().splitlines()) == 1
    else:  # click's usage errors: its usage text, then the message
        assert f"Error: Give {message}" in err
