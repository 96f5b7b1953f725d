"""Throughput of artifact transfers (`data.transfer.copy_artifact`) against plain copies of the
same bytes, measured in the same run:

    .venv/bin/python -m bench.bench_transfer [--files 100] [--file-mb 5] [--reps 3] [--output F]

(a) local -> local: a dataset-like artifact (`--files` x `--file-mb` random files) copied into a
    fresh local store, against `cp -r` of the same files; also sha256 of those bytes alone on
    every core, the floor that verification adds to any copy;
(b) local -> S3 (a SeaweedFS server on 127.0.0.1 started here): into a fresh prefix, against
    s3fs's own recursive `put` of the same files;
(c) re-push of the unchanged artifact to both destinations (everything is skipped);
(d) a model-sized artifact (model.pt2 ~1.5 MB + metadata.json) pushed to two fresh destinations
    (a local store and an S3 prefix) `--model-pushes` times: p50/p99 of one whole push.

Each figure is the median of `--reps` runs, taken alternately with its baseline on a warm page
cache. Prints a Markdown table and one JSON document (last on stdout).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import mmap
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from data.artifacts import ArtifactStore  # noqa: E402
from data.publish import publish_artifact  # noqa: E402
from data.transfer import copy_artifact  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--files", type=int, default=100, help="files of the dataset-like artifact")
    p.add_argument("--file-mb", type=float, default=5.0, help="MB per file")
    p.add_argument("--reps", type=int, default=3, help="runs per figure (median reported)")
    p.add_argument("--workers", type=int, default=8, help="copy_artifact workers")
    p.add_argument("--model-pushes", type=int, default=20)
    p.add_argument("--no-s3", action="store_true", help="skip the S3 figures")
    p.add_argument("--output", help="also write the JSON report to this file")
    return p.parse_args(argv)


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def median(xs: list[float]) -> float:
    return round(statistics.median(xs), 4)


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))], 4)


def make_files(folder: Path, count: int, size: int) -> None:
    folder.mkdir(parents=True)
    for i in range(count):
        (folder / "images").mkdir(exist_ok=True)
        (folder / "images" / f"part-{i:05d}.parquet").write_bytes(os.urandom(size))


def sha256_floor(folder: Path) -> float:
    """Seconds to sha256 every file under `folder` on all cores (mmap, no copies)."""

    def digest(path: Path) -> str:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return hashlib.sha256(m).hexdigest()

    files = sorted(p for p in folder.rglob("*") if p.is_file())
    with ThreadPoolExecutor(os.cpu_count() or 1) as ex:
        return timed(lambda: list(ex.map(digest, files)))


def bench_local(args, root: Path, folder: Path, central: ArtifactStore, ref) -> dict:
    ours, cp, floor, checked = [], [], [], []
    for i in range(args.reps):
        dst = root / f"local-{i}"
        ours.append(timed(lambda dst=dst: copy_artifact(central, ArtifactStore(dst), ref, workers=args.workers)))
        shutil.rmtree(dst)
        target = root / f"cp-{i}"
        cp.append(timed(lambda target=target: subprocess.run(["cp", "-r", str(folder), str(target)], check=True)))
        # What verification alone costs: sha256 of the copied bytes, on every core.
        floor.append(sha256_floor(target))
        checked.append(cp[-1] + floor[-1])
        shutil.rmtree(target)
    return {
        "copy_artifact_s": median(ours),
        "cp_r_s": median(cp),
        "sha256_all_cores_s": median(floor),
        "cp_r_then_sha256_s": median(checked),
        "ratio": round(median(cp) / median(ours), 3),
        "ratio_vs_cp_then_sha256": round(median(checked) / median(ours), 3),
        "runs": {"copy_artifact": ours, "cp": cp, "sha256": floor},
    }


def bench_s3(args, server, folder: Path, central: ArtifactStore, ref) -> dict:
    fs = server.filesystem()
    ours, put = [], []
    for _ in range(args.reps):
        dst = ArtifactStore(server.url(), server.storage_options)
        ours.append(timed(lambda dst=dst: copy_artifact(central, dst, ref, workers=args.workers)))
        target = f"{server.bucket}/put-{os.urandom(4).hex()}"
        put.append(timed(lambda target=target: fs.put(str(folder), target, recursive=True)))
    return {
        "copy_artifact_s": median(ours),
        "fsspec_put_s": median(put),
        "ratio": round(median(put) / median(ours), 3),
        "runs": {"copy_artifact": ours, "put": put},
    }


def bench_repush(args, central: ArtifactStore, ref, destinations: dict[str, ArtifactStore]) -> dict:
    out = {}
    for name, dst in destinations.items():
        copy_artifact(central, dst, ref, workers=args.workers)
        runs = []
        for _ in range(max(5, args.reps)):
            started = time.perf_counter()
            r = copy_artifact(central, dst, ref, workers=args.workers)
            runs.append(time.perf_counter() - started)
            assert r.bytes_sent == 0, r
        out[name] = {"seconds": median(runs), "max_s": round(max(runs), 4)}
    return out


def bench_model(args, root: Path, server) -> dict:
    folder = root / "model"
    folder.mkdir()
    (folder / "model.pt2").write_bytes(os.urandom(1_500_000))
    (folder / "metadata.json").write_text(json.dumps({"name": "adc", "version": "1", "classes": ["a", "b"]}))
    central = ArtifactStore(root / "central-models")
    ref = publish_artifact(central, "model", "adc", "1", folder).ref
    pushes = []
    for i in range(args.model_pushes):
        dsts = [ArtifactStore(root / f"site-model-{i}")]
        if server is not None:
            dsts.append(ArtifactStore(server.url(), server.storage_options))
        started = time.perf_counter()
        for dst in dsts:
            copy_artifact(central, dst, ref)
        pushes.append(time.perf_counter() - started)
    return {
        "destinations": "local store + S3 prefix" if server is not None else "local store x1",
        "pushes": len(pushes),
        "p50_s": percentile(pushes, 0.5),
        "p99_s": percentile(pushes, 0.99),
    }


def table(report: dict) -> str:
    total_mb = report["artifact"]["total_mb"]
    lines = [
        "| figure | copy_artifact | baseline | ratio (baseline/ours; target) |",
        "|---|---|---|---|",
    ]
    a = report["local_to_local"]
    lines.append(
        f"| (a) {total_mb:.0f} MB local -> local | {a['copy_artifact_s']:.3f} s | `cp -r` {a['cp_r_s']:.3f} s "
        f"(sha256 alone, all cores: {a['sha256_all_cores_s']:.3f} s) | **{a['ratio']:.2f}** (>= 0.8) |"
    )
    lines.append(
        f"| (a') same, against `cp -r` then sha256 of the copy | {a['copy_artifact_s']:.3f} s | "
        f"{a['cp_r_then_sha256_s']:.3f} s | {a['ratio_vs_cp_then_sha256']:.2f} |"
    )
    if "local_to_s3" in report:
        b = report["local_to_s3"]
        lines.append(
            f"| (b) {total_mb:.0f} MB local -> S3 | {b['copy_artifact_s']:.3f} s | fsspec `put` "
            f"{b['fsspec_put_s']:.3f} s | **{b['ratio']:.2f}** (>= 0.8) |"
        )
    for name, r in report["repush"].items():
        lines.append(
            f"| (c) re-push unchanged, {name} | {r['seconds']:.3f} s (max {r['max_s']:.3f}) | | (< 1 s) |"
        )
    d = report["model_push"]
    lines.append(
        f"| (d) model push ({d['destinations']}), {d['pushes']}x | p50 {d['p50_s']:.3f} s, "
        f"p99 {d['p99_s']:.3f} s | | |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="adcp-bench-transfer-"))
    server = None
    try:
        size = int(args.file_mb * 1e6)
        folder = root / "dataset"
        make_files(folder, args.files, size)
        central = ArtifactStore(root / "central")
        ref = publish_artifact(central, "dataset", "bench", "1", folder).ref
        report: dict = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": {
                "cpus": os.cpu_count(),
                "cpu": platform.processor() or platform.machine(),
                "python": platform.python_version(),
            },
            "artifact": {"files": args.files, "total_mb": args.files * size / 1e6},
            "settings": vars(args),
        }
        report["local_to_local"] = bench_local(args, root, folder, central, ref)
        destinations = {"local": ArtifactStore(root / "site-repush")}
        if not args.no_s3:
            from tests.s3_server import S3Server

            server = S3Server().start()
            report["local_to_s3"] = bench_s3(args, server, folder, central, ref)
            destinations["S3"] = ArtifactStore(server.url(), server.storage_options)
        report["repush"] = bench_repush(args, central, ref, destinations)
        report["model_push"] = bench_model(args, root, server)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)
    text = json.dumps(report, indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n")
    print(table(report), flush=True)
    print(text, flush=True)


if __name__ == "__main__":
    main()
