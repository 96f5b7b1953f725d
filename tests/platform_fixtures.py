"""A whole platform for a test or benchmark: a platform file of local sites, the coordinator and
every site up (`adcp up`), everything stopped by process id at the end (`adcp down`).

    with running_platform(tmp / "home", {"fab-a": {"num_cpus": 2}, "fab-b": {"num_gpus": 2}}) as home:
        main(["--home", str(home), "push", ...])
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from coordinator.cli.main import main


def platform_yaml(sites: dict[str, dict[str, Any]], center: dict[str, Any] | None = None,
                  settings: dict[str, dict[str, Any]] | None = None, extra: dict[str, Any] | None = None) -> str:
    """A platform file: the center under {home} and each site local, with its runtime settings
    (num_cpus, num_gpus, object_store_mb, resources), its own store folder and any other site
    settings in `settings[name]` (display_name, review, labels); `extra` joins the top level (lines)."""
    doc = {
        "center": {"state_db": "{home}/coordinator.db", "store": {"url": "{home}/store"}, **(center or {})},
        "sites": [
            {"name": name,
             "runtime": {"kind": "local", "num_cpus": 2, "object_store_mb": 200, **runtime},
             "store": {"url": f"{{home}}/sites/{name}/store"},
             **(settings or {}).get(name, {})}
            for name, runtime in sites.items()
        ],
        **(extra or {}),
    }
    return yaml.safe_dump(doc, sort_keys=False)


@contextlib.contextmanager
def running_platform(home: Path, sites: dict[str, dict[str, Any]],
                     settings: dict[str, dict[str, Any]] | None = None,
                     extra: dict[str, Any] | None = None) -> Iterator[Path]:
    """`adcp up` a platform of local `sites` under `home` (created), yield `home`, `adcp down`."""
    home.mkdir(parents=True, exist_ok=True)
    platform = home.parent / f"{home.name}-platform.yaml"
    platform.write_text(platform_yaml(sites, settings=settings, extra=extra))
    try:
        if main(["--home", str(home), "--platform", str(platform), "up"]) != 0:
            raise RuntimeError("adcp up failed (see the output above)")
        yield home
    finally:
        main(["--home", str(home), "down"])


def run_cli(capsys, home: Path, *args: str) -> tuple[int, str, str]:
    """`adcp --home HOME ARGS...` in-process: (exit code, stdout, stderr)."""
    code = main(["--home", str(home), *args])
    out = capsys.readouterr()
    return code, out.out, out.err
