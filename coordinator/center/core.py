"""The center as a Python API: sites, their gateways and stores, artifacts and transfers.

The CLI and the coordinator's HTTP handlers both call `Center`; neither has logic of its own.
Sites come from the platform file (`configs/platform.yaml`, origin "config") and from
`adcp site add` (origin "added"); both live in the state DB so a restarted coordinator knows them.
"""

from __future__ import annotations

import json
import shlex
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from configs.errors import AdcpError, InputError, JobError, NotFoundError, SiteError
from configs.loader import validate
from configs.platform import KarmadaGateway as KarmadaGatewayConfig
from configs.platform import PlatformConfig, SiteConfig, default_home, load_platform
from configs.protocol import Marker, find_line
from coordinator.center import bundle
from coordinator.center.registry import push_to_registry
from coordinator.center.station_keys import StationKeys
from coordinator.state.db import State
from coordinator.state.model_lines import ModelLines
from data.artifacts import ArtifactRef, ArtifactStore
from data.images import download_image
from data.publish import verify_and_repair
from data.transfer import copy_artifact
from raycluster.gateway import SiteGateway, gateway_for, site_status
from raycluster.local import read_state

__all__ = ["CENTER", "PushPlan", "PushOutcome", "Center"]

CENTER = "center"

Progress = Callable[[str, int, int], None]  # (site, bytes_delta, objects_delta)
Plan = Callable[[str, int, int], None]  # (site, total_bytes, total_objects)


@dataclass(frozen=True)
class _Options:
    verify_existing: bool = False
    max_mbps: float | None = None


@dataclass(frozen=True)
class _Leg:
    site: SiteConfig
    direction: str  # push | copy | pull | relay
    transfer_id: str


@dataclass(frozen=True)
class PushPlan:
    ref: ArtifactRef
    source: str
    legs: list[_Leg]
    options: _Options

    def to_dict(self) -> dict[str, Any]:
        return {"ref": str(self.ref), "source": self.source,
                "transfers": [{"site": leg.site.name, "direction": leg.direction, "transfer_id": leg.transfer_id}
                              for leg in self.legs]}


@dataclass
class PushOutcome:
    site: str
    transfer_id: str
    direction: str
    result: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        r = self.result
        return {"site": self.site, "transfer_id": self.transfer_id, "direction": self.direction,
                "ref": r.get("ref"), "bytes_sent": r.get("bytes_sent", 0), "bytes_skipped": r.get("bytes_skipped", 0),
                "objects_sent": r.get("objects_sent", 0), "objects_skipped": r.get("objects_skipped", 0),
                "objects_verified": r.get("objects_verified", 0), "objects_repaired": r.get("objects_repaired", 0),
                "seconds": round(r.get("seconds", 0.0), 3),
                **{k: r[k] for k in ("hops", "registry", "job_id", "site_db") if k in r}}


class Center:
    """Everything the coordinator knows and does, over one state DB and the platform config."""

    def __init__(self, config: PlatformConfig, home: Path) -> None:
        self.config = config
        self.home = Path(home)
        self.state = State(config.center.state_db)
        self.central = ArtifactStore(config.center.store.url, config.center.store.options or None)
        self._station_keys: StationKeys | None = None
        self._lines: ModelLines | None = None
        #: Called as hook(ref, site) after each successful push leg; a dict it returns joins the
        #: leg's result (the review sync loads an annotations artifact into the site's review DB).
        self.push_hooks: list[Callable[[ArtifactRef, str], dict[str, Any] | None]] = []
        for site in config.sites:
            self.state.put_site(site.name, site.model_dump(mode="json"), "config")
        for row in self.state.sites():  # a site dropped from the platform file is gone
            if row["origin"] == "config" and config.site(row["name"]) is None:
                self.state.delete_site(row["name"])

    @classmethod
    def open(cls, home: Path | None = None, platform_file: Path | None = None) -> Center:
        """The center of `home`, with the platform file given (or in $ADCP_PLATFORM), else the one
        `adcp up` recorded, else the default."""
        from coordinator.process import platform_file as find_platform

        home = Path(home or default_home()).resolve()
        return cls(load_platform(find_platform(home, platform_file), home), home)

    def close(self) -> None:
        self.state.close()

    @property
    def station_keys(self) -> StationKeys:
        """The key that signs station tokens (created under <home>/coordinator on first use)."""
        if self._station_keys is None:
            self._station_keys = StationKeys(self.home)
        return self._station_keys

    @property
    def lines(self) -> ModelLines:
        """The model lines' aliases, their moves and reports (coordinator.state.model_lines)."""
        if self._lines is None:
            self._lines = ModelLines(self.state)
        return self._lines

    # --- sites ------------------------------------------------------------------------------

    def sites(self) -> list[SiteConfig]:
        return [SiteConfig.model_validate(row["spec"]) for row in self.state.sites()]

    def site(self, name: str) -> SiteConfig:
        for s in self.sites():
            if s.name == name:
                return s
        raise NotFoundError(f"No site named {name}.", allowed=", ".join(s.name for s in self.sites()) or "none yet",
                            hint="Register one with `adcp site add`.")

    def local_sites(self) -> list[SiteConfig]:
        return [s for s in self.sites() if s.local]

    def add_site(self, name: str, *, dashboard: str, store: str, serve: str | None = None,
                 metrics: str | None = None, registry: str | None = None, transfer: str = "push",
                 token_file: str | None = None, labels: dict[str, str] | None = None,
                 store_options: dict[str, Any] | None = None) -> SiteConfig:
        if any(s.name == name for s in self.sites()):
            raise InputError(f"A site named {name} is already registered.",
                             hint=f"Remove it first with `adcp site remove {name}`.")
        spec = {"name": name, "store": {"url": store, "options": store_options or {}}, "transfer": transfer,
                "registry": registry,
                "labels": labels or {},
                "gateway": {"kind": "direct", "dashboard": dashboard, "serve": serve, "metrics": metrics,
                            "token_file": token_file}}
        site = validate(SiteConfig, spec, f"site {name}")
        self.state.put_site(site.name, site.model_dump(mode="json"), "added")
        return site

    def remove_site(self, name: str) -> None:
        site = self.site(name)
        if self.config.site(name) is not None:
            raise InputError(f"Site {name} comes from the platform file; it cannot be removed here.",
                             hint="Remove it from the platform file instead.")
        self.state.delete_site(site.name)

    def gateway(self, name: str) -> SiteGateway:
        site = self.site(name)
        if site.local:
            local = read_state(site.name, self.home)
            if local is None or not local.is_running():
                raise SiteError(f"Local site {name} is not running.", hint="Start it with `adcp up`.")
            urls = {"dashboard": local.dashboard_url, "serve": local.serve_url, "metrics": local.metrics_url}
            return gateway_for(site, karmada=self.config.karmada, local_urls=urls, token=local.token)
        return gateway_for(site, karmada=self.config.karmada)

    def job_client(self, name: str) -> Any:
        """What submits and follows training runs at a site: Ray's `JobSubmissionClient` through the
        gateway, or for a Karmada site with `training: rayjob` a client that applies RayJobs to the
        Karmada apiserver (same methods)."""
        site = self.site(name)
        gateway = self.gateway(name)
        if isinstance(site.gateway, KarmadaGatewayConfig) and site.gateway.training == "rayjob":
            from karmada.rayjobs import RayJobClient  # karmada only where a karmada site is used

            return RayJobClient(self.config, site, gateway)
        return gateway.job_client()

    def store(self, name: str) -> ArtifactStore:
        if name == CENTER:
            return self.central
        site = self.site(name)
        return ArtifactStore(site.store.url, site.store.options or None)

    def status(self, names: list[str] | None = None, timeout_s: float = 5) -> list[dict[str, Any]]:
        """Each site's live status, read concurrently so a dead site does not delay the others."""
        sites = [self.site(n) for n in names] if names else self.sites()

        def one(site: SiteConfig) -> dict[str, Any]:
            try:
                info = site_status(self.gateway(site.name), timeout_s=timeout_s)
            except AdcpError as e:
                info = {"name": site.name, "reachable": False, "error": str(e)}
            info.update(store=site.store.url, transfer=site.transfer, local=site.local,
                        gateway=site.gateway.kind, labels=site.labels, registry=site.registry)
            return info

        if not sites:
            return []
        with ThreadPoolExecutor(max_workers=min(16, len(sites) + 1)) as pool:
            clusters = pool.submit(self._member_clusters, sites)
            rows = list(pool.map(one, sites))
            found = clusters.result()
        for row, site in zip(rows, sites):
            if isinstance(site.gateway, KarmadaGatewayConfig) and not site.local:
                row["cluster"] = found.get(site.gateway.cluster) or {
                    "cluster": site.gateway.cluster, "ready": False,
                    "ready_message": found.get("", {}).get("error", "no such Cluster in Karmada")}
        return rows

    def _member_clusters(self, sites: list[SiteConfig]) -> dict[str, dict[str, Any]]:
        """Karmada's view of the member clusters behind karmada-gateway sites (Ready condition,
        free/total capacity from `status.resourceSummary`), by cluster name; {"": {"error": ...}}
        when the Karmada apiserver cannot be read. Local sites are never Karmada members."""
        if not any(isinstance(s.gateway, KarmadaGatewayConfig) and not s.local for s in sites):
            return {}
        from karmada.discovery import discover
        from karmada.kube import Kube

        cfg = self.config.karmada
        try:
            with Kube.connect(cfg.kubeconfig, cfg.context) as kube:
                return {v["cluster"]: v for v in discover(kube, cfg.site_label)}
        except AdcpError as e:
            return {"": {"error": f"cannot read Karmada's clusters: {e}"}}

    # --- artifacts --------------------------------------------------------------------------

    def artifacts(self, where: str = CENTER, kind: str | None = None) -> list[dict[str, Any]]:
        """Complete artifacts in the central store or a site's store."""
        if where != CENTER and self.site(where).transfer == "pull":
            return self._list_at_site(where, kind)
        return [{"kind": m.kind, "name": m.name, "version": m.version, "bytes": m.total_bytes,
                 "objects": len(m.objects), "created": m.created} for m in self.store(where).list(kind)]

    def _list_at_site(self, name: str, kind: str | None) -> list[dict[str, Any]]:
        site = self.site(name)
        args = ["python", "-m", "data.transfer", "list", "--store", site.store.url]
        if site.store.options:
            args += ["--store-options", json.dumps(site.store.options)]
        if kind:
            args += ["--kind", kind]
        return self.run_site_job(name, args, what=f"listing artifacts at {name}", marker=Marker.ARTIFACTS)["artifacts"]

    # --- transfers --------------------------------------------------------------------------

    def push(self, ref: str | ArtifactRef, to: list[str], *, source: str = CENTER, verify_existing: bool = False,
             max_mbps: float | None = None, on_plan: Plan | None = None,
             on_progress: Progress | None = None) -> list[PushOutcome]:
        """Copy an artifact from `source` (the center or a site) to each site in `to`, concurrently.

        Per destination the direction is push (the center writes into the site's store), pull (a
        Ray job at the site reads from the central store) or relay (through the central store,
        when the center cannot reach both ends). Every transfer is recorded; a failure at one site
        does not stop the others, and is raised after all have finished. `max_mbps` caps each
        destination's bandwidth (MB/s), for links the factory shares with production traffic.
        """
        return self.run_push(self.plan_push(ref, to, source=source, verify_existing=verify_existing,
                                            max_mbps=max_mbps), on_plan=on_plan, on_progress=on_progress)

    def plan_push(self, ref: str | ArtifactRef, to: list[str], *, source: str = CENTER,
                  verify_existing: bool = False, max_mbps: float | None = None) -> PushPlan:
        """Check a push and record one 'running' transfer per destination (nothing is sent yet)."""
        if max_mbps is not None and max_mbps <= 0:
            raise InputError(f"Got {max_mbps} for the bandwidth cap.", allowed="a positive number of MB/s")
        ref = ArtifactRef.parse(ref) if isinstance(ref, str) else ref
        if not to:
            raise InputError("No destination site given.", allowed=", ".join(s.name for s in self.sites()))
        dests = [self.site(n) for n in dict.fromkeys(to)]
        if source != CENTER:
            self.site(source)
        if source in {d.name for d in dests}:
            raise InputError(f"{source} is both the source and a destination.")
        if self.reachable(source):
            ref = self.store(source).resolve(ref)  # one version for every destination
        elif ref.version is None:
            raise InputError(f"Give a version for {ref}: the center cannot read {source}'s store to find the latest.")
        legs = []
        for d in dests:
            direct = self.reachable(source) and self.reachable(d.name)
            direction = ("push" if source == CENTER else "copy") if direct else (
                "pull" if source == CENTER else "relay")
            legs.append(_Leg(d, direction, self.state.start_transfer(str(ref), source, d.name, direction)))
        return PushPlan(ref, source, legs, _Options(verify_existing, max_mbps))

    def run_push(self, plan: PushPlan, *, on_plan: Plan | None = None,
                 on_progress: Progress | None = None) -> list[PushOutcome]:
        """Carry out a planned push, every destination at once; finishes each transfer record."""
        with ThreadPoolExecutor(max_workers=len(plan.legs)) as pool:
            futures = [pool.submit(self._push_one, plan, leg, on_plan, on_progress) for leg in plan.legs]
        outcomes, errors = [], []
        for leg, f in zip(plan.legs, futures):
            try:
                outcomes.append(f.result())
            except AdcpError as e:
                errors.append(f"{leg.site.name}: {e}")
        if errors:
            raise SiteError(f"Transfer of {plan.ref} failed at {len(errors)} of {len(plan.legs)} sites: "
                            + "; ".join(errors),
                            hint="Push again: objects already verified there are not sent twice.")
        return outcomes

    def reachable(self, name: str) -> bool:
        """Whether the center can read and write `name`'s store itself (push mode)."""
        return name == CENTER or self.site(name).transfer == "push"

    def _push_one(self, plan: PushPlan, leg: _Leg, on_plan: Plan | None, on_progress: Progress | None) -> PushOutcome:
        ref, source, dest, opts = plan.ref, plan.source, leg.site, plan.options
        try:
            if leg.direction in ("push", "copy"):
                result = self._copy(source, dest.name, ref, opts, on_plan, on_progress)
            elif leg.direction == "pull":
                result = self._pull_job(dest.name, CENTER, ref, opts)
            else:
                first = self._hop(source, CENTER, ref, opts, None, None)
                second = self._hop(CENTER, dest.name, ref, opts, on_plan, on_progress)
                result = {**second, "hops": [first, second],
                          "seconds": first.get("seconds", 0) + second.get("seconds", 0)}
            if ref.kind == "image" and dest.registry:
                result["registry"] = self._to_registry(ref, dest)
            for hook in self.push_hooks:
                result.update(hook(ref, dest.name) or {})
        except AdcpError as e:
            self.state.finish_transfer(leg.transfer_id, error=str(e))
            raise
        except Exception as e:  # record anything unexpected, then let it surface
            self.state.finish_transfer(leg.transfer_id, error=f"{type(e).__name__}: {e}")
            raise
        self.state.finish_transfer(leg.transfer_id, result=result)
        return PushOutcome(dest.name, leg.transfer_id, leg.direction, result)

    def fetch(self, ref: ArtifactRef, site: str) -> dict[str, Any]:
        """Bring an artifact a site holds into the central store (a direct copy, or an upload job
        at a site whose store the center cannot reach); recorded as a transfer."""
        tid = self.state.start_transfer(str(ref), site, CENTER, "copy" if self.reachable(site) else "upload")
        try:
            result = self._hop(site, CENTER, ref, _Options(), None, None)
        except Exception as e:
            self.state.finish_transfer(tid, error=str(e))
            raise
        self.state.finish_transfer(tid, result=result)
        return result

    def _to_registry(self, ref: ArtifactRef, dest: SiteConfig) -> dict[str, str]:
        """Push an image artifact into the site's registry with skopeo, from the site's store when
        the center can read it (else from the central copy, which holds the same verified bytes)."""
        store = self.store(dest.name if self.reachable(dest.name) else CENTER)
        repo, tag = f"adcp/{ref.name}", ref.version or "latest"
        with tempfile.TemporaryDirectory(prefix="adcp-image-") as tmp:
            archive = download_image(store, ref.name, ref.version, tmp)
            digest = push_to_registry(archive, dest.registry, repo, tag)
        return {"image": f"{dest.registry}/{repo}:{tag}", "digest": digest}

    def _hop(self, src: str, dst: str, ref: ArtifactRef, opts: _Options,
             on_plan: Plan | None, on_progress: Progress | None) -> dict[str, Any]:
        if self.reachable(src) and self.reachable(dst):
            return self._copy(src, dst, ref, opts, on_plan, on_progress)
        runner = dst if not self.reachable(dst) else src  # the site whose store only it can reach
        return self._pull_job(runner, src if runner == dst else dst, ref, opts, upload=runner == src)

    def _copy(self, src: str, dst: str, ref: ArtifactRef, opts: _Options,
              on_plan: Plan | None, on_progress: Progress | None) -> dict[str, Any]:
        result = copy_artifact(
            self.store(src), self.store(dst), ref, verify_existing=opts.verify_existing,
            max_bytes_per_s=opts.max_mbps * 1e6 if opts.max_mbps else None,
            on_plan=(lambda b, n: on_plan(dst, b, n)) if on_plan else None,
            on_progress=(lambda b, n: on_progress(dst, b, n)) if on_progress else None,
        )
        return result.to_dict()

    def _pull_job(self, site: str, other: str, ref: ArtifactRef, opts: _Options,
                  upload: bool = False) -> dict[str, Any]:
        """Run `python -m data.transfer` as a Ray job at `site`: it reads `other`'s store and writes
        its own (pull), or with `upload` reads its own and writes `other`'s."""
        here, there = self.site(site).store, (self.config.center.store if other == CENTER else self.site(other).store)
        src, dst = (here, there) if upload else (there, here)
        args = ["python", "-m", "data.transfer", "--src", src.url, "--dst", dst.url, "--ref", str(ref)]
        if src.options:
            args += ["--src-options", json.dumps(src.options)]
        if dst.options:
            args += ["--dst-options", json.dumps(dst.options)]
        if opts.verify_existing:
            args.append("--verify-existing")
        if opts.max_mbps:
            args += ["--max-mbps", str(opts.max_mbps)]
        return self.run_site_job(site, args, what=f"{'upload' if upload else 'pull'} of {ref} at {site}")

    def run_site_job(self, site: str, args: list[str], *, what: str, marker: Marker = Marker.TRANSFER,
                     timeout_s: float = 3600) -> dict[str, Any]:
        """Submit a Ray job (`args`, run in this checkout's code bundle) at `site` through its gateway,
        wait for it at most `timeout_s` (then stop it), and return the JSON it printed on its
        `marker` line (with `job_id`). JobError when it is refused, fails, or prints no such line."""
        code = bundle.publish(self.central)
        client = self.gateway(site).job_client()
        try:
            job_id = client.submit_job(entrypoint=shlex.join(args), entrypoint_num_cpus=0,
                                       runtime_env={"working_dir": code.uri}, metadata={"adcp": "transfer"})
        except (RuntimeError, ConnectionError) as e:
            raise JobError(f"Site {site} refused the {what} job: {e}") from e
        deadline = time.monotonic() + timeout_s
        while True:
            status = client.get_job_status(job_id)
            if status.is_terminal():
                break
            if time.monotonic() > deadline:
                client.stop_job(job_id)
                raise JobError(f"The {what} job {job_id} did not finish in {timeout_s:.0f} s; stopped it.")
            time.sleep(0.25)  # poll interval of a deadline-bounded wait
        logs = client.get_job_logs(job_id)
        found = find_line(marker, logs)
        if status.value != "SUCCEEDED" or found is None:
            tail = " | ".join(logs.strip().splitlines()[-3:])
            raise JobError(f"The {what} job {job_id} {status.value}: {tail or 'no output'}", job_id=job_id)
        return {**found, "job_id": job_id}

    def verify(self, ref: str | ArtifactRef, where: str, repair: bool = False) -> dict[str, Any]:
        """Rehash every object of an artifact at `where`; with `repair`, re-copy bad ones from the center."""
        ref = ArtifactRef.parse(ref) if isinstance(ref, str) else ref
        if not self.reachable(where):  # a pull site verifies by pulling again with every object rehashed
            result = self._pull_job(where, CENTER, ref, _Options(verify_existing=True))
            return {"site": where, "ref": str(ref), "ok": True, "repaired": result.get("objects_repaired", 0)}
        outcome = verify_and_repair(self.store(where), ref, self.central if repair and where != CENTER else None)
        return {"site": where, "ref": outcome.ref, "ok": outcome.ok, "objects_checked": outcome.objects_checked,
                "bad": outcome.bad, "repaired": outcome.repaired}

    def transfers(self, limit: int = 50) -> list[dict[str, Any]]:
        self.state.fail_orphaned_transfers()  # a push whose process was killed is over
        return self.state.transfers(limit)

    def transfer(self, transfer_id: str) -> dict[str, Any]:
        rows = self.state.transfers(transfer_id=transfer_id)
        if not rows:
            raise NotFoundError(f"No transfer {transfer_id}.", hint="List them with `adcp transfers`.")
        return rows[0]

