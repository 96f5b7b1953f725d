"""What every `adcp` command shares: the click context object (home, defaults, the coordinator
client, the platform file for the Kubernetes commands) and the common options and printers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from configs.errors import AdcpError
from configs.loader import Defaults, load_defaults
from configs.platform import PlatformConfig, default_home, load_platform
from coordinator.cli.client import CoordinatorClient, resolve

__all__ = ["Context", "console", "err_console", "fmt_bytes", "json_option", "pass_ctx", "print_json",
           "split_names", "timeout_option", "wide_option"]

console = Console()
#: Progress and messages go to stderr, so that `--json` output on stdout stays machine-readable.
err_console = Console(stderr=True)


class Context:
    """The state of one CLI invocation."""

    def __init__(self, home: Path | None, config: Path | None, platform: Path | None, context: str | None,
                 debug: bool, *, home_given: bool) -> None:
        self.debug = debug
        self.home = Path(home or default_home()).resolve()
        self.home_given = home_given
        self.defaults: Defaults = load_defaults(config)
        self.platform_file = platform
        self.context_name = context
        self._client: CoordinatorClient | None = None

    @property
    def client(self) -> CoordinatorClient:
        """The coordinator API client (`client.call(method, path, **httpx_kwargs)` -> JSON); paths
        are relative to /api/v1."""
        if self._client is None:
            self._client = CoordinatorClient(resolve(self.home, home_given=self.home_given, context=self.context_name))
        return self._client

    def platform(self) -> PlatformConfig:
        """The platform file given (--platform / $ADCP_PLATFORM / the one `adcp up` recorded), else
        the running coordinator's, else the default."""
        from coordinator.process import platform_file

        path = platform_file(self.home, self.platform_file)
        if path is None and (self.context_name or not self.home_given):
            try:
                return PlatformConfig.model_validate(self.client.call("GET", "/platform"))
            except AdcpError:  # no coordinator to ask (or not allowed to): the default file
                pass
        return load_platform(path, self.home)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


pass_ctx = click.make_pass_decorator(Context)


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")(f)


def wide_option(f):
    return click.option("--wide", "-w", is_flag=True, help="All columns (the default fits 80 columns).")(f)


def timeout_option(default: float, what: str = "Seconds to wait"):
    def deco(f):
        return click.option("--timeout", "timeout_s", type=click.FloatRange(min=1), default=default,
                            show_default=True, help=f"{what}; the work goes on in the coordinator after it.")(f)
    return deco


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def split_names(text: str) -> list[str]:
    return [s.strip() for s in (text or "").split(",") if s.strip()]


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
