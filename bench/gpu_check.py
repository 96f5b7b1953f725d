"""GPU paths, checked on a machine with CUDA (no Ray there): the training step of the train job on
`cuda` (the same `train_epoch` the Ray Train workers run, channels-last, class-weighted loss),
export of the GPU-trained model, and the Serve app's model loader on `cuda` against the same model
on CPU. Prints one JSON line `ADCP_GPU_CHECK {...}` and exits non-zero when a check fails.

    python bench/gpu_check.py [--images 3000] [--epochs 4] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from data.preprocess import input_spec, to_model_input  # noqa: E402
from data.schema import DEFECT_CLASSES, NO_DEFECT_CLASSES  # noqa: E402
from data.synth import render  # noqa: E402
from serve_apps.classifier import load_model  # noqa: E402
from train_jobs.export import export_model  # noqa: E402
from train_jobs.model import ADCNet  # noqa: E402
from train_jobs.steps import class_weights, evaluate, train_epoch  # noqa: E402
from train_jobs.train import gpu_plan  # noqa: E402


def _data(n: int, seed: int, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    pix, labels = [], []
    for i in range(n):
        img, label, _, _ = render(seed, i, 64)
        pix.append(img)
        labels.append(classes.index(label))
    return to_model_input(pix, 64), np.array(labels)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--out", default=None)
    ap.add_argument("--cpu-smoke", action="store_true", help="run the same steps on CPU (checks the script)")
    args = ap.parse_args()
    report: dict = {"torch": torch.__version__, "cuda": torch.cuda.is_available()}
    device_name, absent = gpu_plan(True, 1)
    report.update(train_device=device_name, gpu_absent=absent)
    if device_name != "cuda" and not args.cpu_smoke:
        print("ADCP_GPU_CHECK " + json.dumps(report))
        return 1
    gpu = "cpu" if args.cpu_smoke else "cuda"
    report["gpu"] = torch.cuda.get_device_name(0) if gpu == "cuda" else "none (cpu smoke run)"
    classes = sorted(set(DEFECT_CLASSES) | set(NO_DEFECT_CLASSES))
    x, y = _data(args.images, 0, classes)
    xv, yv = _data(600, 1, classes)
    dev = torch.device(gpu)
    weights = class_weights(classes, list(NO_DEFECT_CLASSES), 2.0).to(dev)
    model = ADCNet(len(classes), in_channels=1, width=16).to(dev, memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=4e-3, weight_decay=5e-4)
    xt, yt = torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev)
    bs, step = 64, 0
    total = args.epochs * ((len(x) + bs - 1) // bs)
    started = time.perf_counter()
    for _epoch in range(args.epochs):
        perm = torch.randperm(len(xt), device=dev)
        batches = ((xt[perm[i:i + bs]], yt[perm[i:i + bs]]) for i in range(0, len(xt), bs))
        loss_sum, seen, _, step = train_epoch(model, opt, batches, weights=weights, max_lr=4e-3,
                                              total_steps=total, step=step)
    if gpu == "cuda":
        torch.cuda.synchronize()
    report["train_seconds"] = round(time.perf_counter() - started, 2)
    report["samples_per_s"] = round(args.epochs * len(x) / report["train_seconds"], 1)
    report["last_epoch_loss"] = round(float(loss_sum / seen), 4)
    xvt, yvt = torch.from_numpy(xv).to(dev), torch.from_numpy(yv).to(dev)
    val = evaluate(model, [(xvt[i:i + 256], yvt[i:i + 256]) for i in range(0, len(xvt), 256)], len(classes), dev)
    conf = val[0] if isinstance(val, tuple) else val
    report["val_accuracy"] = round(float(conf.diag().sum() / conf.sum()), 4)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp) / "model"
        meta = export_model(model, out.as_uri(), name="adc-gpu-check", version="1", classes=classes,
                            no_defect_classes=list(NO_DEFECT_CLASSES), input_spec=input_spec(64),
                            thresholds=dict.fromkeys(classes, 0.9))
        on_gpu, on_cpu = load_model(out.as_uri(), gpu), load_model(out.as_uri(), "cpu")
        p_gpu, p_cpu = on_gpu.forward(xv[:256]), on_cpu.forward(xv[:256])
        report["serve_device"] = on_gpu.device
        report["serve_max_abs_diff_vs_cpu"] = float(np.abs(p_gpu - p_cpu).max())
        report["serve_same_argmax"] = float((p_gpu.argmax(1) == p_cpu.argmax(1)).mean())
        report["model_sha256"] = meta.sha256[:12]
    ok = (report["val_accuracy"] > 0.5 and report["serve_max_abs_diff_vs_cpu"] < 1e-2
          and report["serve_same_argmax"] > 0.99)
    report["ok"] = ok
    print("ADCP_GPU_CHECK " + json.dumps(report), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
