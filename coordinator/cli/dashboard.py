"""`adcp dashboard --url`: the address a wall screen opens, with a login token that works once.

A thin click layer over the running coordinator's `POST /api/v1/dashboard/logins` (see
`coordinator.dashboard.routes`); `coordinator.cli.main` adds it with `add_commands(cli)`.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import click

from configs.monitoring import LOGIN_TTL_S, MAX_LOGIN_TTL_S

if TYPE_CHECKING:
    from coordinator.cli.context import Context

__all__ = ["add_commands", "dashboard_cmd"]


@click.command("dashboard")
@click.option("--url", "print_url", is_flag=True, help="Print the one-time login address of the big screen.")
@click.option("--valid-for", "valid_for_s", type=click.FloatRange(min=1, max=MAX_LOGIN_TTL_S), default=LOGIN_TTL_S,
              show_default=True, help="Seconds the address works (it works once).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON (url, expires_at).")
@click.pass_obj
def dashboard_cmd(ctx: Context, print_url: bool, valid_for_s: float, as_json: bool) -> None:
    """The big screen: every site's health and load, live, at the coordinator's /dashboard.

    `adcp dashboard --url` prints an address with a login token that works once and expires, so an
    operator can put the screen up without typing the API token. The coordinator must be running
    (`adcp up`)."""
    from coordinator.cli.context import console, err_console
    from coordinator.cli.context import print_json as _print_json

    if not (print_url or as_json):
        raise click.UsageError("Say what to do: `adcp dashboard --url` prints the one-time login address.")
    login = ctx.client.call("POST", "/dashboard/logins", json={"valid_for_s": valid_for_s})
    if as_json:
        return _print_json(login)
    console.print(login["url"], highlight=False, soft_wrap=True, markup=False)
    until = dt.datetime.fromtimestamp(login["expires_at"]).astimezone().strftime("%H:%M:%S %Z")
    err_console.print(f"works once, until {until}", highlight=False)


def add_commands(cli: click.Group) -> None:
    cli.add_command(dashboard_cmd)
