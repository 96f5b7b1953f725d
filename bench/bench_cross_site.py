"""Cross-site overhead: planning + shipping + submission + bringing the model home, against the
training itself, for a ~100 MB dataset trained for fab-a at fab-b.

    .venv/bin/python -m bench.bench_cross_site [--images 24000] [--epochs 1]

Starts the coordinator and two local sites in a temp home (`adcp up`), synthesises the dataset,
runs `adcp train --for fab-a --on fab-b` through the coordinator's API and reads the phases from
the job record and the Ray job at fab-b:
  plan      the API's /jobs/plan call (live capacity of both sites through their gateways)
  ship      job accepted -> Ray job submitted (dataset + code bundle pushed, verified)
  queue     Ray job submitted -> Ray job started at fab-b
  training  Ray job start -> end at fab-b (Ray Train start-up included: it is the job itself)
  home      Ray job end -> model in the central store and at fab-a, registered
Overhead = plan + ship + queue + home (target < 15 s). Stops everything by process id.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from coordinator import process as server  # noqa: E402
from coordinator.center.core import Center  # noqa: E402
from coordinator.cli.client import CoordinatorClient, resolve  # noqa: E402
from coordinator.cli.main import main as adcp  # noqa: E402
from data.artifacts import ArtifactRef  # noqa: E402
from tests.platform_fixtures import platform_yaml  # noqa: E402

PLATFORM = platform_yaml({"fab-a": {"num_cpus": 4, "object_store_mb": 400},
                          "fab-b": {"num_cpus": 4, "num_gpus": 2, "object_store_mb": 400}})


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--images", type=int, default=24000, help="images of the dataset (~4.3 KB each at 64 px)")
    p.add_argument("--epochs", type=int, default=1)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="adcp-bench-cross-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        (Path(tmp) / "platform.yaml").write_text(PLATFORM)
        base = ["--home", str(home)]
        assert adcp([*base, "--platform", str(Path(tmp) / "platform.yaml"), "up"]) == 0
        try:
            assert adcp([*base, "data", "synth", "--name", "big", "--images", str(args.images)]) == 0
            center = Center.open(home)
            size = center.central.manifest(ArtifactRef("dataset", "big")).total_bytes
            client = CoordinatorClient(resolve(home, home_given=True), timeout_s=600)
            body = {"origin": "fab-a", "on": "fab-b", "dataset": "big@1", "epochs": args.epochs}
            t0 = time.time()
            client.call("POST", "/jobs/plan", json=body)
            t_plan = time.time() - t0
            job = client.call("POST", "/jobs", json=body)
            while job["status"] not in ("succeeded", "failed", "stopped"):
                time.sleep(0.5)
                job = client.call("GET", f"/jobs/{job['id']}")
            assert job["status"] == "succeeded", job["error"]
            a = job["attempts"][0]
            info = center.gateway("fab-b").job_client().get_job_info(a["submission_id"])
            start, end = info.start_time / 1000, info.end_time / 1000
            phases = {
                "plan": t_plan,
                "ship": a["submitted_at"] - a["started_at"],
                "queue": max(0.0, start - a["submitted_at"]),
                "training": end - start,
                "home": job["outcome"]["home_at"] - end,
            }
        finally:
            adcp([*base, "down"])
            server.stop(home)
    overhead = phases["plan"] + phases["ship"] + phases["queue"] + phases["home"]
    report = {"dataset_mb": round(size / 1e6, 1), "epochs": args.epochs,
              **{k: round(v, 2) for k, v in phases.items()}, "overhead_s": round(overhead, 2),
              "overhead_share": round(overhead / (overhead + phases["training"]), 3)}
    print("| figure | value |\n|---|---|")
    for k, v in report.items():
        print(f"| {k} | {v} |")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
