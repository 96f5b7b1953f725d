"""`adcp up|down|status|login|context|site ...`: starting the embedded platform, naming a
coordinator (like kubectl contexts), and the sites the coordinator knows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Column, Table

from configs.errors import InputError, NotFoundError
from coordinator import process
from coordinator.cli.client import Coordinator, CoordinatorClient, config_path, load_config, save_config
from coordinator.cli.context import (
    Context,
    console,
    err_console,
    json_option,
    pass_ctx,
    print_json,
    wide_option,
)

__all__ = ["add_commands"]


@click.command("up")
@json_option
@pass_ctx
def up(ctx: Context, as_json: bool) -> None:
    """Start the coordinator and every local site of the platform; return once all are ready."""
    say = (lambda m: None) if as_json else (lambda m: err_console.print(m, highlight=False))
    with err_console.status("starting the coordinator and local sites"):
        info = process.up(ctx.home, ctx.platform_file, on_event=say)
    if as_json:
        return print_json({"api_url": info["api_url"], "token_file": info["token_file"], "pid": info["pid"],
                           "sites": info["sites"]})
    console.print(f"platform up: coordinator {info['api_url']}, sites {', '.join(info['sites']) or '(none local)'}; "
                  f"admin token in {info['token_file']}", highlight=False)


@click.command("down")
@pass_ctx
def down(ctx: Context) -> None:
    """Stop every local site and the coordinator (by process id)."""
    process.down(ctx.home, on_event=lambda m: console.print(m, highlight=False))


def _cap(res: dict[str, Any], key: str, scale: float = 1.0) -> str:
    tot, avail = res.get("total", {}), res.get("available", {})
    return f"{avail.get(key, 0) / scale:.4g}/{tot.get(key, 0) / scale:.4g}"


@click.command("status")
@json_option
@wide_option
@pass_ctx
def status(ctx: Context, as_json: bool, wide: bool) -> None:
    """Each site: reachable, Ray version, CPU/GPU/memory free of total, jobs, Serve apps."""
    client = ctx.client
    rows = client.call("GET", "/sites")
    if as_json:
        return print_json({"coordinator": {"url": client.url, "source": client.coordinator.source}, "sites": rows})
    console.print(f"coordinator: {client.url} ({client.coordinator.source})", highlight=False, soft_wrap=True)
    cols = [Column("site", no_wrap=True), Column("up", no_wrap=True), "CPU free", "GPU free", "jobs", "serve"]
    if wide:
        cols[2:2] = ["ray", "mem free GiB", "store"]
    table = Table(*cols)
    for r in rows:
        res = r.get("resources", {})
        apps = ", ".join(f"{k}:{v}" for k, v in r.get("serve_apps", {}).items()) or "-"
        cells = [escape(r["name"]), "yes" if r["reachable"] else "[red]no[/]", _cap(res, "CPU"), _cap(res, "GPU"),
                 str(len(r.get("jobs", {}).get("running", []))), escape(apps)]
        if wide:
            cells[2:2] = [r.get("ray_version", "-"), _cap(res, "memory", 2**30),
                          escape(f"{r['store']} ({r['transfer']})")]
        table.add_row(*cells)
    console.print(table)
    for r in rows:
        if not r["reachable"]:
            console.print(f"{escape(r['name'])}: {escape(r.get('error', ''))}", soft_wrap=True)
    members = [r for r in rows if "cluster" in r]
    if members:  # KubeRay sites: what Karmada reports of their member clusters
        kt = Table(Column("site", no_wrap=True), "Karmada cluster", "ready", "sync", "CPU free", "GPU free")
        for r in members:
            c = r["cluster"]
            res = c.get("resources", {})
            kt.add_row(escape(r["name"]), escape(c.get("cluster", "-")),
                       "yes" if c.get("ready") else f"no ({escape(c.get('ready_message', ''))})",
                       c.get("sync_mode", "-"), _cap(res, "CPU"), _cap(res, "GPU"))
        console.print(kt)


@click.command("login")
@click.argument("url")
@click.option("--token-file", required=True, type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="File holding your token (from `adcp user add` / `adcp user token`).")
@click.option("--name", default=None, help="Context name (default: HOST:PORT of the URL).")
@click.option("--ca-file", default=None, type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="CA bundle to verify an HTTPS coordinator with.")
@json_option
def login(url: str, token_file: Path, name: str | None, ca_file: Path | None, as_json: bool) -> None:
    """Name a coordinator by address: check the token there, save a context and make it current."""
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise InputError(f'Got "{url}" for the coordinator.', allowed="http://HOST:PORT or https://HOST:PORT")
    token = token_file.read_text().strip()
    coordinator = Coordinator(url, token, "login", str(ca_file) if ca_file else None)
    client = CoordinatorClient(coordinator, timeout_s=30)
    try:
        me = client.call("GET", "/whoami")
    finally:
        client.close()
    name = name or url.split("://", 1)[1]
    doc = load_config()
    doc["contexts"][name] = {"api": url, "token_file": str(token_file.resolve()),
                             **({"ca_file": str(ca_file.resolve())} if ca_file else {})}
    doc["current"] = name
    path = save_config(doc)
    if as_json:
        return print_json({"context": name, "api": url, "user": me, "config": str(path)})
    console.print(f"logged in to {url} as {me.get('name')} (role {me.get('role')}); context {name} saved in {path}",
                  highlight=False, soft_wrap=True)


@click.group("context")
def context_group() -> None:
    """Saved coordinator contexts (`adcp login` makes them)."""


@context_group.command("list")
@json_option
def context_list(as_json: bool) -> None:
    """Every saved context; * marks the current one."""
    doc = load_config()
    if as_json:
        return print_json({"current": doc["current"], "contexts": doc["contexts"], "config": str(config_path())})
    table = Table("", Column("context", no_wrap=True), "API")
    for n, c in sorted(doc["contexts"].items()):
        table.add_row("*" if n == doc["current"] else "", escape(n), escape(c["api"]))
    console.print(table)


@context_group.command("use")
@click.argument("name")
def context_use(name: str) -> None:
    """Make a saved context the current one."""
    doc = load_config()
    if name not in doc["contexts"]:
        raise NotFoundError(f"No context {name}.", allowed=", ".join(doc["contexts"]) or "none yet")
    doc["current"] = name
    save_config(doc)
    console.print(f"current context: {name}", highlight=False)


@click.group("site")
def site() -> None:
    """Sites the coordinator knows: register remote ones, list, remove; Ray's address for one."""


@site.command("add")
@click.argument("name")
@click.option("--dashboard", required=True, help="Ray dashboard base URL (jobs API).")
@click.option("--serve", default=None, help="Ray Serve HTTP base URL.")
@click.option("--store", required=True, help="fsspec URL of the site store.")
@click.option("--registry", default=None, help="HOST[:PORT] of the site's image registry.")
@click.option("--metrics", default=None, help="Ray metrics endpoint URL.")
@click.option("--transfer", type=click.Choice(["push", "pull"]), default="push", show_default=True,
              help="push: the center writes the site store; pull: a Ray job at the site reads the center's.")
@click.option("--token-file", default=None, help="File with the site's Ray auth token (on the coordinator's host).")
@click.option("--store-options", default=None, help='fsspec storage options as JSON, e.g. \'{"client_kwargs": '
              '{"endpoint_url": "http://s3.fab-c:8333"}}\' (credentials come from the environment).')
@json_option
@pass_ctx
def site_add(ctx: Context, name, dashboard, serve, store, registry, metrics, transfer, token_file, store_options,
             as_json) -> None:
    """Register a site that runs elsewhere (direct gateway)."""
    try:
        options = json.loads(store_options) if store_options else {}
    except ValueError as e:
        raise InputError(f"--store-options is not JSON: {e}.", allowed='a JSON object such as {"anon": false}') from e
    body = {"name": name, "dashboard": dashboard, "serve": serve, "store": store, "registry": registry,
            "metrics": metrics, "transfer": transfer, "store_options": options, "token_file": token_file}
    s = ctx.client.call("POST", "/sites", json={k: v for k, v in body.items() if v is not None})
    if as_json:
        return print_json(s)
    console.print(f"site [cyan]{escape(s['name'])}[/] registered ({s['gateway']['kind']} gateway, "
                  f"store {escape(s['store']['url'])}, {s['transfer']})")


@site.command("list")
@json_option
@pass_ctx
def site_list(ctx: Context, as_json: bool) -> None:
    """Sites the center knows (from the platform file and `adcp site add`)."""
    rows = [{"name": s["name"], "local": s["runtime"]["kind"] == "local" if s.get("runtime") else False,
             "gateway": s["gateway"]["kind"], "store": s["store"]["url"], "transfer": s["transfer"],
             "registry": s.get("registry"), "labels": s.get("labels", {})}
            for s in ctx.client.call("GET", "/sites", params={"live": "false"})]
    if as_json:
        return print_json(rows)
    table = Table(Column("site", no_wrap=True), "local", "gateway", "store", "transfer")
    for r in rows:
        table.add_row(escape(r["name"]), "yes" if r["local"] else "no", r["gateway"], escape(r["store"]), r["transfer"])
    console.print(table)


@site.command("remove")
@click.argument("name")
@pass_ctx
def site_remove(ctx: Context, name: str) -> None:
    """Forget a site registered with `adcp site add` (its store and cluster are left alone)."""
    ctx.client.call("DELETE", f"/sites/{name}")
    console.print(f"site {name} removed", highlight=False)


@site.command("env")
@click.argument("name")
@json_option
@pass_ctx
def site_env(ctx: Context, name: str, as_json: bool) -> None:
    """What Ray's own tools need for a site (`ray job submit`, the Ray dashboard), through its
    gateway: `eval "$(adcp site env fab-a)"` then `ray job submit -- python my_job.py`."""
    env = ctx.client.call("GET", f"/sites/{name}/env")
    if as_json:
        return print_json(env)
    import shlex

    for key, value in env["env"].items():
        click.echo(f"export {key}={shlex.quote(value)}")
    click.echo(f"# Ray dashboard of {name}: {env['dashboard_url']}")


def add_commands(cli: click.Group) -> None:
    for cmd in (up, down, status, login, context_group, site):
        cli.add_command(cmd)
