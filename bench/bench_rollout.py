"""Model rollout to two local sites through the coordinator's HTTP API (`POST /api/v1/models/.../deploy`,
what `adcp model deploy adc@N --to fab-a,fab-b` runs): ship model + code bundle (already there
after the first rollout: skipped), PUT the Serve config through each site's gateway, wait until
the new version answers at each site's Serve endpoint.

    .venv/bin/python -m bench.bench_rollout [--rollouts 20] [--load-threads 0] [--cli 3] [--output F]

Two local sites (`num_cpus: 2` each) under one coordinator, as `adcp up` starts them; two tiny
models; a first rollout (Serve starts: reported, not counted); then `--rollouts` rollouts
alternating the two versions to both sites. The figure is each site's `seconds`: from the
rollout call to the new version answering there with the app RUNNING, p50/p99 over every site and
rollout. `--load-threads N` keeps N clients per site classifying during the rollouts (and counts
failed requests); `--cli N` also times N rollouts as `adcp model deploy` processes (wall clock of
the whole process, interpreter start and imports included).
"""

from __future__ import annotations

import argparse
import json
import os
import platform as host
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from coordinator import process as server  # noqa: E402
from coordinator.cli.client import CoordinatorClient, resolve  # noqa: E402
from data.artifacts import ArtifactStore  # noqa: E402
from data.publish import publish_artifact  # noqa: E402
from tests.platform_fixtures import platform_yaml  # noqa: E402
from tests.serve_fixtures import export_tiny_model, synth_png  # noqa: E402

PLATFORM = platform_yaml(dict.fromkeys(("fab-a", "fab-b"), {}))
SITES = ["fab-a", "fab-b"]
ADCP = Path(sys.executable).parent / "adcp"  # the console script of this venv


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50": round(percentile(values, 0.5), 3), "p99": round(percentile(values, 0.99), 3),
            "mean": round(statistics.fmean(values), 3), "max": round(max(values), 3)}


class Load:
    """`threads` clients per site posting one PNG at a time to /v1/classify until stopped."""

    def __init__(self, urls: dict[str, str], threads: int) -> None:
        self.urls, self.stop = urls, threading.Event()
        self.answers: Counter[str] = Counter()
        self.failures: list[str] = []
        self.blobs = [synth_png(i) for i in range(16)]
        self.threads = [threading.Thread(target=self._run, args=(s, k), daemon=True)
                        for s in urls for k in range(threads)]

    def _run(self, site: str, offset: int) -> None:
        with httpx.Client(timeout=60) as client:
            i = offset
            while not self.stop.is_set():
                try:
                    r = client.post(f"{self.urls[site]}/v1/classify", content=self.blobs[i % len(self.blobs)],
                                    headers={"Content-Type": "image/png"})
                    if r.status_code == 200:
                        self.answers[site] += 1
                    else:
                        self.failures.append(f"{site}: {r.status_code}")
                except httpx.HTTPError as e:
                    self.failures.append(f"{site}: {e!r}")
                i += 1

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rollouts", type=int, default=20)
    p.add_argument("--load-threads", type=int, default=0, help="classifying clients per site during rollouts")
    p.add_argument("--cli", type=int, default=0, help="also time this many rollouts as `adcp model deploy` processes")
    p.add_argument("--output", help="also write the JSON report to this file")
    args = p.parse_args(argv)
    report: dict = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
                    "python": host.python_version(), "rollouts": args.rollouts, "load_threads": args.load_threads,
                    "loadavg_before": [round(x, 1) for x in os.getloadavg()]}
    with tempfile.TemporaryDirectory(prefix="adcp-bench-rollout-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        platform_file = Path(tmp) / "platform.yaml"
        platform_file.write_text(PLATFORM)
        try:
            started = time.monotonic()
            server.up(home, platform_file)
            report["sites_up_s"] = round(time.monotonic() - started, 1)
            client = CoordinatorClient(resolve(home, home_given=True))  # rollouts run in the coordinator

            def deploy(version: str) -> list[dict]:
                return client.call("POST", f"/models/adc/{version}/deploy", json={"to": SITES})

            central = ArtifactStore((home / "store").as_uri())
            for version in ("1", "2"):
                folder = Path(tmp) / f"adc-{version}"
                export_tiny_model(folder, version, seed=int(version), name="adc")
                publish_artifact(central, "model", "adc", version, folder)
            first = deploy("1")
            report["first_rollout_s"] = {r["site"]: r["seconds"] for r in first}  # Serve starts here
            urls = {s: client.call("GET", f"/sites/{s}/env")["serve_url"] for s in SITES}
            per_site: dict[str, list[float]] = {s: [] for s in SITES}
            whole: list[float] = []
            with Load(urls, args.load_threads) as load:
                for i in range(args.rollouts):
                    t0 = time.monotonic()
                    rows = deploy(str(2 - i % 2))
                    whole.append(time.monotonic() - t0)
                    for r in rows:
                        per_site[r["site"]].append(r["seconds"])
                    print(f"rollout {i + 1}/{args.rollouts} adc@{2 - i % 2}: "
                          + ", ".join(f"{r['site']} {r['seconds']:.2f} s" for r in rows), file=sys.stderr)
            every = [s for values in per_site.values() for s in values]
            report["seconds_to_serving"] = summary(every)
            report["per_site"] = {s: summary(v) for s, v in per_site.items()}
            report["whole_rollout_s"] = summary(whole)
            if args.load_threads:
                report["requests_answered"] = dict(load.answers)
                report["requests_failed"] = len(load.failures)
            if args.cli:
                walls, reported = [], []
                served = next(m["ref"] for m in client.call("GET", "/models") if "fab-a" in m["serving_at"])
                for _ in range(args.cli):
                    version = "1" if served.endswith("@2") else "2"
                    t0 = time.monotonic()
                    out = subprocess.run([str(ADCP), "--home", str(home), "model", "deploy",
                                          f"adc@{version}", "--to", ",".join(SITES), "--json"],
                                         cwd=REPO, capture_output=True, text=True, check=True).stdout
                    walls.append(time.monotonic() - t0)
                    reported += [r["seconds"] for r in json.loads(out)]
                    served = f"model/adc@{version}"
                report["cli_process_wall_s"] = summary(walls)
                report["cli_reported_s"] = summary(reported)
        finally:
            server.down(home)
    report["loadavg_after"] = [round(x, 1) for x in os.getloadavg()]
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
