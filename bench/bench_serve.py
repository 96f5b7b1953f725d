"""Throughput of the ADC Serve app against a bare batched torch forward of the same model.

    python bench/bench_serve.py --model-dir DIR [--duration 15] [--concurrency 32] ...

Starts a private local Ray (its own temp dir and token), deploys `serve_apps.adc` with the
given settings, drives each endpoint with a concurrent httpx client for `--duration` seconds,
and prints one JSON document: req/s, img/s, p50/p99 latency per endpoint, the bare-torch
baseline (same model, same thread count as a replica, batch = max_batch_size) and ratios.
`--url` measures an app that is already running instead (no Ray is started then).
Per endpoint it also reports CPU milliseconds per image of the client, the Serve proxy and each
replica (from /proc): on a shared machine that is steadier than req/s.

What was measured on the 2-core dev box (width-24 ADCNet, 64 px; see the Serve report):
forward on the replica's event loop (not a worker thread) and one replica with 1 CPU were best;
2 replicas, RAY_SERVE_THROUGHPUT_OPTIMIZED=1 through the proxy, larger batch_wait_timeout_s and
more client concurrency did not help; the proxy's CPU per request is the largest fixed cost.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model-dir", required=True, help="exported model directory (fsspec URL)")
    p.add_argument("--url", help="benchmark this running app instead of starting Ray")
    p.add_argument("--output", help="also write the JSON report to this file")
    p.add_argument("--duration", type=float, default=15.0, help="seconds per endpoint")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    p.add_argument("--concurrency", type=int, default=32, help="requests in flight (single)")
    p.add_argument("--batch-concurrency", type=int, default=4, help="requests in flight (batch)")
    p.add_argument("--batch-images", type=int, default=256, help="images per batch request")
    p.add_argument("--endpoints", default="single,batch,oip", help="comma list: single,batch,oip")
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--batch-wait-timeout-s", type=float, default=0.002)
    p.add_argument("--max-ongoing-requests", type=int, default=256)
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--replica-cpus", type=float, default=1.0)
    p.add_argument("--num-cpus", type=int, default=4, help="logical CPUs of the local Ray")
    p.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Serve's per-request access log line in the replica (on by default in Serve)",
    )
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment for the whole local Ray (e.g. RAY_SERVE_THROUGHPUT_OPTIMIZED=1)",
    )
    return p.parse_args(argv)


# --- payloads ---------------------------------------------------------------------------------


def images(meta, n: int) -> list[bytes]:
    from PIL import Image

    from data.synth import render

    out = []
    for i in range(n):
        buf = io.BytesIO()
        pixels = render(11, i, meta.input.size)[0]
        Image.fromarray(pixels).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def multipart(files: list[bytes]) -> tuple[bytes, str]:
    """A multipart/form-data body built once, so the client spends no CPU encoding it."""
    boundary = secrets.token_hex(16)
    parts = []
    for i, data in enumerate(files):
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; '
            f'filename="img-{i}.png"\r\nContent-Type: image/png\r\n\r\n'.encode()
        )
        parts.append(data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


# --- baseline ---------------------------------------------------------------------------------


def bare_torch(model_dir: str, threads: int, batch: int, seconds: float, pngs: list[bytes]) -> dict:
    """img/s of `model(x)` alone at `batch`, and of decode + preprocess + forward."""
    import torch

    from data.preprocess import decode_image
    from serve_apps.classifier import load_model, preprocess

    torch.set_num_threads(threads)
    model = load_model(model_dir)
    spec = model.meta.input
    x = np.random.default_rng(0).normal(size=(batch, spec.channels, spec.size, spec.size))
    x = x.astype(np.float32)

    def rate(fn, n_per_call: int) -> float:
        fn()
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            fn()
            n += n_per_call
        return n / (time.perf_counter() - start)

    forward = rate(lambda: model.forward(x), batch)
    chunk = [pngs[i % len(pngs)] for i in range(batch)]
    full = rate(
        lambda: model.forward(preprocess([decode_image(b) for b in chunk], model.meta)), batch
    )
    return {
        "threads": threads,
        "batch_size": batch,
        "forward_img_per_s": round(forward, 1),
        "decode_preprocess_forward_img_per_s": round(full, 1),
    }


# --- CPU accounting (Linux /proc; on a shared machine CPU per request is steadier than req/s) ---


def serve_processes(marker: str) -> dict[str, int]:
    """pids of this run's Serve proxy and replicas (found by `marker` in their environment)."""
    found: dict[str, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{d}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if marker.encode() not in env:
            continue
        if cmd.startswith("ray::ProxyActor"):
            found["proxy"] = int(d)
        elif cmd.startswith("ray::ServeReplica:adc"):
            found[f"replica-{len([k for k in found if k.startswith('replica')])}"] = int(d)
    return found


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return float("nan")


# --- load -------------------------------------------------------------------------------------


async def drive(
    url: str,
    make_request,
    images_per_request: int,
    concurrency: int,
    warmup: float,
    duration: float,
    processes: dict[str, int] | None = None,
) -> dict:
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    measuring = False
    stop_at = float("inf")

    async def worker(client: httpx.AsyncClient, w: int) -> None:
        i = w
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            try:
                r = await make_request(client, i)
                ok = r.status_code == 200
                if not ok:
                    errors.append(f"{r.status_code} {r.text[:200]}")
            except httpx.HTTPError as e:
                ok = False
                errors.append(repr(e))
            if measuring and ok:
                latencies.append(time.perf_counter() - t0)
            i += concurrency

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        stop_at = time.perf_counter() + warmup + duration
        tasks = [asyncio.create_task(worker(client, w)) for w in range(concurrency)]
        await asyncio.sleep(warmup)
        measuring, errors[:] = True, []
        procs = {"client": os.getpid(), **(processes or {})}
        cpu0 = {k: cpu_seconds(p) for k, p in procs.items()}
        start = time.perf_counter()
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
        cpu1 = {k: cpu_seconds(p) for k, p in procs.items()}
    n = len(latencies)
    lat = np.array(latencies) * 1000 if n else np.array([float("nan")])
    return {
        "concurrency": concurrency,
        "images_per_request": images_per_request,
        "requests": n,
        "errors": len(errors),
        "first_errors": errors[:3],
        "req_per_s": round(n / elapsed, 1),
        "img_per_s": round(n * images_per_request / elapsed, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 1),
        "p99_ms": round(float(np.percentile(lat, 99)), 1),
        "cpu_ms_per_image": {
            k: round((cpu1[k] - cpu0[k]) * 1000 / max(1, n * images_per_request), 2) for k in procs
        },
    }


async def run_load(
    args: argparse.Namespace, url: str, pngs: list[bytes], processes: dict[str, int]
) -> dict:
    import base64

    results: dict[str, dict] = {}
    endpoints = [e.strip() for e in args.endpoints.split(",") if e.strip()]
    png = {"content-type": "image/png"}
    if "single" in endpoints:

        async def single(client, i):
            return await client.post("/v1/classify", content=pngs[i % len(pngs)], headers=png)

        results["single"] = await drive(
            url, single, 1, args.concurrency, args.warmup, args.duration, processes
        )
    if "batch" in endpoints:
        body, ctype = multipart([pngs[i % len(pngs)] for i in range(args.batch_images)])

        async def batch(client, i):
            return await client.post(
                "/v1/classify/batch", content=body, headers={"content-type": ctype}
            )

        results["batch"] = await drive(
            url, batch, args.batch_images, args.batch_concurrency, args.warmup, args.duration,
            processes,
        )
    if "oip" in endpoints:
        data = [base64.b64encode(pngs[i % len(pngs)]).decode() for i in range(args.batch_images)]
        req = json.dumps(
            {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(data)], "data": data}]}
        ).encode()

        async def oip(client, i):
            return await client.post(
                "/v2/models/adc/infer", content=req, headers={"content-type": "application/json"}
            )

        results["oip_infer"] = await drive(
            url, oip, args.batch_images, args.batch_concurrency, args.warmup, args.duration,
            processes,
        )
    return results


# --- main -------------------------------------------------------------------------------------


def start_serve(args: argparse.Namespace, root: Path) -> str:
    """Start a private local Ray + Serve and deploy the app; its base URL."""
    token = root / "token"
    token.write_text(secrets.token_hex(32))
    # Before `import ray`: Ray reads its auth mode when it is first imported.
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    os.environ.pop("RAY_ADDRESS", None)
    for kv in args.env:
        key, _, value = kv.partition("=")
        os.environ[key] = value
    import socket

    import ray
    from ray import serve

    from serve_apps.adc import ADCDeployment

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(
        address="local",
        num_cpus=args.num_cpus,
        object_store_memory=200 * 1024**2,
        include_dashboard=False,
        _temp_dir=str(root / "ray"),
        log_to_driver=False,
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = ADCDeployment.options(
        num_replicas=args.replicas,
        max_ongoing_requests=args.max_ongoing_requests,
        ray_actor_options={"num_cpus": args.replica_cpus},
        logging_config={"enable_access_log": args.access_log},
        user_config={
            "model_uri": args.model_dir,
            "max_batch_size": args.max_batch_size,
            "batch_wait_timeout_s": args.batch_wait_timeout_s,
            "max_images_per_request": max(512, args.batch_images),
        },
    ).bind()
    serve.run(app, name="adc", route_prefix="/")
    return f"http://127.0.0.1:{port}"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from data.model_format import read_metadata

    meta = read_metadata(args.model_dir)
    pngs = images(meta, 64)
    threads = max(1, int(args.replica_cpus))
    report: dict = {
        "model": meta.model_id,
        "settings": {k: v for k, v in vars(args).items() if k not in ("url",)},
        "cpu_count": os.cpu_count(),
    }
    # The baseline runs first, alone, in this process (nothing of Ray is running yet).
    report["bare_torch"] = bare_torch(args.model_dir, threads, args.max_batch_size, 5.0, pngs)
    root = Path(tempfile.mkdtemp(prefix="adcpb-", dir="/tmp"))
    try:
        url = args.url or start_serve(args, root)
        processes = {} if args.url else serve_processes(str(root / "token"))
        report["endpoints"] = asyncio.run(run_load(args, url, pngs, processes))
    finally:
        if not args.url:
            import ray
            from ray import serve

            if ray.is_initialized():
                serve.shutdown()
                ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    bare = report["bare_torch"]["forward_img_per_s"]
    report["ratios_vs_bare_forward"] = {
        name: round(r["img_per_s"] / bare, 3) for name, r in report["endpoints"].items()
    }
    text = json.dumps(report, indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n")
    # Last on stdout (Ray may print shutdown messages before it).
    print(text, flush=True)


if __name__ == "__main__":
    main()
