"""The ADC Serve app on a real local Ray: HTTP endpoints through Serve's proxy, bad input, and
model swaps under concurrent load, both by `serve.run` and by the declarative REST API (the
production path, where only `user_config` changes and the replica reconfigures in place).

One small Ray instance (token auth on, its own temp dir) serves every test of the module.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.serve_fixtures import b64, export_tiny_model, free_port, synth_png, wait_for

pytestmark = pytest.mark.integration

# Two shared cores: Ray + dashboard + a replica take ~30 s idle, much more when others are busy.
START_TIMEOUT_S = 240
V1, V2 = "adc-test@1", "adc-test@2"


@dataclass
class Cluster:
    serve_url: str
    dashboard_url: str
    token: str
    models: dict[str, str]

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A local Ray (4 logical CPUs, 200 MB object store, token auth) with Serve on a free port."""
    import ray
    from ray import serve

    root = Path(tempfile.mkdtemp(prefix="adcps-", dir="/tmp"))  # short: Ray's socket paths
    models = {
        "v1": export_tiny_model(root / "m1", "1", seed=1)[0],
        "v2": export_tiny_model(root / "m2", "2", seed=2)[0],
    }
    token = secrets.token_hex(32)
    (root / "token").write_text(token)
    saved = {k: os.environ.get(k) for k in _AUTH_ENV}
    serve_port, dash_port = free_port(), free_port()
    try:
        _set_auth_env(
            RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(root / "token"), RAY_ADDRESS=None
        )
        ray.init(
            address="local",  # never attach to a colleague's cluster
            num_cpus=4,
            object_store_memory=200 * 1024**2,
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            dashboard_port=dash_port,
            _temp_dir=str(root / "ray"),
        )
        serve.start(http_options={"host": "127.0.0.1", "port": serve_port})
        yield Cluster(
            serve_url=f"http://127.0.0.1:{serve_port}",
            dashboard_url=f"http://127.0.0.1:{dash_port}",
            token=token,
            models=models,
        )
    finally:
        try:
            if ray.is_initialized():  # serve.shutdown() alone would start a new local Ray
                serve.shutdown()
        finally:
            ray.shutdown()
            _set_auth_env(**saved)
            shutil.rmtree(root, ignore_errors=True)


_AUTH_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")


def _set_auth_env(**values: str | None) -> None:
    """Set (None: unset) Ray's auth variables for this process and the cluster it starts.

    Ray reads RAY_AUTH_MODE into its cached config when `ray` is first imported, which in a test
    session is long before this fixture; refresh that cache the way `ray.init` itself does when
    it turns token auth on (`Config.initialize("")`), and drop any cached token.
    """
    from ray._private.authentication.authentication_token_setup import AuthenticationTokenLoader
    from ray._raylet import Config

    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def _user_config(uri: str, **extra) -> dict:
    return {"model_uri": uri, "max_batch_size": 32, "batch_wait_timeout_s": 0.005, **extra}


def _run(uri: str, **extra) -> None:
    from ray import serve

    from serve_apps.adc import ADCDeployment

    app = ADCDeployment.options(user_config=_user_config(uri, **extra)).bind()
    serve.run(app, name="adc", route_prefix="/")


@pytest.fixture(scope="module")
def deployed(cluster: Cluster) -> Cluster:
    _run(cluster.models["v1"], max_images_per_request=64)
    return cluster


def post_png(url: str, index: int = 1, client: httpx.Client | None = None) -> httpx.Response:
    return (client or httpx).post(
        f"{url}/v1/classify", content=synth_png(index), headers={"content-type": "image/png"},
        timeout=60,
    )


def test_classify_batch_model_health(deployed: Cluster):
    url = deployed.serve_url
    r = post_png(url)
    assert r.status_code == 200, r.text
    one = r.json()
    assert one["model_version"] == V1 and one["decision"] in ("defect", "false_defect", "review")
    assert len(one["top3"]) == 3

    files = [("files", (f"p{i}.png", synth_png(i), "image/png")) for i in range(40)]
    r = httpx.post(f"{url}/v1/classify/batch", files=files, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == V1
    assert [x["id"] for x in body["results"]] == [f"p{i}.png" for i in range(40)]
    assert body["results"][1]["class"] == one["class"]
    assert body["results"][1]["confidence"] == pytest.approx(one["confidence"], rel=1e-5)

    r = httpx.post(f"{url}/v1/classify/batch", json={"images": [b64(synth_png(1))]}, timeout=60)
    assert r.status_code == 200 and r.json()["results"][0]["class"] == one["class"]

    info = httpx.get(f"{url}/v1/model", timeout=30).json()
    assert info["model_version"] == V1 and len(info["classes"]) == 6
    assert httpx.get(f"{url}/healthz", timeout=30).json()["status"] == "ok"


def test_open_inference_protocol(deployed: Cluster):
    url = deployed.serve_url
    assert httpx.get(f"{url}/v2/health/live", timeout=30).json() == {"live": True}
    assert httpx.get(f"{url}/v2/health/ready", timeout=30).status_code == 200
    meta = httpx.get(f"{url}/v2/models/adc", timeout=30).json()
    assert meta["platform"] == "pytorch_torchexport" and meta["versions"] == [V1]
    assert httpx.get(f"{url}/v2/models/adc/ready", timeout=30).json()["ready"] is True
    req = {
        "id": "r-42",
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [2],
                "data": [b64(synth_png(i)) for i in range(2)],
            }
        ],
    }
    r = httpx.post(f"{url}/v2/models/adc/infer", json=req, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "r-42" and body["model_version"] == V1
    out = {o["name"]: o for o in body["outputs"]}
    assert out["label"]["shape"] == [2] and out["probabilities"]["shape"] == [2, 6]
    bad = {"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1, 16], "data": [0] * 16}]}
    r = httpx.post(f"{url}/v2/models/adc/infer", json=bad, timeout=30)
    assert r.status_code == 400 and "shape" in r.json()["error"]


def test_bad_input_is_4xx_json(deployed: Cluster):
    url = deployed.serve_url
    png = {"content-type": "image/png"}
    cases = [
        (httpx.post(f"{url}/v1/classify", content=b"", headers=png, timeout=30), 400),
        (httpx.post(f"{url}/v1/classify", content=b"not an image", headers=png, timeout=30), 400),
        (
            httpx.post(
                f"{url}/v1/classify",
                content=b"x",
                headers={"content-type": "text/plain"},
                timeout=30,
            ),
            415,
        ),
        (
            httpx.post(
                f"{url}/v1/classify", content=b"\0" * (8 * 1024 * 1024 + 1), headers=png, timeout=60
            ),
            413,
        ),
        (
            httpx.post(
                f"{url}/v1/classify/batch",
                json={"images": [b64(synth_png(0))] * 65},
                timeout=60,
            ),
            413,
        ),
        (httpx.post(f"{url}/v1/classify/batch", json={"images": "x"}, timeout=30), 400),
    ]
    for r, status in cases:
        assert r.status_code == status, r.text
        body = r.json()
        assert body["error"] and body["detail"], body


def test_serve_proxy_does_not_check_the_ray_token(deployed: Cluster):
    """With RAY_AUTH_MODE=token the dashboard wants the token; Serve's HTTP proxy does not."""
    assert post_png(deployed.serve_url).status_code == 200
    wrong = {"Authorization": "Bearer wrong"}
    r = httpx.get(f"{deployed.serve_url}/healthz", headers=wrong, timeout=30)
    assert r.status_code == 200
    r = httpx.get(f"{deployed.dashboard_url}/api/serve/applications/", timeout=30)
    assert r.status_code == 401
    apps = f"{deployed.dashboard_url}/api/serve/applications/"
    r = httpx.get(apps, headers=deployed.auth, timeout=30)
    assert r.status_code == 200


@dataclass
class Load:
    """Threads posting images until stopped; every answer's status and model version recorded."""

    url: str
    threads: int = 4
    versions: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _work(self, i: int) -> None:
        with httpx.Client(timeout=120) as client:
            n = 0
            while not self._stop.is_set():
                n += 1
                try:
                    if n % 5 == 0:
                        r = client.post(
                            f"{self.url}/v1/classify/batch",
                            json={"images": [b64(synth_png(i + k)) for k in range(8)]},
                        )
                        version = r.json()["model_version"] if r.status_code == 200 else None
                    else:
                        r = post_png(self.url, i + n % 16, client)
                        version = r.json()["model_version"] if r.status_code == 200 else None
                except Exception as e:  # a refused connection or timeout is a failure too
                    with self._lock:
                        self.failures.append(repr(e))
                    continue
                with self._lock:
                    if version is None:
                        self.failures.append(f"{r.status_code} {r.text[:300]}")
                    else:
                        self.versions.append(version)

    def __enter__(self) -> Load:
        for i in range(self.threads):
            t = threading.Thread(target=self._work, args=(i,), daemon=True)
            t.start()
            self._workers.append(t)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(timeout=180)

    def count(self, version: str) -> int:
        with self._lock:
            return self.versions.count(version)


def _swap_under_load(url: str, swap, old: str, new: str) -> Load:
    with Load(url) as load:
        wait_for(lambda: load.count(old) >= 20, 120, f"20 answers from {old} before the swap")
        swap()
        start = len(load.versions)
        wait_for(lambda: load.count(new) >= 40, 180, f"40 answers from {new} after the swap")
    assert load.failures == [], load.failures[:5]
    after = load.versions[start:]
    # Once the swap has returned, the new model answers (a request already in flight may not).
    assert Counter(after[20:])[old] == 0, Counter(after)
    return load


def test_swap_by_serve_run_under_load(deployed: Cluster):
    """`serve.run` with a new user_config: Serve replaces the replica; no request fails."""
    load = _swap_under_load(
        deployed.serve_url,
        lambda: _run(deployed.models["v2"], max_images_per_request=64),
        V1,
        V2,
    )
    assert len(load.versions) >= 60


def _replica_actors() -> set[str]:
    """Names of the live ADC replica actors (Serve names each replica actor after its id)."""
    import ray

    names = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)}
    return {n for n in names if "REPLICA" in n and "ADCDeployment" in n}


def _put_config(cluster: Cluster, uri: str) -> None:
    """Deploy through the dashboard's REST API, as the coordinator does in production."""
    port = int(cluster.serve_url.rsplit(":", 1)[1])
    config = {
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [
            {
                "name": "adc",
                "route_prefix": "/",
                "import_path": "serve_apps.adc:app",
                "deployments": [{"name": "ADCDeployment", "user_config": _user_config(uri)}],
            }
        ],
    }
    r = httpx.put(
        f"{cluster.dashboard_url}/api/serve/applications/",
        json=config,
        headers=cluster.auth,
        timeout=60,
    )
    assert r.status_code == 200, r.text


def _app_state(cluster: Cluster) -> tuple[str, str | None]:
    from ray import serve

    app = serve.status().applications.get("adc")
    model = httpx.get(f"{cluster.serve_url}/v1/model", timeout=10).json().get("model_version")
    return (app.status if app else "MISSING"), model


@pytest.fixture(scope="module")
def rest_app(cluster: Cluster) -> Cluster:
    from ray import serve

    serve.delete("adc")  # the app `serve.run` deployed
    _put_config(cluster, cluster.models["v1"])
    wait_for(lambda: _app_state(cluster) == ("RUNNING", V1), START_TIMEOUT_S, "the REST app")
    return cluster


def test_swap_by_rest_config_reconfigures_in_place(rest_app: Cluster):
    """The production path: PUT the config with a new model_uri; the same replica swaps."""
    before = _replica_actors()
    assert len(before) == 1

    def swap() -> None:
        _put_config(rest_app, rest_app.models["v2"])
        wait_for(lambda: _app_state(rest_app) == ("RUNNING", V2), START_TIMEOUT_S, "the swap")

    _swap_under_load(rest_app.serve_url, swap, V1, V2)
    assert _replica_actors() == before, "the replica was restarted instead of reconfigured"


def test_bad_model_uri_keeps_serving(rest_app: Cluster, tmp_path: Path):
    """A model_uri that does not load must not take the site down: the old model answers on,
    and /healthz says what went wrong."""
    serving = _app_state(rest_app)[1]
    before = _replica_actors()

    def health() -> dict:
        return httpx.get(f"{rest_app.serve_url}/healthz", timeout=10).json()

    with Load(rest_app.serve_url, threads=2) as load:
        wait_for(lambda: len(load.versions) >= 10, 120, "answers before the bad config")
        _put_config(rest_app, str(tmp_path / "no-such-model"))
        body = wait_for(
            lambda: (h := health()).get("status") == "degraded" and h, 120, "degraded health"
        )
        n = len(load.versions)
        wait_for(lambda: len(load.versions) >= n + 20, 120, "answers after the bad config")
    assert load.failures == [], load.failures[:5]
    assert set(load.versions) == {serving}
    assert body["model_version"] == serving
    assert body["reconfigure_error"]["error"] == "NotFoundError"
    assert "no-such-model" in body["reconfigure_error"]["detail"]
    assert _replica_actors() == before
    assert _app_state(rest_app) == ("RUNNING", serving)
