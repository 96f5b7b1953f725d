"""Push of one model to two sites through the coordinator's HTTP API (`POST /api/v1/transfers`,
what `adcp push model/... --to fab-a,fab-b` calls; `wait=true`, so the figure holds the HTTP round
trip too): plan, both destinations in parallel, verification, manifest last, and the transfer
records in SQLite, all inside the running coordinator process.

    .venv/bin/python -m bench.bench_push [--pushes 20] [--model-mb 1.5]

Each push sends a new model version (so every object is really sent); the figure is seconds per
whole push (both sites done), p50/p99 over `--pushes`. Baseline in the same run: a plain
`shutil.copyfile` of the same two files to both destinations, one after the other.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from coordinator import process  # noqa: E402
from coordinator.cli.client import CoordinatorClient, resolve  # noqa: E402
from data.artifacts import ArtifactStore  # noqa: E402
from data.publish import publish_artifact  # noqa: E402

PLATFORM = """
center:
  state_db: "{home}/coordinator.db"
  store: {url: "{home}/store"}
sites: []
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pushes", type=int, default=20)
    p.add_argument("--model-mb", type=float, default=1.5)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="adcp-bench-push-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        platform = Path(tmp) / "platform.yaml"
        platform.write_text(PLATFORM)
        process.up(home, platform)
        client = CoordinatorClient(resolve(home, home_given=True))
        central = ArtifactStore((home / "store").as_uri())
        for site in ("fab-a", "fab-b"):
            client.call("POST", "/sites", json={"name": site, "dashboard": "http://127.0.0.1:9",
                                                "store": str(Path(tmp) / site / "store")})
        ours, plain = [], []
        for i in range(args.pushes):
            src = Path(tmp) / f"model-{i}"
            src.mkdir()
            (src / "model.pt2").write_bytes(os.urandom(int(args.model_mb * 1e6)))
            (src / "metadata.json").write_text(json.dumps({"name": "adc", "version": str(i + 1)}))
            ref = publish_artifact(central, "model", "adc", str(i + 1), src).ref
            started = time.perf_counter()
            done = client.call("POST", "/transfers", params={"wait": "true"},
                               json={"artifact": str(ref), "to": ["fab-a", "fab-b"]})
            ours.append(time.perf_counter() - started)
            assert all(r["objects_verified"] == 2 for r in done["results"])
            started = time.perf_counter()
            for site in ("fab-a", "fab-b"):
                dest = Path(tmp) / "plain" / site / str(i)
                dest.mkdir(parents=True)
                for f in src.iterdir():
                    shutil.copyfile(f, dest / f.name)
            plain.append(time.perf_counter() - started)
        client.close()
        process.down(home)
    report = {
        "pushes": args.pushes,
        "model_mb": args.model_mb,
        "push_p50_s": round(statistics.median(ours), 4),
        "push_p99_s": round(percentile(ours, 0.99), 4),
        "plain_copy_p50_s": round(statistics.median(plain), 4),
        "ratio_plain_over_push_p50": round(statistics.median(plain) / statistics.median(ours), 3),
    }
    print("| figure | value |\n|---|---|")
    for k, v in report.items():
        print(f"| {k} | {v} |")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
