"""Training at a Karmada site with `training: rayjob`: the coordinator applies a KubeRay RayJob and a
PropagationPolicy pinning it to the borrowed cluster to the Karmada apiserver, follows the RayJob's
status there, and reads the logs through the aggregated proxy, then brings the model home.

What stands in for what (the rest is real): the Karmada apiserver is `tests/karmada_proxy.py` (the
aggregated proxy path, HTTPS, token) in front of `tests/fake_kube.py` (the Kubernetes API test
double); KubeRay + Karmada's status aggregation are a hook on that double which, when a RayJob is
created, validates it against the RayJob CRD, submits its entrypoint to fab-b's real Ray head with
`spec.jobId` as the submission id, and copies the Ray job's state into the RayJob's status."""

from __future__ import annotations

import json
import threading

import pytest
import yaml

from configs.models import LocalSiteConfig
from coordinator.center.core import Center
from coordinator.state.jobs import JobRecords
from data.artifacts import ArtifactRef
from raycluster.gateway import DirectGateway
from raycluster.k8s_names import dns_name
from raycluster.local import start_site, stop_site
from tests import crd_schema
from tests.fake_kube import FakeKube
from tests.karmada_proxy import karmada_proxy
from tests.platform_fixtures import run_cli

pytestmark = pytest.mark.integration

TOKEN = "karmada-test-token"


def _as_sent(obj: dict) -> dict:
    """`obj` without what the apiserver adds to metadata (uid, resourceVersion, managedFields...)."""
    keep = ("name", "namespace", "labels", "annotations")
    return {k: v for k, v in obj.items() if k != "status"} | {
        "metadata": {k: v for k, v in obj["metadata"].items() if k in keep}}


class KubeRayStandIn:
    """Submits created RayJobs to a real Ray head and mirrors their state into the RayJob status."""

    def __init__(self, fake: FakeKube, ray_site) -> None:
        self.fake, self.site, self.jobs, self.errors = fake, ray_site, {}, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._mirror, daemon=True)

    def client(self):
        return DirectGateway("fab-b", {"dashboard": self.site.dashboard_url}, self.site.token).job_client()

    def on_create(self, obj: dict) -> dict:
        errors = crd_schema.errors(_as_sent(obj))
        if errors:  # a real apiserver would have refused it
            self.errors.append(errors)
            return {"jobDeploymentStatus": "Failed", "message": "; ".join(errors[:3])}
        spec = obj["spec"]
        self.client().submit_job(entrypoint=spec["entrypoint"], submission_id=spec["jobId"],
                                 runtime_env=yaml.safe_load(spec.get("runtimeEnvYAML") or "{}"),
                                 entrypoint_num_cpus=0)
        self.jobs[spec["jobId"]] = (obj["metadata"]["name"], obj["metadata"]["namespace"])
        return {"jobDeploymentStatus": "Running", "jobId": spec["jobId"]}

    def _mirror(self) -> None:
        while not self._stop.wait(0.5):  # KubeRay's reconcile period, shortened
            for job_id, (name, ns) in list(self.jobs.items()):
                try:
                    state = self.client().get_job_status(job_id).value
                    done = state in ("SUCCEEDED", "FAILED", "STOPPED")
                    if self.fake.stored("ray.io/v1", "RayJob", name, ns) is not None:
                        self.fake.set_status("ray.io/v1", "RayJob", name, ns, {
                            "jobId": job_id, "jobStatus": state,
                            "jobDeploymentStatus": "Complete" if done else "Running"})
                except Exception as e:  # noqa: BLE001 - reported by the test, not swallowed
                    self.errors.append(repr(e))

    def __enter__(self):
        self.fake.on_create("RayJob", self.on_create)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=10)


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    root = tmp_path_factory.mktemp("rayjob")
    home, ray_home = root / "home", root / "fab-b-cluster"
    home.mkdir()
    fab_b = start_site(LocalSiteConfig(name="fab-b", num_cpus=4, object_store_mb=300,
                                       store=str(home / "sites" / "fab-b" / "store")), ray_home)
    fake = FakeKube(token=TOKEN).start()
    try:
        fake.set_cluster("member-fab-b", sync_mode="Pull", labels={"adcp.io/site": "fab-b"},
                         allocatable={"cpu": "16", "memory": "64Gi"})
        urls = {"adc-head-svc:8265": fab_b.dashboard_url, "adc-head-svc:8080": fab_b.metrics_url}
        with karmada_proxy(lambda c, ns, svc: urls.get(svc) if c == "member-fab-b" else None, root,
                           token=TOKEN, apiserver=fake.url) as proxy, KubeRayStandIn(fake, fab_b) as kuberay:
            kubeconfig = proxy.kubeconfig(root / "karmada.kubeconfig")
            (root / "fab-b.token").write_text(fab_b.token)
            doc = {
                "center": {"state_db": "{home}/coordinator.db", "store": {"url": "{home}/store"}},
                "karmada": {"kubeconfig": str(kubeconfig), "context": "karmada-apiserver"},
                "sites": [
                    {"name": "fab-a", "runtime": {"kind": "local", "num_cpus": 2, "object_store_mb": 200},
                     "store": {"url": "{home}/sites/fab-a/store"}},
                    {"name": "fab-b", "runtime": {"kind": "kuberay", "autoscaling": False},
                     "store": {"url": "{home}/sites/fab-b/store"},
                     "gateway": {"kind": "karmada", "cluster": "member-fab-b", "training": "rayjob",
                                 "token_file": str(root / "fab-b.token")}},
                ],
            }
            platform_file = root / "platform.yaml"
            platform_file.write_text(yaml.safe_dump(doc, sort_keys=False))
            try:
                code = run_cli(_NoCapture(), home, "--platform", str(platform_file), "up")[0]
                assert code == 0
                yield home, fake, kuberay
            finally:
                run_cli(_NoCapture(), home, "down")
    finally:
        fake.stop()
        stop_site("fab-b", ray_home)


class _NoCapture:
    """run_cli's capsys stand-in for module-scoped setup (output goes to the test log)."""

    def readouterr(self):
        return type("Out", (), {"out": "", "err": ""})()


def test_training_as_a_rayjob_pinned_to_the_borrowed_cluster(platform, capsys):
    home, fake, kuberay = platform
    assert run_cli(capsys, home, "data", "synth", "--name", "aoi", "--images", "240")[0] == 0
    code, out, err = run_cli(capsys, home, "train", "--for", "fab-a", "--on", "fab-b", "--dataset", "aoi@1",
                             "--epochs", "1", "--json")
    assert code == 0, err + out
    result = json.loads(out)
    assert result["status"] == "succeeded" and result["ran_at"] == ["fab-b"], result
    assert not kuberay.errors, kuberay.errors

    job = JobRecords(Center.open(home).state).get(result["job_id"]).model_dump(mode="json")
    submission = job["attempts"][0]["submission_id"]
    rayjob = next(o for o in (fake.stored("ray.io/v1", "RayJob", n, ns) for n, ns in kuberay.jobs.values()) if o)
    assert rayjob["spec"]["jobId"] == submission and rayjob["status"]["jobStatus"] == "SUCCEEDED"
    assert rayjob["spec"]["clusterSelector"] == {"ray.io/cluster": "adc"}
    assert "train_jobs.train" in rayjob["spec"]["entrypoint"]
    policy = fake.stored("policy.karmada.io/v1alpha1", "PropagationPolicy",
                         dns_name("adcp-job", rayjob["metadata"]["name"]), "ray-system")
    assert policy is not None and policy["spec"]["resourceSelectors"][0]["name"] == rayjob["metadata"]["name"]
    assert policy["spec"]["placement"]["clusterAffinity"]["clusterNames"] == ["member-fab-b"]
    assert crd_schema.errors(_as_sent(policy)) == []

    # logs come from fab-b's jobs API through the aggregated proxy, by the same submission id
    code, out, _ = run_cli(capsys, home, "job", "logs", result["job_id"])
    assert code == 0 and "epoch 1/1" in out
    name, version = result["model"].split("/")[-1].rsplit("@", 1)
    assert Center.open(home).store("fab-a").verify(ArtifactRef("model", name, version)).ok
