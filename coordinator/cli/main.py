"""The `adcp` command line: a client of the coordinator's HTTP API.

Every command that reads or changes platform state calls the coordinator (named by ADCP_API /
ADCP_TOKEN, a context saved by `adcp login`, or the one `adcp up` started under $ADCP_HOME; see
`coordinator.cli.client`). Errors meant for users print as one line and exit non-zero; `--debug`
shows the traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
from rich.markup import escape

from configs.errors import AdcpError
from coordinator.cli import (
    artifacts,
    dashboard,
    gate,
    jobs,
    kube,
    models,
    monitoring,
    platform,
    quality,
    release,
    review,
    users,
)
from coordinator.cli.context import Context, console, err_console, pass_ctx

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--home", type=click.Path(path_type=Path), default=None,
              help="Platform home of a local coordinator (`adcp up`): its token, pid file and local sites "
              "(default $ADCP_HOME, else ~/.adcp). Given here, it beats a saved context.")
@click.option("--context", "context_name", default=None,
              help="A context saved by `adcp login` (see `adcp context list`).")
@click.option("--config", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Defaults YAML (default: configs/defaults.yaml).")
@click.option("--platform", type=click.Path(path_type=Path, dir_okay=False), envvar="ADCP_PLATFORM", default=None,
              help="Platform file for `adcp up` and the Kubernetes commands (default: the one `adcp up` was "
              "given, else configs/platform.yaml).")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.pass_context
def cli(ctx: click.Context, home: Path | None, context_name: str | None, config: Path | None, platform: Path | None,
        debug: bool) -> None:
    """ADC Platform: automatic defect classification on Ray, from dataset to served model."""
    given = home is not None
    home = home or (Path(os.environ["ADCP_HOME"]) if os.environ.get("ADCP_HOME") else None)
    ctx.obj = Context(home, config, platform, context_name, debug, home_given=given)
    ctx.call_on_close(ctx.obj.close)


@cli.command("demo")
@click.option("--summary-json", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also write the figures as JSON.")
@click.option("--keep", is_flag=True, help="Leave the coordinator and site running and the demo home in place.")
@pass_ctx
def demo(ctx: Context, summary_json: Path | None, keep: bool) -> None:
    """Synthesise, train, serve and classify on a local site, through a coordinator of its own;
    print the figures."""
    from coordinator.cli.demo import run_demo

    run_demo(ctx.defaults, console, home=ctx.home if ctx.home_given else None, summary_json=summary_json, keep=keep)


for _module in (platform, artifacts, jobs, models, gate, monitoring, dashboard, kube, users, quality, review,
                release):
    _module.add_commands(cli)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `adcp` console script."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or os.environ.get("ADCP_DEBUG") == "1"
    try:
        rv = cli.main(args=args, prog_name="adcp", standalone_mode=False)
        if isinstance(rv, int):  # click returns a command's Exit code in non-standalone mode
            return rv
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.exceptions.Abort:
        err_console.print("aborted")
        return 130
    except AdcpError as e:
        if debug:
            raise
        err_console.print(f"[red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        return 1
    except Exception as e:  # anything else is our bug: still one line unless --debug
        if debug:
            raise
        err_console.print(f"[red]error:[/] unexpected {type(e).__name__}: {escape(str(e))} "
                          "(run with --debug for the traceback)", highlight=False, soft_wrap=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
