"""`adcp render`, `adcp apply`, `adcp rebalance`, `adcp site register`, `adcp site discover`: the
production (KubeRay + Karmada) commands, a thin click layer over `karmada.render`, `karmada.kube`,
`karmada.discovery` and `karmada.register`.

They work from the platform file (or the running coordinator's platform) and the kubeconfig;
`coordinator.cli.main` adds them with `add_commands(cli)`.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from configs.errors import InputError, KubeError
from configs.models import check_site_name
from configs.platform import PlatformConfig

if TYPE_CHECKING:
    from coordinator.cli.context import Context
    from karmada.kube import Kube

__all__ = ["add_commands", "apply_cmd", "rebalance_cmd", "render_cmd", "site_discover", "site_register"]

RAY_KINDS = ("RayCluster", "RayService")


def _kube_options(f):
    f = click.option("--context", default=None, help="kubeconfig context (default: the platform's karmada.context).")(f)
    return click.option("--kubeconfig", default=None,
                        help="kubeconfig of the Karmada apiserver (default: the platform's karmada.kubeconfig).")(f)


def _json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")(f)


def _platform(ctx: Context) -> PlatformConfig:
    return ctx.platform()


def _connect(ctx: Context, kubeconfig: str | None, context: str | None) -> Kube:
    from karmada.kube import Kube

    k = _platform(ctx).karmada
    return Kube.connect(kubeconfig or k.kubeconfig, context or k.context)


@click.command("render")
@click.option("--target", type=click.Choice(["kuberay", "karmada"]), required=True,
              help="kuberay: each site's objects for kubectl; "
              "karmada: templates and policies for the Karmada apiserver.")
@click.option("--site", "sites", multiple=True, help="A kuberay site to render (repeat; default: all of them).")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True, help="Folder to write into.")
@click.option("--model-uri", default=None, help="Model the RayService serves (default: the serve defaults).")
@click.option("--center-public-key", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="PEM file of the center's station-token public key (GET /api/v1/review/public-key), for "
              "the review stations (ADCP_CENTER_PUBLIC_KEY).")
@click.pass_obj
def render_cmd(ctx: Context, target: str, sites: tuple[str, ...], out: Path, model_uri: str | None,
               center_public_key: Path | None) -> None:
    """Render the KubeRay (and Karmada) objects of the platform's kuberay sites as YAML files."""
    from coordinator.cli.context import console
    from karmada import render

    key = center_public_key.read_text(encoding="utf-8") if center_public_key else None
    rendered = render.render(_platform(ctx), target, sites=list(sites) or None, model_uri=model_uri,
                             center_public_key=key)
    for path in render.write(rendered, out):
        console.print(str(path), highlight=False, soft_wrap=True, markup=False)


@click.command("apply")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--dry-run", is_flag=True, help="Ask the apiserver to validate only (dryRun=All); nothing is stored.")
@_kube_options
@click.pass_obj
def apply_cmd(ctx: Context, paths: tuple[Path, ...], dry_run: bool, kubeconfig: str | None,
              context: str | None) -> None:
    """Server-side apply YAML files or folders (from `adcp render`) to the Karmada apiserver."""
    from coordinator.cli.context import console
    from karmada import render

    objects = render.load(list(paths))
    if not objects:
        raise InputError(f"No Kubernetes objects in {', '.join(map(str, paths))}.",
                         hint="Give the files or the folder `adcp render --out` wrote.")
    with _connect(ctx, kubeconfig, context) as kube:
        for applied in kube.apply_report(objects, dry_run=dry_run):
            console.print(f"{applied.ref}: {applied.outcome}", highlight=False, soft_wrap=True, markup=False)


def _workloads(platform: PlatformConfig, sites: list[str] | None) -> list[dict[str, Any]]:
    """The Ray resource templates `adcp render --target karmada` puts on the Karmada apiserver."""
    from karmada import render

    rendered = render.render(platform, "karmada", sites=sites)
    return [obj for path, objs in rendered.items() if path.startswith("templates/")
            for obj in objs if obj.get("kind") in RAY_KINDS]


@click.command("rebalance")
@click.option("--site", "sites", multiple=True, help="A kuberay site whose Ray objects to reschedule (repeat).")
@click.option("--all", "all_sites", is_flag=True, help="Every kuberay site of the platform.")
@click.option("--name", default=None, help="WorkloadRebalancer name (default: adcp-rebalance-<UTC time>).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1), default=300, show_default=True,
              help="Seconds to wait for every workload's result.")
@_kube_options
@click.pass_obj
def rebalance_cmd(ctx: Context, sites: tuple[str, ...], all_sites: bool, name: str | None, timeout_s: float,
                  kubeconfig: str | None, context: str | None) -> None:
    """Ask Karmada to reschedule the Ray objects once (a WorkloadRebalancer), and report each result."""
    from coordinator.cli.context import console, err_console
    from karmada.policies import workload_rebalancer

    if bool(sites) == all_sites:
        raise click.UsageError("Give --site SITE (repeatable) or --all.")
    workloads = _workloads(_platform(ctx), list(sites) or None)
    name = name or f"adcp-rebalance-{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M%S}"
    with _connect(ctx, kubeconfig, context) as kube:
        created = kube.create_rebalancer(workload_rebalancer(name, workloads))
        real_name = created["metadata"]["name"]
        with err_console.status(f"rebalancing ({real_name})") as status:
            done = kube.wait_rebalancer(real_name, timeout_s=timeout_s,
                                        on_poll=lambda m: status.update(f"rebalancing ({real_name}): {m}"))
    failed = []
    for observed in done["status"]["observedWorkloads"]:
        w = observed["workload"]
        reason = f" ({observed['reason']})" if observed.get("reason") else ""
        line = f"{w['kind']}/{w['name']}: {observed['result']}{reason}"
        console.print(line, highlight=False, soft_wrap=True, markup=False)
        if observed["result"] != "Successful":
            failed.append(line)
    if failed:
        raise KubeError(f"Rebalance {real_name} failed for {len(failed)} workload(s): {'; '.join(failed)}")


@click.command("register")
@click.argument("name")
@click.option("--cluster", default=None, help="Karmada Cluster name (default: the site's gateway cluster, else NAME).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1), default=600, show_default=True,
              help="Seconds to wait for the Cluster to become Ready.")
@click.option("--no-wait", is_flag=True, help="Print the steps only.")
@_kube_options
@click.pass_obj
def site_register(ctx: Context, name: str, cluster: str | None, timeout_s: float, no_wait: bool,
                  kubeconfig: str | None, context: str | None) -> None:
    """Print the Pull-mode registration steps for a site's member cluster, then wait until Karmada
    reports the Cluster Ready."""
    from coordinator.cli.context import console, err_console
    from karmada.register import pull_mode_steps
    from raycluster.k8s_names import label_value

    try:
        check_site_name(name)
    except ValueError as e:
        raise InputError(str(e)) from e
    platform = _platform(ctx)
    cluster = cluster or _default_cluster(platform, name)
    labels = {platform.karmada.site_label: label_value(name)}
    steps = pull_mode_steps(name, cluster=cluster, karmada_context=context or platform.karmada.context,
                            site_labels=labels, karmada_kubeconfig=kubeconfig or platform.karmada.kubeconfig)
    for line in steps:
        console.print(line, highlight=False, soft_wrap=True, markup=False)
    if no_wait:
        return
    with _connect(ctx, kubeconfig, context) as kube, \
            err_console.status(f"waiting for cluster {cluster} to be Ready") as status:
        found = kube.wait_cluster_ready(cluster, timeout_s=timeout_s,
                                        on_poll=lambda m: status.update(f"waiting for cluster {cluster}: {m}"))
    console.print(f"cluster {cluster} is Ready (site {name})", highlight=False, markup=False)
    missing = {k: v for k, v in labels.items() if (found["metadata"].get("labels") or {}).get(k) != v}
    if missing:
        console.print(f"cluster {cluster} lacks the label {', '.join(f'{k}={v}' for k, v in missing.items())}: "
                      "run step 4 so the placement policies select it", highlight=False, markup=False)


def _default_cluster(platform: PlatformConfig, name: str) -> str:
    site = platform.site(name)
    if site is not None and site.gateway.kind == "karmada":
        return site.gateway.cluster
    return name


@click.command("discover")
@_json_option
@_kube_options
@click.pass_obj
def site_discover(ctx: Context, as_json: bool, kubeconfig: str | None, context: str | None) -> None:
    """Sites found as Karmada member clusters: readiness, sync mode, free of total CPU/GPU."""
    from rich.markup import escape
    from rich.table import Table

    from coordinator.cli.context import console
    from coordinator.cli.context import print_json as _print_json
    from karmada.discovery import discover

    with _connect(ctx, kubeconfig, context) as kube:
        views = discover(kube, _platform(ctx).karmada.site_label)
    if as_json:
        return _print_json(views)
    table = Table("site", "cluster", "ready", "sync", "CPU free/total", "GPU free/total")
    for v in views:
        tot, free = v["resources"]["total"], v["resources"]["available"]
        ready = "yes" if v["ready"] else f"no ({escape(v['ready_message'])})"
        table.add_row(escape(v["name"]), escape(v["cluster"]), ready, escape(v["sync_mode"]),
                      f"{free['CPU']:g}/{tot['CPU']:g}", f"{free['GPU']:g}/{tot['GPU']:g}")
    console.print(table)


def add_commands(cli: click.Group) -> None:
    """Add render/apply/rebalance to `cli` and register/discover to its `site` group (idempotent)."""
    for cmd in (render_cmd, apply_cmd, rebalance_cmd):
        cli.add_command(cmd)
    site = cli.commands["site"]
    for cmd in (site_register, site_discover):
        site.add_command(cmd)
