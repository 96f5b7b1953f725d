"""Simulated sites for monitoring tests and the benchmark: small HTTP servers on 127.0.0.1 (free
ports) that answer like a Ray head: Ray-format metrics text on /metrics, and minimal /api/version,
/api/jobs/ and /api/serve/applications/. A site is "ok", "slow" (answers after `slow_s`, longer
than the monitor's timeout) or "dead" (a closed port: connections are refused).

    with SimSites({"s-001": "ok", "s-002": "dead"}) as sim:
        sim.urls("s-001")        # {"dashboard": ..., "metrics": ...}
        sim.set("s-001", cpu=42.0)
        sim.stop("s-001")        # from now on it is dead
"""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

GIB = 1024**3


@dataclass
class SimFigures:
    cpu: float = 25.0
    mem_used: float = 3 * GIB
    mem_total: float = 16 * GIB
    disk_used: float = 40 * GIB
    disk_free: float = 60 * GIB
    rx: float = 1000.0
    tx: float = 2000.0
    requests_ok: float = 100.0
    requests_5xx: float = 0.0
    reviews: float = 10.0
    autos: float = 90.0
    model: str = "adc-aoi@3"
    jobs: list[dict[str, Any]] = field(default_factory=list)


def ray_metrics_text(f: SimFigures, session: str = "session_sim") -> str:
    """Metrics text in the shape a Ray 2.60 head exports (names, types, label sets)."""
    node = f'IsHeadNode="true",RayNodeType="head",SessionName="{session}",Version="2.60.0",ip="127.0.0.1"'
    worker = f'Component="core_worker",NodeAddress="127.0.0.1",SessionName="{session}",Version="2.60.0",WorkerId="w1"'
    lines = []
    for name, value in (("ray_node_cpu_utilization", f.cpu), ("ray_node_cpu_count", 4),
                        ("ray_node_mem_used", f.mem_used), ("ray_node_mem_total", f.mem_total),
                        ("ray_node_disk_usage", f.disk_used), ("ray_node_disk_free", f.disk_free),
                        ("ray_node_network_receive_speed", f.rx), ("ray_node_network_send_speed", f.tx)):
        lines += [f"# HELP {name} {name}", f"# TYPE {name} gauge", f"{name}{{{node}}} {float(value)!r}"]
    lines += ["# HELP ray_object_store_used_memory used", "# TYPE ray_object_store_used_memory gauge",
              'ray_object_store_used_memory{Component="raylet",NodeAddress="127.0.0.1",Version="2.60.0",'
              'WorkerId=""} 1024.0']
    lines += ["# HELP ray_adc_requests_total requests", "# TYPE ray_adc_requests_total counter",
              f'ray_adc_requests_total{{{worker},route="/v1/classify",status="200"}} {f.requests_ok!r}',
              f'ray_adc_requests_total{{{worker},route="/v1/classify",status="500"}} {f.requests_5xx!r}']
    total = f.requests_ok + f.requests_5xx
    lines += ["# HELP ray_adc_images_total images", "# TYPE ray_adc_images_total counter",
              f'ray_adc_images_total{{{worker},route="/v1/classify",status="200"}} {f.requests_ok!r}']
    lines += ["# HELP ray_adc_decisions_total decisions", "# TYPE ray_adc_decisions_total counter",
              f'ray_adc_decisions_total{{{worker},class="particle",decision="defect"}} {f.autos!r}',
              f'ray_adc_decisions_total{{{worker},class="scratch",decision="review"}} {f.reviews!r}']
    lines += ["# HELP ray_adc_latency_ms latency", "# TYPE ray_adc_latency_ms histogram"]
    for le, share in (("10.0", 0.5), ("50.0", 0.9), ("+Inf", 1.0)):
        lines.append(f'ray_adc_latency_ms_bucket{{{worker},le="{le}",route="/v1/classify"}} {total * share!r}')
    lines += [f'ray_adc_latency_ms_count{{{worker},route="/v1/classify"}} {total!r}',
              f'ray_adc_latency_ms_sum{{{worker},route="/v1/classify"}} {total * 12.0!r}']
    lines += ["# HELP ray_adc_model_info model", "# TYPE ray_adc_model_info gauge",
              f'ray_adc_model_info{{{worker},model="{f.model}"}} 1.0']
    return "\n".join(lines) + "\n"


_SERVE = {"applications": {"adc": {"status": "RUNNING", "deployments": {"ADCDeployment": {
    "status": "HEALTHY", "target_num_replicas": 1, "replicas": [{"state": "RUNNING", "replica_id": "r1"}]}}}}}


class _Site:
    def __init__(self, name: str, mode: str, slow_s: float, stopping: threading.Event) -> None:
        self.name, self.mode, self.slow_s, self.figures = name, mode, slow_s, SimFigures()
        self.stopping = stopping
        self.server: ThreadingHTTPServer | None = None
        if mode == "dead":
            self.port = _closed_port()
            return
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True,
                         name=f"sim-{name}").start()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if site.mode == "slow":
                    site.stopping.wait(site.slow_s)  # longer than the monitor's timeout
                body, ctype = site.answer(self.path.split("?")[0])
                if body is None:
                    self.send_error(404)
                    return
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the client gave up (a slow site): nothing to do

        return Handler

    def answer(self, path: str) -> tuple[bytes | None, str]:
        if path in ("/metrics", ""):
            return ray_metrics_text(self.figures).encode(), "text/plain; version=0.0.4"
        payload = {"/api/version": {"ray_version": "2.60.0", "version": "sim"}, "/api/jobs/": self.figures.jobs,
                   "/api/serve/applications/": _SERVE}.get(path)
        return (None, "") if payload is None else (json.dumps(payload).encode(), "application/json")

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        self.mode = "dead"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SimSites:
    """Simulated sites by name -> mode ("ok" | "slow" | "dead")."""

    def __init__(self, modes: dict[str, str], slow_s: float = 5.0) -> None:
        self._stopping = threading.Event()
        self.sites = {name: _Site(name, mode, slow_s, self._stopping) for name, mode in modes.items()}

    def __enter__(self) -> SimSites:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def urls(self, name: str) -> dict[str, str]:
        base = f"http://127.0.0.1:{self.sites[name].port}"
        return {"dashboard": base, "metrics": base}

    def set(self, name: str, **figures: Any) -> None:
        for k, v in figures.items():
            setattr(self.sites[name].figures, k, v)

    def stop(self, name: str) -> None:
        self.sites[name].stop()

    def close(self) -> None:
        self._stopping.set()
        for site in self.sites.values():
            site.stop()


def register(center: Any, sim: SimSites, store_root: str) -> None:
    """Register every simulated site at `center` as a direct-gateway site."""
    for name in sim.sites:
        urls = sim.urls(name)
        center.add_site(name, dashboard=urls["dashboard"], metrics=urls["metrics"], store=f"{store_root}/{name}")


class RemoteSimSites:
    """The same simulated sites in a child process (`python -m tests.sim_sites`), so that a
    benchmark's coordinator does not share its interpreter (and GIL) with 100 site servers, as a
    real coordinator never does. Same `sites` / `urls` as SimSites; stopped by process id."""

    def __init__(self, modes: dict[str, str], slow_s: float = 5.0) -> None:
        import json
        import subprocess
        import sys

        self.proc = subprocess.Popen([sys.executable, "-m", "tests.sim_sites"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.proc.stdin.write(json.dumps({"modes": modes, "slow_s": slow_s}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()  # the child answers once every server listens
        if not line:
            self.close()
            raise RuntimeError("the simulated sites did not start")
        self._urls: dict[str, dict[str, str]] = json.loads(line)
        self.sites = dict.fromkeys(self._urls)

    def urls(self, name: str) -> dict[str, str]:
        return self._urls[name]

    def __enter__(self) -> RemoteSimSites:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()  # the child stops its servers and exits on EOF
            try:
                self.proc.wait(timeout=20)
            except Exception:  # noqa: BLE001 - then by force, by pid
                self.proc.kill()
                self.proc.wait()


def _serve_from_stdin() -> None:
    import json
    import sys

    spec = json.loads(sys.stdin.readline())
    with SimSites(spec["modes"], slow_s=spec["slow_s"]) as sim:
        print(json.dumps({name: sim.urls(name) for name in sim.sites}), flush=True)
        sys.stdin.read()  # until the parent closes our stdin


if __name__ == "__main__":
    _serve_from_stdin()
