"""The CLI as a client of the coordinator, the way an engineer on a laptop uses it: a separate
process with a fresh HOME and ADCP_HOME (no platform file, no state DB, no store), naming the
coordinator only by ADCP_API + ADCP_TOKEN, runs status, data synth (uploaded), push, train --for,
jobs, model deploy, top --once and Ray's own `ray job submit` through `adcp site env`; the home it
used holds no database afterwards. Also: uploads resume and refuse bad bytes, `adcp login` saves a
context. A CLI that follows a run is killed half-way: the run goes on, and `adcp job watch`
re-attaches.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from coordinator.process import read_token, running
from tests.platform_fixtures import running_platform
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    home = tmp_path_factory.mktemp("door") / "home"
    with running_platform(home, {"fab-a": {"num_cpus": 4, "object_store_mb": 300}}):
        yield home


@pytest.fixture()
def laptop(platform, tmp_path):
    """A fresh user environment that knows the coordinator only by address and token."""
    fresh = tmp_path / "laptop"
    (fresh / "home").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ADCP_", "RAY_"))}
    env.update(HOME=str(fresh / "home"), ADCP_HOME=str(fresh / "adcp-home"),
               ADCP_CONFIG=str(fresh / "home" / ".adcp" / "config.yaml"),
               ADCP_API=running(platform)["url"], ADCP_TOKEN=read_token(platform), PYTHONPATH=str(ROOT))
    return fresh, env


def adcp(env: dict, *args: str, timeout_s: float = 900) -> tuple[int, str, str]:
    p = subprocess.run([sys.executable, "-m", "coordinator.cli.main", *args], env=env, cwd=env["HOME"],
                       capture_output=True, text=True, timeout=timeout_s)
    return p.returncode, p.stdout, p.stderr


def ok_json(env: dict, *args: str, timeout_s: float = 900):
    code, out, err = adcp(env, *args, "--json", timeout_s=timeout_s)
    assert code == 0, err
    return json.loads(out)


def test_a_fresh_home_with_only_an_address_and_a_token_runs_the_loop(laptop):
    fresh, env = laptop
    status = ok_json(env, "status")
    assert [s["name"] for s in status["sites"]] == ["fab-a"] and status["sites"][0]["reachable"]
    assert "ADCP_API" in status["coordinator"]["source"]

    made = ok_json(env, "data", "synth", "--name", "aoi", "--images", "300")
    assert made["dataset"] == "aoi@1" and made["artifact"] == "dataset/aoi@1" and made["bytes_sent"] > 0
    assert any(a["name"] == "aoi" for a in ok_json(env, "artifacts", "--kind", "dataset"))

    pushed = ok_json(env, "push", "dataset/aoi@1", "--to", "fab-a")
    assert pushed[0]["site"] == "fab-a" and pushed[0]["bytes_sent"] > 0
    assert ok_json(env, "push", "dataset/aoi@1", "--to", "fab-a")[0]["bytes_sent"] == 0  # nothing twice

    # a run started detached and followed by a CLI that gets killed goes on; `job watch` re-attaches
    job_id = ok_json(env, "train", "--for", "fab-a", "--on", "fab-a", "--dataset", "aoi@1", "--epochs", "2",
                     "--detach")["job_id"]
    watcher = subprocess.Popen([sys.executable, "-m", "coordinator.cli.main", "job", "watch", job_id], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    headers = {"Authorization": f"Bearer {env['ADCP_TOKEN']}"}

    def status() -> str:
        return httpx.get(f"{env['ADCP_API']}/api/v1/jobs/{job_id}", headers=headers, timeout=10).json()["status"]

    wait_for(lambda: status() in ("running", "finishing", "succeeded"), 300, "the run to start at fab-a")
    watcher.send_signal(signal.SIGKILL)
    watcher.wait(timeout=30)
    run = ok_json(env, "job", "watch", job_id)
    assert run["status"] == "succeeded" and run["ran_at"] == ["fab-a"]
    assert run["job_id"] in [j["id"] for j in ok_json(env, "jobs")]

    rows = ok_json(env, "model", "deploy", run["model"], "--to", "fab-a")
    assert rows[0]["status"] == "serving" and rows[0]["model"] == f"model/{run['model']}"

    code, out, err = adcp(env, "top", "--once")
    assert code == 0 and "fab-a" in out, err

    ray_env = ok_json(env, "site", "env", "fab-a")["env"]
    p = subprocess.run([str(Path(sys.executable).parent / "ray"), "job", "submit", "--",
                        "python", "-c", "print('hello from my own job')"],
                       env={**env, **ray_env}, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "hello from my own job" in p.stdout, p.stdout + p.stderr

    leftovers = [p for p in fresh.rglob("*") if p.suffix in (".db", ".sqlite") or p.name in ("store", "api_token")]
    assert leftovers == []


def test_upload_resumes_where_it_stopped_and_refuses_bad_bytes(laptop, tmp_path):
    from coordinator.cli.client import Coordinator, CoordinatorClient
    from coordinator.cli.upload import Upload

    _, env = laptop
    client = CoordinatorClient(Coordinator(env["ADCP_API"], env["ADCP_TOKEN"], "test"))
    src = tmp_path / "blob"
    src.mkdir()
    data = os.urandom(11 << 20)  # more than one 8 MiB chunk
    (src / "weights.bin").write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()

    first = Upload(client, "model", "resumed")
    answer = client.call("POST", f"/uploads/{first.id}/files",
                         json={"files": [{"path": "weights.bin", "size": len(data), "sha256": sha}]})
    assert answer["missing"][0]["received"] == 0
    part = client.call("PUT", f"/uploads/{first.id}/objects/{sha}", params={"offset": 0}, content=data[: 3 << 20])
    assert part == {"sha256": sha, "received": 3 << 20, "complete": False}
    with pytest.raises(Exception, match="starts at 0") as refused:  # a chunk not where the part ends
        client.call("PUT", f"/uploads/{first.id}/objects/{sha}", params={"offset": 0}, content=data[:10])
    assert refused.value.http_status == 409
    with pytest.raises(Exception, match="lacks 1 object"):
        client.call("POST", f"/uploads/{first.id}/commit")  # nothing half-visible
    assert not any(a["name"] == "resumed" for a in client.call("GET", "/artifacts", params={"kind": "model"}))

    # the CLI was killed here; a new upload of the same bytes sends only the rest
    again = Upload(client, "model", "resumed", first.version).send(src)
    assert again["bytes_sent"] == len(data) - (3 << 20) and again["artifact"] == f"model/resumed@{first.version}"
    assert any(a["name"] == "resumed" for a in client.call("GET", "/artifacts", params={"kind": "model"}))

    bad = Upload(client, "model", "corrupt")
    client.call("POST", f"/uploads/{bad.id}/files",
                json={"files": [{"path": "x.bin", "size": 4, "sha256": "0" * 64}]})
    with pytest.raises(Exception, match="hash to") as wrong:
        client.call("PUT", f"/uploads/{bad.id}/objects/{'0' * 64}", params={"offset": 0}, content=b"abcd")
    assert wrong.value.http_status == 409
    r = httpx.put(f"{env['ADCP_API']}/api/v1/uploads/{bad.id}/objects/{'0' * 64}", params={"offset": "-1"},
                  content=b"a", headers={"Authorization": f"Bearer {env['ADCP_TOKEN']}"})
    assert r.status_code == 422 and r.json()["problems"]
    client.close()


def test_login_saves_a_context_and_the_cli_uses_it(laptop, platform):
    fresh, env = laptop
    token_file = fresh / "home" / "my-token"
    token_file.write_text(env["ADCP_TOKEN"])
    url = env.pop("ADCP_API")
    env.pop("ADCP_TOKEN")
    code, _, err = adcp(env, "status")
    assert code == 1 and "No coordinator is running" in err
    login = ok_json(env, "login", url, "--token-file", str(token_file), "--name", "center")
    assert login["context"] == "center" and login["user"]["role"] == "admin"
    assert stat.S_IMODE(Path(env["ADCP_CONFIG"]).stat().st_mode) == 0o600
    status = ok_json(env, "status")
    assert "context center" in status["coordinator"]["source"] and status["sites"][0]["name"] == "fab-a"
    contexts = ok_json(env, "context", "list")
    assert contexts["current"] == "center" and contexts["contexts"]["center"]["api"] == url
