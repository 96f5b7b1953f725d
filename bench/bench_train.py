"""Ray Train samples/s against a plain single-process torch loop on the same data, same run.

    python bench/bench_train.py [--images 6000] [--epochs 4]

Both train the same ADCNet with the same batch size per step on the same decoded training split.
The baseline is the whole machine for one process (torch threads = cores); Ray Train runs as the
platform runs it: a Ray job at a local site, two workers, Ray Data feeding decode + augmentation.
Reported: steady-state samples/s (median epoch after the first), end-to-end seconds, and ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from configs import SynthConfig, load_defaults
from coordinator.cli.client import CoordinatorClient, resolve
from coordinator.cli.upload import Upload
from data.artifacts import ArtifactRef, ArtifactStore
from data.dataset import open_dataset, write_synthetic
from data.model_format import read_metadata
from data.preprocess import decode_image, normalize
from data.schema import DEFECT_CLASSES, split_of
from tests.platform_fixtures import running_platform
from train_jobs.model import ADCNet


def plain_loop(dataset_url: str, epochs: int, batch: int, width: int) -> dict:
    ds = open_dataset(dataset_url)
    labels = ds.labels()
    table = ds.read_images(["image_id", "image"])
    pairs = [(i, b) for i, b in zip(table.column("image_id").to_pylist(), table.column("image").to_pylist())
             if split_of(i) == "train"]
    x = torch.from_numpy(normalize(np.stack([decode_image(b) for _, b in pairs])))
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.tensor([DEFECT_CLASSES.index(labels[i]) for i, _ in pairs])
    torch.set_num_threads(os.cpu_count() or 1)
    model = ADCNet(len(DEFECT_CLASSES), width=width).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=4e-3)
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(len(x))
        for s in range(0, len(x), batch):
            idx = perm[s : s + batch]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t0)
    steady = statistics.median(times[1:] or times)
    return {"samples_per_s": len(x) / steady, "epoch_seconds": times, "rows": len(x)}


def ray_train(home: Path, images: int, epochs: int, batch_per_worker: int, width: int) -> dict:
    """Train through the coordinator at a local site (as `adcp train --for fab-a --on fab-a` does);
    epoch seconds from the `epoch N/M ... (S s)` lines of the job's log."""
    defaults = load_defaults()
    site = defaults.site
    with running_platform(home, {site.name: {"num_cpus": site.num_cpus, "object_store_mb": site.object_store_mb}}):
        client = CoordinatorClient(resolve(home, home_given=True))
        data_dir = home.parent / "bench-data"
        upload = Upload(client, "dataset", "bench")
        ds = write_synthetic(data_dir.as_uri(), SynthConfig(images=images, seed=1), name="bench",
                             version=upload.version)
        upload.send(data_dir, meta={"rows": ds.manifest["rows"]})
        started = time.perf_counter()
        job = client.call("POST", "/jobs", json={"origin": site.name, "on": site.name, "dataset": "bench",
                                                 "epochs": epochs, "batch_size": batch_per_worker,
                                                 "options": {"width": width}})
        while job["status"] not in ("succeeded", "failed", "stopped"):
            time.sleep(1)  # poll interval of a run that takes minutes
            job = client.call("GET", f"/jobs/{job['id']}")
        total = time.perf_counter() - started
        if job["status"] != "succeeded":
            raise SystemExit(f"training failed: {job['error']}")
        logs = client.call("GET", f"/jobs/{job['id']}/logs")
        meta = read_metadata(ArtifactStore((home / "store").as_uri()).manifest_url(
            ArtifactRef.parse(job["outcome"]["artifact"])))
    seconds = [float(m) for m in re.findall(r"epoch \d+/\d+ loss=.*\(([\d.]+)s\)", logs)]
    rows = meta.metrics["train_rows"]
    steady = statistics.median(seconds[1:] or seconds)
    return {"samples_per_s": rows / steady, "epoch_seconds": seconds, "rows": rows, "job_seconds": total,
            "workers": defaults.train_config(dataset="-", output="-").num_workers, "dataset_url": data_dir.as_uri()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--out", type=Path, default=None, help="Also write the JSON here.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="adcp-bench-") as tmp:
        workers = load_defaults().train_config(dataset="-", output="-").num_workers
        batch = load_defaults().train_config(dataset="-", output="-").batch_size
        ray = ray_train(Path(tmp) / "home", args.images, args.epochs, batch, args.width)
        plain = plain_loop(ray.pop("dataset_url"), args.epochs, batch * workers, args.width)
    result = {
        "machine": {"cpus": os.cpu_count(), "torch": torch.__version__},
        "images": args.images, "epochs": args.epochs, "global_batch": batch * workers,
        "plain_torch": plain, "ray_train": ray,
        "ratio_steady": ray["samples_per_s"] / plain["samples_per_s"],
        "ratio_end_to_end": (ray["rows"] * args.epochs / ray["job_seconds"]) / plain["samples_per_s"],
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
