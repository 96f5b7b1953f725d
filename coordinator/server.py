"""The coordinator process, the one owner of the platform's state and long work:

    python -m coordinator.server --home H [--platform FILE] --host 127.0.0.1 --port P

It opens the state DB, starts the platform's local sites (embedded default), picks up jobs and releases a
previous coordinator left running, and serves `coordinator.api` with uvicorn. `adcp up`
(`coordinator.process`) starts it in the background and `adcp down` stops it by pid.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m coordinator.server")
    p.add_argument("--home", type=Path, required=True)
    p.add_argument("--platform", type=Path, default=None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args(argv)
    import uvicorn

    from configs.loader import load_defaults
    from coordinator.api.app import create_app
    from coordinator.center.core import Center
    from coordinator.center.local_sites import LocalSites
    from coordinator.jobs import rollout
    from coordinator.jobs.release import Releaser
    from coordinator.jobs.retrain import Retrainer
    from coordinator.jobs.runner import Trainer
    from coordinator.jobs.tasks import TaskRunner
    from coordinator.monitoring.monitor import Monitor
    from coordinator.process import read_token

    center = Center.open(args.home, args.platform)
    center.state.fail_orphaned_transfers()
    local = LocalSites(center.home, center.sites())
    local.start_all()
    defaults = load_defaults()

    def deploy(ref: str, site: str) -> dict[str, Any]:
        return rollout.deploy(center, ref, [site], defaults.serve)[0]

    trainer = Trainer(center, defaults, deploy)
    picked_up = trainer.resume_active()
    if picked_up:
        print(f"following jobs left running: {', '.join(picked_up)}", flush=True)
    monitor = Monitor(center)
    releaser = Releaser(center, monitor, serve_cfg=defaults.serve)  # staged releases of the model lines
    resumed = releaser.resume()
    if resumed:
        print(f"continuing releases left running: {', '.join(resumed)}", flush=True)
    # each line's retrain trigger (every $ADCP_RETRAIN_CHECK_S s, 60 by default; 0: off); a new
    # challenger goes on to its staged release
    retrainer = Retrainer(center, trainer, on_challenger=lambda line, version: releaser.start(line, version, "retrain"))
    retrainer.resume()
    retrainer.start_loop()
    app = create_app(center, read_token(args.home), trainer, monitor, tasks=TaskRunner(), local_sites=local,
                     releaser=releaser, retrainer=retrainer)
    sync_s = float(os.environ.get("ADCP_REVIEW_SYNC_S", "60"))  # verdicts pulled from every site; 0: off
    if sync_s > 0:
        from coordinator.jobs.review_sync import start_loop

        start_loop(center, sync_s)
    print(f"coordinator pid {os.getpid()} serving on http://{args.host}:{args.port}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
