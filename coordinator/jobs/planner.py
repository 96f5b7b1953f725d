"""Where a training run goes: live free capacity of every site, read through its gateway.

The planner never guesses: it reads each site's resources now (unreachable sites are left out,
with the reason), checks what the job needs against what each site has free, and says which site
runs it and why, and what must be shipped there first.
"""

from __future__ import annotations

from typing import Any

from configs.errors import InputError, SiteError
from configs.kube import KubeRayRuntime
from configs.runs import Need, PlanRecord, Shipment, SiteCapacity
from coordinator.center.core import CENTER, Center
from data.artifacts import ArtifactRef
from raycluster.k8s_quantity import parse_quantity

__all__ = ["Need", "PlanRecord", "Shipment", "SiteCapacity", "choose", "describe", "plan", "shipment", "view",
           "with_headroom"]


def describe(p: PlanRecord) -> list[str]:
    """The plan as a user reads it."""
    origin = next((s for s in p.sites if s.name == p.origin), None)
    out = []
    if origin is not None and origin.reachable:
        out.append(f"{p.origin} has {_cap(origin.free)} free of {_cap(origin.total)}")
    out.append(f"the job needs {p.need}")
    for s in p.sites:
        if s.name != p.origin:
            out.append(f"  {s.name}: " + (f"{_cap(s.free)} free" if s.reachable else f"excluded ({s.error})"))
    out.append(f"runs at {p.site}: {p.reason}")
    for item in p.ship:
        out.append(f"  ship {item.ref} ({item.bytes / 2**20:.1f} MiB)" + (" - already there" if item.present else ""))
    return out


def _cap(res: dict[str, float]) -> str:
    return f"{res.get('CPU', 0):g} CPU, {res.get('GPU', 0):g} GPU"


def view(center: Center, exclude: set[str] = frozenset()) -> list[SiteCapacity]:
    """Every site's live free/total capacity (sites in `exclude` are marked unusable). A KubeRay
    site that autoscales also counts what its Ray cluster can still grow into: the member cluster's
    free capacity as Karmada reports it, up to its worker groups' maxima."""
    views = []
    for s in center.status():
        if s["name"] in exclude:
            views.append(SiteCapacity(name=s["name"], reachable=False, error="failed earlier in this job"))
        elif not s.get("reachable"):
            views.append(SiteCapacity(name=s["name"], reachable=False, error=s.get("error", "unreachable")))
        else:
            res = s["resources"]
            free, total = dict(_known(res["available"])), dict(_known(res["total"]))
            runtime = center.site(s["name"]).runtime
            if isinstance(runtime, KubeRayRuntime) and runtime.autoscaling and (s.get("cluster") or {}).get("ready"):
                free, total = with_headroom(free, total, runtime, s["cluster"]["resources"]["available"])
            views.append(SiteCapacity(name=s["name"], reachable=True, free=free, total=total))
    return views


def with_headroom(free: dict[str, float], total: dict[str, float], runtime: KubeRayRuntime,
                  cluster_free: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    """(free, total) of a Ray cluster plus what its autoscaler can still add: per resource, the
    smaller of the member cluster's free amount and the worker groups' maxima not yet running."""
    most = {"CPU": sum(w.max_replicas * parse_quantity(w.resources.cpu) for w in runtime.workers),
            "GPU": float(runtime.gpus)}
    free, total = dict(free), dict(total)
    for name, ceiling in most.items():
        room = max(0.0, min(float(cluster_free.get(name, 0.0)), ceiling - total.get(name, 0.0)))
        free[name] = free.get(name, 0.0) + room
        total[name] = total.get(name, 0.0) + room
    return free, total


def _known(res: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in res.items() if k in ("CPU", "GPU", "memory")}


def choose(origin: str, need: Need, views: list[SiteCapacity], on: str | None) -> tuple[str, str]:
    """(site, why). `on`: a site name, "auto", or None (= the origin if it fits, else auto)."""
    by_name = {v.name: v for v in views}
    if origin not in by_name:
        raise InputError(f"No site named {origin}.", allowed=", ".join(by_name))
    if on not in (None, "auto"):
        if on not in by_name:
            raise InputError(f"No site named {on}.", allowed=", ".join([*by_name, "auto"]))
        target = by_name[on]
        if not target.reachable:
            raise SiteError(f"{on} cannot run the job: {target.error}.")
        if not need.fits(target.free):
            raise SiteError(f"{on} has {_cap(target.free)} free; the job needs {need}.",
                            hint="Ask for less (--gpus/--cpus), wait, or use --on auto.")
        return on, "asked for with --on"
    home = by_name[origin]
    if on is None and home.reachable and need.fits(home.free):
        return origin, f"{origin} has enough free capacity ({_cap(home.free)})"
    fitting = [v for v in views if v.reachable and need.fits(v.free)]
    if not fitting:
        raise SiteError(f"No reachable site has {need} free now.",
                        allowed="; ".join(f"{v.name}: {_cap(v.free)}" if v.reachable else f"{v.name}: unreachable"
                                          for v in views),
                        hint="Ask for less, or try again when a site frees up.")
    best = max(fitting, key=lambda v: (v.name == origin, v.free.get("GPU", 0), v.free.get("CPU", 0)))
    if best.name == origin:
        return origin, f"{origin} has enough free capacity ({_cap(home.free)})"
    short = "is unreachable" if not home.reachable else f"has only {_cap(home.free)} free"
    return best.name, f"{origin} {short}; {best.name} has the most free capacity that fits ({_cap(best.free)})"


def shipment(center: Center, site: str, refs: list[ArtifactRef]) -> list[Shipment]:
    """What must reach `site` for the run, and whether it is already there."""
    out = []
    for ref in refs:
        manifest = center.central.manifest(ref)
        present = center.reachable(site) and center.store(site).exists(manifest.ref)
        out.append(Shipment(ref=str(manifest.ref), bytes=manifest.total_bytes, present=present))
    return out


def plan(center: Center, origin: str, need: Need, refs: list[ArtifactRef], *, on: str | None = None,
         exclude: set[str] = frozenset()) -> PlanRecord:
    """Where a run for `origin` that needs `need` goes now (`on`: see `choose`), with `lines` filled in."""
    views = view(center, exclude)
    site, why = choose(origin, need, views, on)
    if site == CENTER:  # pragma: no cover - the center is not a site
        raise InputError("The center does not run jobs.")
    p = PlanRecord(origin=origin, site=site, need=need, reason=why, sites=views, ship=shipment(center, site, refs))
    p.lines = describe(p)
    return p
