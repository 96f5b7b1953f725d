"""The caller's latency with a shadow challenger on every image vs none (issue 13: within 5 %).

    python bench/bench_shadow.py [--requests 300] [--rounds 3] [--concurrency 1] [--output FILE]

Runs the ADC app's HTTP layer (`serve_apps.api.build_api` around an `AdcService`, a `Recorder`
over a SQLite review DB and a local store, and a `ShadowRunner`, as a Serve replica builds them,
without Ray's proxy) in this process over an ASGI transport, with one torch thread, and sends
`POST /v1/classify` (one PNG per request) `--concurrency` at a time. The same app is reconfigured
between rounds: shadow_rate 0 (off) and 1.0 (every image also classified by a second model of
the same size, off the caller's path); rounds alternate off-on, on-off so that drift on a shared
machine hits both alike. Reports per round the median and p95 caller latency, the median on/off
ratios, and what the shadow ran, dropped and recorded (after a final flush).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--requests", type=int, default=300, help="requests measured per round")
    p.add_argument("--warmup", type=int, default=30, help="requests before measuring, per round")
    p.add_argument("--rounds", type=int, default=3, help="off/on pairs")
    p.add_argument("--concurrency", type=int, default=1, help="requests in flight")
    p.add_argument("--width", type=int, default=24, help="ADCNet width of both models")
    p.add_argument("--output", help="also write the JSON report here")
    return p.parse_args(argv)


async def _round(client, images: list[bytes], n: int, warmup: int, concurrency: int) -> list[float]:
    latencies: list[float] = []
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            t0 = time.perf_counter()
            r = await client.post("/v1/classify", content=images[i % len(images)],
                                  headers={"content-type": "image/png"})
            dt = time.perf_counter() - t0
            if r.status_code != 200:
                raise RuntimeError(f"classify answered {r.status_code}: {r.text[:200]}")
            if i >= warmup:
                latencies.append(dt)

    await asyncio.gather(*(one(i) for i in range(warmup + n)))
    return latencies


def _summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {"median_ms": round(statistics.median(ordered) * 1000, 3),
            "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))] * 1000, 3), "requests": len(ordered)}


async def main_async(args: argparse.Namespace) -> dict:
    import httpx
    import torch

    from data.artifacts import ArtifactStore
    from serve_apps.api import build_api
    from serve_apps.classifier import AdcService
    from serve_apps.recorder import Recorder
    from serve_apps.review_db import ReviewDB
    from serve_apps.shadow import ShadowRunner
    from tests.serve_fixtures import export_tiny_model, synth_png

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench-shadow-"))
    champion, _ = export_tiny_model(tmp / "v1", "1", seed=1, width=args.width)
    challenger, _ = export_tiny_model(tmp / "v2", "2", seed=2, width=args.width)
    db = ReviewDB(f"sqlite:///{tmp}/review.db")
    recorder = Recorder(db, ArtifactStore(str(tmp / "store")), site="bench")
    service = AdcService()
    shadow = ShadowRunner(recorder)
    images = [synth_png(i) for i in range(64)]

    def configure(rate: float) -> None:
        cfg = service.reconfigure({"model_uri": champion, "audit_rate": 0.02, "shadow_model_uri": challenger,
                                   "shadow_rate": rate})
        shadow.configure(cfg, service.model)

    rounds: list[dict] = []
    transport = httpx.ASGITransport(app=build_api(service, recorder=recorder, shadow=shadow))
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        for k in range(args.rounds):
            for mode in (("off", "on") if k % 2 == 0 else ("on", "off")):
                configure(1.0 if mode == "on" else 0.0)
                lat = await _round(client, images, args.requests, args.warmup, args.concurrency)
                shadow.flush(60)  # each round starts with the shadow idle
                rounds.append({"round": k, "shadow": mode, **_summary(lat)})
    recorder.flush(60)
    shadow.close()
    stats = db.shadow_stats("adc-test@2")
    recorder.close()

    def ratio(key: str) -> float:
        pairs = [(next(r[key] for r in rounds if r["round"] == k and r["shadow"] == "on"),
                  next(r[key] for r in rounds if r["round"] == k and r["shadow"] == "off"))
                 for k in range(args.rounds)]
        return round(statistics.median(on / off for on, off in pairs), 4)

    return {"bench": "shadow", "concurrency": args.concurrency, "width": args.width, "rounds": rounds,
            "latency_ratio_median": ratio("median_ms"), "latency_ratio_p95": ratio("p95_ms"),
            "target": "latency_ratio_median <= 1.05",
            "shadow": {k: shadow.counts[k] for k in ("offered", "shadowed", "dropped", "errors")},
            "shadow_rows": stats["shadowed"]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = asyncio.run(main_async(args))
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
