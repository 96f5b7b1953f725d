"""`adcp user add|list|disable|token` and `adcp audit`: accounts with personal tokens and the log
of who changed what, over the coordinator's /api/v1/users and /api/v1/audit (admin only).

A thin click layer over `ctx.client` (the coordinator API client); `coordinator.cli.main` calls
`add_commands(cli)` at its end. A token is printed once, when it is made; the coordinator keeps
only its hash.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click
from rich.table import Column, Table

from coordinator.cli.context import console, err_console, json_option, print_json, split_names

if TYPE_CHECKING:
    from coordinator.cli.context import Context

__all__ = ["add_commands", "audit_cmd", "user"]

_ROLES_HELP = "admin, operator, engineer, reviewer or viewer"


@click.group("user")
def user() -> None:
    """User accounts at the coordinator: personal tokens and roles (admin only)."""


def _print_token(data: dict[str, Any], what: str, as_json: bool) -> None:
    if as_json:
        return print_json({"name": data["name"], "role": data["role"], "token": data["token"],
                           "sites": data.get("sites") or []})
    sites = f" on {', '.join(data['sites'])}" if data.get("sites") else ""
    err_console.print(f"{what} {data['name']} ({data['role']}{sites}); its token, shown only now:",
                      highlight=False, markup=False)
    click.echo(data["token"])


@user.command("add")
@click.argument("name")
@click.option("--role", required=True, help=f"The user's role: {_ROLES_HELP}.")
@click.option("--sites", default="", help="Comma-separated sites the user works on (required for a reviewer).")
@json_option
@click.pass_obj
def user_add(ctx: Context, name: str, role: str, sites: str, as_json: bool) -> None:
    """Add user NAME with a role; prints its token (once)."""
    data = ctx.client.call("POST", "/users", json={"name": name, "role": role, "sites": split_names(sites)})
    _print_token(data, "added user", as_json)


@user.command("list")
@json_option
@click.pass_obj
def user_list(ctx: Context, as_json: bool) -> None:
    """Every user: role, sites, whether it is disabled, when and by whom it was made."""
    rows = ctx.client.call("GET", "/users")
    if as_json:
        return print_json(rows)
    table = Table(Column("name", overflow="fold"), "role", Column("sites", overflow="fold"), "state", "created",
                  Column("by", overflow="fold"))
    for u in rows:
        table.add_row(u["name"], u["role"], ", ".join(u["sites"]) or "-", "disabled" if u["disabled"] else "active",
                      u["created_at"][:10], u["created_by"])
    console.print(table)


@user.command("disable")
@click.argument("name")
@json_option
@click.pass_obj
def user_disable(ctx: Context, name: str, as_json: bool) -> None:
    """Disable user NAME: its token stops working at once."""
    data = ctx.client.call("POST", f"/users/{name}/disable")
    if as_json:
        return print_json(data)
    console.print(f"user {data['name']} disabled: its token no longer works", highlight=False, markup=False)


@user.command("token")
@click.argument("name")
@json_option
@click.pass_obj
def user_token(ctx: Context, name: str, as_json: bool) -> None:
    """A new token for user NAME (printed once); the old one stops working at once."""
    data = ctx.client.call("POST", f"/users/{name}/token")
    _print_token(data, "new token for", as_json)


def _change(row: dict[str, Any]) -> str:
    path = row["path"].removeprefix("/api/v1")
    return f"{row['action'].split(' ', 1)[0]} {path}"


@click.command("audit")
@click.option("--user", "user_name", default=None, help="Only this user's changes.")
@click.option("--since", default=None, help="Unix seconds, ISO 8601, or relative: -1h, -30m, -2d.")
@click.option("--limit", type=click.IntRange(1, 10000), default=50, show_default=True, help="Rows to show.")
@json_option
@click.pass_obj
def audit_cmd(ctx: Context, user_name: str | None, since: str | None, limit: int, as_json: bool) -> None:
    """Who changed what, when and from where, newest first (refused attempts too)."""
    params = {k: v for k, v in {"user": user_name, "since": since, "limit": limit}.items() if v is not None}
    rows = ctx.client.call("GET", "/audit", params=params)
    if as_json:
        return print_json(rows)
    table = Table(Column("at (UTC)", no_wrap=True), Column("user", overflow="fold"), Column("change", overflow="fold"),
                  "status", Column("from", overflow="fold"))
    for r in rows:
        at = r["at"][5:19].replace("T", " ")  # MM-DD HH:MM:SS
        table.add_row(at, r["user"] or "-", _change(r), str(r["status"]), r["source"] or "-")
    console.print(table)


def add_commands(cli: click.Group) -> None:
    cli.add_command(user)
    cli.add_command(audit_cmd)
