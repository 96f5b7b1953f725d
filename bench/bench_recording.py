"""Classify throughput of the ADC app with review recording on vs off (issue 12: within 10 %).

    python bench/bench_recording.py [--duration 8] [--rounds 3] [--concurrency 16] [--output FILE]

Runs the ADC app's HTTP layer (`serve_apps.api.build_api` around an `AdcService`, as a Serve
replica builds it, without Ray's proxy) under uvicorn in a child process with one torch thread,
and drives `POST /v1/classify` (one PNG per request, metadata headers set) with a concurrent
httpx client from this process. Rounds alternate off / on so that drift on a shared machine hits
both alike (off-on, then on-off). Besides req/s it reports the server process's CPU milliseconds
per request (from /proc, all threads, including the recorder's final flush) and the CPU that
recording itself adds per request: the writer thread's CPU time (`Recorder.writer_cpu_s`) plus one
`Recorder.submit` call (timed in this process). `ratio_by_cpu_accounting` = off CPU / (off CPU +
recording CPU): the throughput ratio of a replica on a core of its own, which other load on a
shared machine disturbs far less than req/s. Two recording scenarios:

- `typical`: every decision automatic, `audit_rate` 0.02 (2 % of images recorded);
- `worst`: every decision `review` (every image written to the store and the DB).

Recording writes into a SQLite review DB and a local site store in a temp dir (the embedded
default). Prints one JSON document with req/s per round, the median on/off ratio per scenario,
and what the recorder wrote (recorded, errors, dropped) after a final flush.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=float, default=8.0, help="seconds measured per round")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring, per round")
    p.add_argument("--rounds", type=int, default=3, help="off/on pairs per scenario")
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    p.add_argument("--width", type=int, default=24, help="ADCNet width of the benchmark model")
    p.add_argument("--scenarios", default="typical,worst")
    p.add_argument("--output", help="also write the JSON report here")
    # the child server (internal)
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--audit-rate", type=float, default=0.02, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# --- the child: one replica's HTTP app -----------------------------------------------------------


def serve(args: argparse.Namespace) -> None:
    import torch
    import uvicorn
    from fastapi.responses import JSONResponse

    from serve_apps.api import build_api
    from serve_apps.classifier import AdcService
    from serve_apps.recorder import from_env

    torch.set_num_threads(1)
    service = AdcService()
    service.reconfigure({"model_uri": args.model, "audit_rate": args.audit_rate})

    class Counts:
        def __init__(self) -> None:
            self.n = {"recorded": 0, "errors": 0, "dropped": 0}

        def recorded(self, n: int) -> None:
            self.n["recorded"] += n

        def errors(self, n: int) -> None:
            self.n["errors"] += n

        def dropped(self, n: int) -> None:
            self.n["dropped"] += n

    counts = Counts()
    recorder = from_env(args.audit_rate, counts)  # on when the parent set the env
    app = build_api(service, None, recorder)

    @app.get("/bench/recorder")
    async def recorder_counts() -> JSONResponse:
        flushed = await asyncio.to_thread(recorder.flush, 60) if recorder else True
        writer = recorder.writer_cpu_s if recorder else 0.0
        return JSONResponse({"on": recorder is not None, "flushed": flushed, "writer_cpu_s": writer, **counts.n})

    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


# --- the parent: start, drive, compare ---------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(model: str, record: bool, audit_rate: float, workdir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADCP_")}
    env["OMP_NUM_THREADS"] = "1"
    if record:
        run = Path(tempfile.mkdtemp(dir=workdir, prefix="rec-"))
        env.update(ADCP_REVIEW_DB_URL=f"sqlite:///{run}/review.db", ADCP_SITE_STORE=str(run / "store"),
                   ADCP_SITE="fab-a")
    proc = subprocess.Popen([sys.executable, __file__, "--serve", "--model", model, "--port", str(port),
                             "--audit-rate", str(audit_rate)], env=env, cwd=REPO, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the benchmark server did not start (exit {proc.poll()})")
        time.sleep(0.1)  # polling a server that is starting, with a deadline


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drive(url: str, pid: int, pngs: list[bytes], concurrency: int, warmup: float, duration: float) -> dict:
    import httpx

    headers = {"content-type": "image/png", "X-ADC-Product": "p1", "X-ADC-AOI-Machine": "aoi-7"}
    done = 0
    failed = 0
    measuring = False
    stop_at = time.monotonic() + warmup + duration
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=concurrency)) as c:

        async def worker(k: int) -> None:
            nonlocal done, failed
            i = k
            while time.monotonic() < stop_at:
                r = await c.post("/v1/classify", content=pngs[i % len(pngs)], headers={
                    **headers, "X-ADC-Panel-Id": f"PNL-{i}"})
                i += concurrency
                if measuring:
                    done += 1
                    failed += r.status_code != 200

        tasks = [asyncio.create_task(worker(k)) for k in range(concurrency)]
        await asyncio.sleep(warmup)  # the warm-up window of a timed run
        before = (await c.get("/bench/recorder", timeout=120)).json()
        measuring = True
        started, cpu0 = time.monotonic(), cpu_seconds(pid)
        await asyncio.gather(*tasks)
        seconds = time.monotonic() - started
        counts = (await c.get("/bench/recorder", timeout=120)).json()  # flushes: its writes count too
        cpu = cpu_seconds(pid) - cpu0
    writer = counts["writer_cpu_s"] - before["writer_cpu_s"]
    return {"req_s": round(done / seconds, 1), "server_cpu_ms_per_req": round(1000 * cpu / max(done, 1), 3),
            "writer_cpu_ms_per_req": round(1000 * writer / max(done, 1), 4),
            "requests": done, "failed": failed, "recorder": counts}


def submit_cost_us(pngs: list[bytes], review: bool, n: int = 20000) -> float:
    """CPU microseconds of one Recorder.submit call (the request path's share), 2 % audit."""
    from data.artifacts import ArtifactStore
    from serve_apps.recorder import Recorder, RequestMeta

    class NullDB:
        def record(self, items, counts=None) -> None:
            pass

        def close(self) -> None:
            pass

    workdir = Path(tempfile.mkdtemp(prefix="adcp-bench-submit-"))
    rec = Recorder(NullDB(), ArtifactStore(str(workdir)), site="fab-a", audit_rate=0.02, max_queue=n + 1)
    rec._store_image = lambda item: None  # only the request path is timed here
    answer = {"class": "scratch", "confidence": 0.9, "decision": "review" if review else "defect",
              "top3": [{"class": "scratch", "confidence": 0.9}] * 3}
    meta = RequestMeta("p1", "aoi-7", "PNL-1")
    started = time.thread_time()
    for i in range(n):
        rec.submit([pngs[i % len(pngs)]], [answer], meta, model_version="adc@1", classes=["scratch"])
    cost = (time.thread_time() - started) / n * 1e6
    rec.close()
    shutil.rmtree(workdir, ignore_errors=True)
    return cost


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.serve:
        serve(args)
        return
    from data.schema import DEFECT_CLASSES
    from tests.serve_fixtures import export_tiny_model, synth_png

    workdir = Path(tempfile.mkdtemp(prefix="adcp-bench-rec-"))
    try:
        models = {
            "typical": export_tiny_model(workdir / "auto", "1", width=args.width)[0],
            "worst": export_tiny_model(workdir / "review", "2", width=args.width,
                                       thresholds={c: 1.0 for c in DEFECT_CLASSES})[0],
        }
        # 512 distinct panels: the worst case stores 512 images, then dedups the rest by sha256
        pngs = [synth_png(i) for i in range(512)]
        report: dict = {"concurrency": args.concurrency, "duration_s": args.duration, "width": args.width,
                        "cpus": os.cpu_count(), "scenarios": {}}
        for scenario in args.scenarios.split(","):
            rounds = []
            for k in range(args.rounds):
                pair = {}
                for record in ((False, True) if k % 2 == 0 else (True, False)):  # ABBA: no order bias
                    proc, url = start(models[scenario], record, 0.02, workdir)
                    try:
                        pair["on" if record else "off"] = asyncio.run(
                            drive(url, proc.pid, pngs, args.concurrency, args.warmup, args.duration))
                    finally:
                        stop(proc)
                pair["ratio"] = round(pair["on"]["req_s"] / pair["off"]["req_s"], 3)
                pair["cpu_ratio"] = round(pair["off"]["server_cpu_ms_per_req"] / pair["on"]["server_cpu_ms_per_req"], 3)
                rounds.append(pair)
                print(scenario, json.dumps(pair), file=sys.stderr, flush=True)
            submit_us = submit_cost_us(pngs, review=scenario == "worst")
            off_cpu = statistics.median(r["off"]["server_cpu_ms_per_req"] for r in rounds)
            writer = statistics.median(r["on"]["writer_cpu_ms_per_req"] for r in rounds)
            report["scenarios"][scenario] = {
                # CPU accounting (steady on a shared machine): the replica's CPU per request with
                # recording off, against that plus what recording adds (submit + writer thread)
                "recording_cpu_ms_per_req": round(writer + submit_us / 1000, 4),
                "submit_us": round(submit_us, 2),
                "writer_cpu_ms_per_req": [r["on"]["writer_cpu_ms_per_req"] for r in rounds],
                "ratio_by_cpu_accounting": round(off_cpu / (off_cpu + writer + submit_us / 1000), 3),
                "median_ratio_on_off": statistics.median(r["ratio"] for r in rounds),
                # the replica's CPU per request off / on: what throughput on a dedicated core would be
                "median_cpu_ratio_off_on": statistics.median(r["cpu_ratio"] for r in rounds),
                "server_cpu_ms_per_req_off": [r["off"]["server_cpu_ms_per_req"] for r in rounds],
                "server_cpu_ms_per_req_on": [r["on"]["server_cpu_ms_per_req"] for r in rounds],
                "off_req_s": [r["off"]["req_s"] for r in rounds],
                "on_req_s": [r["on"]["req_s"] for r in rounds],
                "recorded": [r["on"]["recorder"]["recorded"] for r in rounds],
                "errors": sum(r["on"]["recorder"]["errors"] for r in rounds),
                "dropped": sum(r["on"]["recorder"]["dropped"] for r in rounds),
                "failed_requests": sum(r[k]["failed"] for r in rounds for k in ("on", "off")),
            }
        text = json.dumps(report, indent=2)
        print(text)
        if args.output:
            Path(args.output).write_text(text + "\n")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
