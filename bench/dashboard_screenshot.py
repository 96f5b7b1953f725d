"""The README's screenshot of the big screen, from a real platform at work: two local sites, a
model trained for fab-a on fab-b and rolled out to both, classification traffic on both, then
headless Chromium (Debian's, through Playwright) on the one-time dashboard URL.

    .venv/bin/python -m bench.dashboard_screenshot [--out docs/dashboard.png] [--traffic-s 90]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import httpx

from coordinator.center.core import Center
from coordinator.cli.main import main as adcp
from coordinator.state.jobs import JobRecords
from raycluster.local import read_state
from tests.platform_fixtures import running_platform
from tests.serve_fixtures import synth_png
from tests.waiting import wait_for


def _traffic(urls: list[str], stop: threading.Event) -> None:
    blobs = [synth_png(i) for i in range(64)]
    with httpx.Client(timeout=30) as client:
        i = 0
        while not stop.is_set():
            for url in urls:
                files = [("files", (f"{j}.png", blobs[(i + j) % len(blobs)], "image/png")) for j in range(8)]
                try:
                    client.post(f"{url}/v1/classify/batch", files=files)
                except httpx.HTTPError:
                    pass  # a replica swapping models; the next batch goes through
            i += 8


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("docs/dashboard.png"))
    ap.add_argument("--traffic-s", type=float, default=90)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="adcp-screenshot-")) / "home"
    sites = {"fab-a": {"num_cpus": 4, "object_store_mb": 300},
             "fab-b": {"num_cpus": 4, "num_gpus": 2, "object_store_mb": 300}}
    with running_platform(home, sites):
        run = lambda *a: adcp(["--home", str(home), *a])  # noqa: E731
        assert run("data", "synth", "--name", "aoi", "--images", "1200") == 0
        assert run("train", "--for", "fab-a", "--on", "fab-b", "--gpus", "1", "--dataset", "aoi@1", "--epochs", "4",
                   "--deploy") == 0
        job = JobRecords(Center.open(home).state).list(1)[0].model_dump(mode="json")
        model = job["outcome"]["model"]
        assert run("model", "deploy", model.split("/")[-1], "--to", "fab-b") == 0
        stop = threading.Event()
        urls = [read_state(s, home).serve_url for s in sites]
        loader = threading.Thread(target=_traffic, args=(urls, stop), daemon=True)
        loader.start()
        try:
            # let the sparklines and counters fill: this is a picture, not a test
            time.sleep(args.traffic_s)
            metrics = httpx.get(read_state("fab-b", home).metrics_url + "/metrics", timeout=30).text
            adc = sorted({ln.split("{")[0] for ln in metrics.splitlines() if ln.startswith("ray_adc")})
            print("ADC series on fab-b's metrics endpoint:", adc or "none", flush=True)
            import contextlib
            import io

            from playwright.sync_api import sync_playwright

            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                assert run("dashboard", "--url") == 0
            url = buf.getvalue().strip().splitlines()[-1]
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1600, "height": 900})
                page.goto(url)
                served = lambda: (page.locator('[data-metric="fab-b:model_version"]').first.text_content()  # noqa: E731
                                  or "–") not in ("–", "")
                wait_for(lambda: served() and page.locator('.tile[data-site="fab-a"] .spark .uplot').count(), 60,
                         "tiles with the model")
                time.sleep(6)  # one more overview poll with the latest traffic figures
                args.out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.out))
                browser.close()
        finally:
            stop.set()
            loader.join(timeout=30)
        print(json.dumps({"screenshot": str(args.out), "model": model}))


if __name__ == "__main__":
    main()
