"""Peak memory and speed of importing a factory's images (`data.importer.import_source`):

    .venv/bin/python -m bench.bench_import [--images 100000] [--output F]

Generates `--images` small images (24x24 grey PNGs and BMPs, 2 % exact duplicates, 0.1 %
truncated files) in a folder per class, then in a FRESH process each (so the figure is the
import's alone): (a) the first import into an empty local store, (b) a re-import of the same
folder (nothing changes), (c) a re-import after 100 new images were added. For each: wall seconds,
images per second and the process's peak RSS (`resource.getrusage(RUSAGE_SELF).ru_maxrss`).
Target: peak RSS under 1 GiB at 100,000 images. Prints a Markdown table and one JSON document.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

CLASSES = ("short", "open", "particle", "scratch")
GIB = 1 << 30


def generate(folder: Path, n: int, start: int = 0, seed: int = 0) -> dict[str, int]:
    """`n` images under folder/<class>/; returns counts of what was written."""
    rng = np.random.default_rng(seed + start)
    for c in CLASSES:
        (folder / c).mkdir(parents=True, exist_ok=True)
    dup_every, cut_every = 50, 1000
    last: dict[str, bytes] = {}  # per class: a duplicate keeps its label
    counts = {"files": 0, "duplicates": 0, "truncated": 0}
    for i in range(start, start + n):
        cls = CLASSES[i % len(CLASSES)]
        if i % dup_every == dup_every - 1 and cls in last:
            data, ext = last[cls], "png"
            counts["duplicates"] += 1
        else:
            pixels = rng.integers(0, 255, (24, 24), dtype=np.uint8)
            buf = io.BytesIO()
            ext = "bmp" if i % 5 == 0 else "png"
            Image.fromarray(pixels).save(buf, ext.upper())
            data = buf.getvalue()
            if ext == "png":
                last[cls] = data
            if i % cut_every == cut_every - 7:
                data = data[: len(data) // 2]
                counts["truncated"] += 1
        (folder / cls / f"{i:07d}.{ext}").write_bytes(data)
        counts["files"] += 1
    return counts


_CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from data.artifacts import ArtifactStore
from data.importer import import_source
t0 = time.monotonic()
report = import_source(ArtifactStore(sys.argv[2]), sys.argv[3], "bench")
seconds = time.monotonic() - t0
peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_rss_bytes": peak_kib * 1024, "dataset": report["dataset"],
                  "images": report["images"], "new": report["new"], "unchanged": report["unchanged"],
                  "rejected": len(report["rejected"]), "changed": report["changed"],
                  "bytes": report["bytes"], "bytes_sent": report["bytes_sent"], "files": report["files"]}))
"""


def run_import(store: Path, src: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(REPO), str(store), str(src)], check=True,
                         capture_output=True, text=True)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row["images_per_s"] = round(row["files"] / row["seconds"], 1)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--output", type=Path, default=None, help="Also write the JSON document here.")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="adcp-bench-import-") as tmp:
        src, store = Path(tmp) / "src", Path(tmp) / "store"
        t0 = time.monotonic()
        made = generate(src, args.images)
        gen_s = time.monotonic() - t0
        runs = {"first": run_import(store, src), "unchanged": run_import(store, src)}
        generate(src, 100, start=args.images, seed=1)
        runs["100_new"] = run_import(store, src)
    doc = {
        "images": args.images, "generated": made, "generate_seconds": round(gen_s, 1), "runs": runs,
        "target_peak_rss_bytes": GIB, "met": all(r["peak_rss_bytes"] < GIB for r in runs.values()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
    }
    print("| import | files | images | new | refused | s | images/s | peak RSS MiB | sent MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in runs.items():
        print(f"| {name} | {r['files']} | {r['images']} | {r['new']} | {r['rejected']} | {r['seconds']:.1f} | "
              f"{r['images_per_s']:.0f} | {r['peak_rss_bytes'] / 2**20:.0f} | {r['bytes_sent'] / 2**20:.1f} |")
    text = json.dumps(doc, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text)
    return 0 if doc["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
