"""Staged release of a model line's challenger: the gate, the shadow beside the champion, the
canary site(s) with a watch window, then the other sites wave by wave, each watched, with an
optional approval before the canary or before the waves.

    releaser = Releaser(center, monitor)        # the server builds one; resume() at start
    releaser.resume()                           # a daemon thread steps every active release
    releaser.start("adc-aoi", "4", by="ann")    # ConflictError while the line has one under way

Every step is stored (`coordinator.state.releases`) before the next, so a coordinator restarted
mid-release goes on from the stored stage; steps are idempotent (a deploy first checks what the
site serves; a watch window's start and baseline are stored). Every wait is bounded: each site
call has a timeout, and a step never blocks the loop: one worker per release in flight.

A site whose watch figures cross the line's `limits` (with `min_requests` behind them) is rolled
back by itself to its previous model, the release stops (rolled_back) and an alert says which site
and figure. A site with too few requests to judge at the end of its window holds the release
(waiting_approval) until someone approves going on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from configs.errors import AdcpError, InputError, NotFoundError
from configs.models import ServeConfig
from coordinator.center.core import Center
from coordinator.jobs import release_watch, rollout
from coordinator.state.releases import Releases, stage_names
from data.artifacts import ArtifactRef
from data.model_format import read_metadata

__all__ = ["Releaser"]

BY = "release"  # who the platform's own moves are recorded as, when no user made them


def _run_gate(center: Center, line: str, version: str, **kw: Any) -> dict[str, Any]:
    from coordinator.jobs.gate import run_gate  # GATE's part; imported when a release first needs it

    return run_gate(center, line, version, **kw)


def _kw(**kw: Any) -> dict[str, Any]:
    """Keyword arguments that are set (a site call without a shadow passes none)."""
    return {k: v for k, v in kw.items() if v is not None}


class Releaser:
    """Starts, steps, holds and resumes releases (see the module docstring). Everything that
    reaches a site is injectable: `gate(center, line, version, timeout_s=)`, `deploy` and
    `rollback` (as in `coordinator.jobs.rollout`), `shadow_figures(center, site, model_version,
    timeout_s=)`, `watch` (`baseline(site, after)`, `figures(site, baseline, model_version)`),
    `alert(name, site, message)`, `model_id(ref)`, and the `clock` (unix seconds)."""

    def __init__(self, center: Center, monitor: Any = None, *, gate: Callable[..., dict] | None = None,
                 deploy: Callable[..., list] | None = None, rollback: Callable[..., dict] | None = None,
                 shadow_figures: Callable[..., dict] | None = None, watch: Any = None,
                 alert: Callable[[str, str, str], Any] | None = None,
                 model_id: Callable[[ArtifactRef], str] | None = None,
                 serve_cfg: ServeConfig | None = None, clock: Callable[[], float] = time.time,
                 interval_s: float = 1.0, deploy_timeout_s: float = 240.0, gate_timeout_s: float = 900.0,
                 site_timeout_s: float = 10.0, workers: int = 4) -> None:
        self.center, self.monitor = center, monitor
        self.releases = Releases(center.state)
        self.gate = gate or _run_gate
        self.deploy = deploy or rollout.deploy
        self.rollback = rollback or rollout.rollback
        self.shadow_figures = shadow_figures or release_watch.shadow_figures
        self.watch = watch or (release_watch.WatchFigures(monitor) if monitor is not None else None)
        self.alert = alert or self._monitor_alert
        self.model_id = model_id or (lambda ref: read_metadata(center.central.manifest_url(ref)).model_id)
        self.serve_cfg, self.clock = serve_cfg, clock
        self.interval_s, self.deploy_timeout_s = interval_s, deploy_timeout_s
        self.gate_timeout_s, self.site_timeout_s = gate_timeout_s, site_timeout_s
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="release")
        self._inflight: set[str] = set()
        self._lock = threading.Lock()
        self._stop, self._wake = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None

    # --- asked by the API -----------------------------------------------------------------------

    def start(self, line: str, version: str, by: str) -> dict[str, Any]:
        """A new release of `line@version`. NotFoundError for a line not in the platform file or a
        version not in the central store; ConflictError while the line has a release under way."""
        cfg = self.center.config.line(line)
        if cfg is None:
            known = ", ".join(x.name for x in self.center.config.lines) or "none"
            raise NotFoundError(f"No model line {line} in the platform file.", allowed=known,
                                hint="Add it under `lines:` in the platform file.")
        if not version:
            raise InputError(f"Release of {line} without a version.", allowed="LINE@VERSION")
        ref = ArtifactRef("model", line, version)
        self.center.central.resolve(ref)  # NotFoundError when that version does not exist
        stages = cfg.stages()
        if not stages:
            raise InputError(f"Line {line} names no sites to release to.", hint="Give it `sites:` or `release:`.")
        plan = {"line": line, "sites": cfg.sites, "stages": stages, "watch_s": cfg.release.watch_s,
                "approval": cfg.release.approval, "shadow": cfg.shadow.model_dump(), "limits": cfg.limits.model_dump(),
                "gate": cfg.gate.model_dump()}
        release = self.releases.create(line, version, plan, by or BY)
        for site in dict.fromkeys(s for stage in stages for s in stage):
            if self.center.lines.aliases(line, site).get(site, {}).get("challenger") != version:
                self.center.lines.set_alias(line, site, "challenger", version, by=by or BY,
                                            why=f"release {release['id']}")
        self._wake.set()
        return release

    def approve(self, line: str, version: str, by: str) -> dict[str, Any]:
        """Let the line's release of `version` through the approval it waits at (by `by`)."""
        release = self.releases.active(line)
        if release is None or release["version"] != version:
            raise NotFoundError(f"No release of {line}@{version} under way.",
                                hint=f"See `adcp release status {line}`.")
        release = self.releases.approve(release["id"], by)
        self._wake.set()
        return release

    def status(self, line: str) -> dict[str, Any]:
        """The line's newest release with where each site stands; NotFoundError when it has none."""
        rows = self.releases.list(line, limit=1)
        if not rows:
            raise NotFoundError(f"Line {line} has no release.", hint=f"Start one with `adcp release start {line}@V`.")
        return self.view(rows[0])

    def view(self, release: dict[str, Any]) -> dict[str, Any]:
        """A release with its stages, events, approvals and per site: its stage and state, what it
        serves now, its aliases, watch figures with the limits, why."""
        line, plan, mine = release["line"], release["plan"], release["detail"].get("sites") or {}
        aliases = self.center.lines.aliases(line)
        sites = []
        for i, stage in enumerate(plan.get("stages") or []):
            for site in stage:
                own = mine.get(site) or {}
                sites.append({"site": site, "stage": "canary" if i == 0 else f"wave-{i}",
                              "state": own.get("state", "pending"), "serving": self._serving(site),
                              **{a: aliases.get(site, {}).get(a) for a in ("champion", "challenger", "previous")},
                              "watch": own.get("watch"), "why": own.get("why")})
        rid = release["id"]
        return {**release, "stages": stage_names(plan), "sites": sites,
                "events": self.releases.events(rid), "approvals": self.releases.approvals(rid)}

    # --- the loop ---------------------------------------------------------------------------------

    def resume(self) -> list[str]:
        """Start the loop (every active release continues from its stored stage); their ids."""
        ids = [r["id"] for r in self.releases.running()]
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="releases", daemon=True)
            self._thread.start()
        return ids

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            self._thread = None
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                for release in self.releases.running():
                    if release["status"] == "running":
                        self._submit(release["id"])
            except Exception:  # noqa: BLE001 (a DB hiccup: the next turn reads again)
                pass
            self._wake.wait(self.interval_s)

    def _submit(self, release_id: str) -> None:
        with self._lock:
            if release_id in self._inflight or self._stop.is_set():
                return
            self._inflight.add(release_id)

        def run() -> None:
            try:
                before = self.releases.get(release_id)
                after = self.step(release_id)
                if (after["stage"], after["status"]) != (before["stage"], before["status"]):
                    self._wake.set()  # the next stage need not wait for the interval
            finally:
                with self._lock:
                    self._inflight.discard(release_id)

        try:
            self._pool.submit(run)
        except RuntimeError:  # the pool shut down (stopping)
            with self._lock:
                self._inflight.discard(release_id)

    def step_all(self) -> list[dict[str, Any]]:
        """One step of every running release, in this thread (what the loop does, for tests)."""
        return [self.step(r["id"]) for r in self.releases.running() if r["status"] == "running"]

    def step(self, release_id: str) -> dict[str, Any]:
        """One step of a release from its stored stage; the release after it."""
        rel = self.releases.get(release_id)
        if rel["status"] != "running":
            return rel
        stage = rel["stage"]
        try:
            if stage == "gate":
                return self._gate(rel)
            if stage == "shadow":
                return self._shadow(rel)
            if stage.startswith("watch:"):
                return self._watch(rel, stage.removeprefix("watch:"))
            if stage == "done":
                return self._update(rel, status="done", why="released to every site")
            return self._deploy_stage(rel, stage)
        except AdcpError as e:
            return self._stop_release(rel, "failed", f"{stage}: {e}")
        except Exception as e:  # noqa: BLE001 (our bug: the release stops and says so, the loop goes on)
            return self._stop_release(rel, "failed", f"{stage}: {type(e).__name__}: {e}")

    # --- stages ------------------------------------------------------------------------------------

    def _update(self, rel: dict[str, Any], *, stage: str | None = None, status: str | None = None,
                why: str | None = None, by: str = BY, **detail: Any) -> dict[str, Any]:
        return self.releases.update(rel["id"], stage=stage, status=status, by=by,
                                    detail={**detail, **({"why": why} if why is not None else {})})

    def _next(self, rel: dict[str, Any], why: str, **detail: Any) -> dict[str, Any]:
        names = stage_names(rel["plan"])
        following = names[names.index(rel["stage"]) + 1]
        if following == "done":
            return self._update(rel, stage="done", status="done", why=f"{why}; released to every site", **detail)
        return self._update(rel, stage=following, why=why, **detail)

    def _ref(self, rel: dict[str, Any], version: str | None = None) -> ArtifactRef:
        return ArtifactRef("model", rel["line"], version or rel["version"])

    def _model_id(self, rel: dict[str, Any]) -> str:
        mid = rel["detail"].get("model_id")
        if not mid:
            mid = self.model_id(self._ref(rel))
            self._update(rel, model_id=mid)
            rel["detail"]["model_id"] = mid
        return mid

    def _gate(self, rel: dict[str, Any]) -> dict[str, Any]:
        line, version = rel["line"], rel["version"]
        stored = [r["report"] for r in self.center.lines.reports(line, version) if r["kind"] == "gate"]
        report = stored[0] if stored else self.gate(self.center, line, version, timeout_s=self.gate_timeout_s)
        summary = {k: report.get(k) for k in ("passed", "failed", "reasons")}
        if not report.get("passed"):
            failed = ", ".join(report.get("failed") or []) or "not passed"
            reasons = "; ".join(report.get("reasons") or [])
            return self._stop_release(rel, "refused", f"gate refused: {failed}" + (f" ({reasons})" if reasons else ""),
                                      gate=summary)
        return self._next(rel, "gate passed", gate=summary, thresholds=report.get("thresholds"))

    def _champion(self, line: str, site: str) -> str | None:
        champion = self.center.lines.aliases(line, site).get(site, {}).get("champion")
        if champion:
            return champion
        serving = self._serving(site) or ""
        kind_name, _, v = serving.partition("@")
        return v if kind_name == f"model/{line}" and v else None

    def _serving(self, site: str) -> str | None:
        return next((r["model"] for r in self.center.state.deployments(site=site, limit=200)
                     if r["status"] == "serving"), None)

    def _shadow(self, rel: dict[str, Any]) -> dict[str, Any]:
        line, version, plan = rel["line"], rel["version"], rel["plan"]
        policy = plan["shadow"]
        if policy["rate"] <= 0 or policy["min_verdicts"] == 0:
            return self._next(rel, "shadow skipped (rate 0 or min_verdicts 0)")
        champions = {s: c for s in (policy["sites"] or plan["stages"][0])
                     if (c := self._champion(line, s)) and c != version}
        if not champions:
            return self._next(rel, "shadow skipped: no champion of the line serves at the shadow sites")
        sites = dict(rel["detail"].get("sites") or {})
        for site, champion in champions.items():
            if (sites.get(site) or {}).get("state") != "shadowing":
                self.deploy(self.center, self._ref(rel, champion), [site], self.serve_cfg,
                            timeout_s=self.deploy_timeout_s, **_kw(
                                shadow=(self._ref(rel), float(policy["rate"])),
                                shadow_thresholds=rel["detail"].get("thresholds"), by=rel["by"],
                                why=f"shadow of {line}@{version}"))
                sites[site] = {"stage": "shadow", "state": "shadowing", "serving": champion, "why": "shadowing"}
                rel = self._update(rel, sites=sites)
        model_id = self._model_id(rel)
        per_site = {}
        for site in champions:
            try:
                per_site[site] = self.shadow_figures(self.center, site, model_id, timeout_s=self.site_timeout_s)
            except AdcpError as e:  # a site that does not answer now may next time
                return self._update(rel, why=f"shadow: figures of {site} not read ({e}); trying again")
        combined = release_watch.combine_shadow(per_site.values())
        need = int(policy["min_verdicts"])
        if combined["with_verdicts"] < need:
            return self._update(rel, why=f"shadow: {combined['with_verdicts']}/{need} shadowed images with verdicts",
                                shadow=combined)
        ch, cp = combined["challenger_figures"], combined["champion_figures"]
        reasons = []
        if ch["escapes"] > cp["escapes"]:
            reasons.append(f"challenger escapes {ch['escapes']} > champion's {cp['escapes']}")
        if combined["agreement"] is not None and combined["agreement"] < policy["min_agreement"]:
            reasons.append(f"agreement {combined['agreement']:.3g} < {policy['min_agreement']:g}")
        report = {**combined, "passed": not reasons, "reasons": reasons, "sites": per_site,
                  "min_verdicts": need, "min_agreement": policy["min_agreement"]}
        self.center.lines.put_report(line, version, "shadow", report)
        canary = set(plan["stages"][0])
        for site, champion in champions.items():  # the champion alone again where no canary replaces it
            if reasons or site not in canary:
                self.deploy(self.center, self._ref(rel, champion), [site], self.serve_cfg,
                            timeout_s=self.deploy_timeout_s,
                            **_kw(by=rel["by"], why=f"shadow of {line}@{version} ended"))
                sites[site] = {**sites[site], "state": "pending", "why": "shadow ended"}
        if reasons:
            return self._stop_release(rel, "refused", "shadow refused: " + "; ".join(reasons), sites=sites,
                                      shadow=combined)
        return self._next(rel, "shadow passed", sites=sites, shadow=combined)

    def _held(self, rel: dict[str, Any], stage: str) -> bool:
        """Whether the release must wait for an approval before `stage` (then it now waits)."""
        wanted = {"before_canary": "canary", "before_waves": "wave-1"}.get(rel["plan"].get("approval") or "none")
        if wanted != stage or self.releases.approved(rel["id"], stage):
            return False
        self._update(rel, status="waiting_approval", why=f"waiting for approval before {stage}: "
                     f"adcp model approve {rel['line']}@{rel['version']}")
        return True

    def _stage_sites(self, rel: dict[str, Any], name: str) -> list[str]:
        stages = rel["plan"]["stages"]
        return stages[0] if name == "canary" else stages[int(name.removeprefix("wave-"))]

    def _deploy_stage(self, rel: dict[str, Any], name: str) -> dict[str, Any]:
        if self._held(rel, name):
            return self.releases.get(rel["id"])
        ref, sites = self._ref(rel), dict(rel["detail"].get("sites") or {})
        todo = [s for s in self._stage_sites(rel, name) if self._serving(s) != str(ref)
                or (sites.get(s) or {}).get("state") == "shadowing"]
        if todo:
            try:
                self.deploy(self.center, ref, todo, self.serve_cfg, timeout_s=self.deploy_timeout_s,
                            **_kw(thresholds=rel["detail"].get("thresholds"), by=rel["by"],
                                  why=f"release {name} of {rel['line']}@{rel['version']}"))
            except AdcpError as e:
                served = [r["site"] for r in e.details.get("results") or [] if r.get("status") == "serving"]
                undone = self._roll_back(rel, served, f"release {name} failed")
                return self._stop_release(rel, "failed", f"{name}: {e}" + (f"; rolled back {undone}" if undone else ""))
        for s in self._stage_sites(rel, name):
            sites[s] = {"stage": name, "state": "watching", "serving": rel["version"], "why": "watch window"}
        return self._update(rel, stage=f"watch:{name}", why=f"{name} deployed; watching", sites=sites,
                            watch_from=self.clock())

    def _watch(self, rel: dict[str, Any], name: str) -> dict[str, Any]:
        plan, detail = rel["plan"], rel["detail"]
        limits, watch_s = plan["limits"], float(plan["watch_s"])
        sites, model_id = dict(detail.get("sites") or {}), self._model_id(rel)
        watch_from = float(detail.get("watch_from") or self.clock())
        crossed: dict[str, list[dict[str, Any]]] = {}
        unjudged = []
        for site in self._stage_sites(rel, name):
            own = dict(sites.get(site) or {})
            if own.get("baseline") is None:
                own["baseline"] = self.watch.baseline(site, watch_from)
            if own["baseline"] is None:
                unjudged.append(site)
                own["why"] = "waiting for the monitor's first read after the deploy"
            else:
                figures = self.watch.figures(site, own["baseline"], model_id)
                over = release_watch.judge(figures, limits)
                own["watch"] = {**figures, "limits": limits, "crossed": over}
                if over:
                    crossed[site] = over
                if (figures.get("requests") or 0) < int(limits.get("min_requests", 0)):
                    unjudged.append(site)
                    own["why"] = f"{figures.get('requests') or 0}/{limits.get('min_requests')} requests so far"
                else:
                    own["why"] = "within limits" if not over else "crossed its limits"
            sites[site] = own
        rel = self._update(rel, sites=sites)
        if crossed:
            return self._auto_rollback(rel, name, sites, crossed)
        elapsed = self.clock() - watch_from
        if elapsed < watch_s:
            return self._update(rel, why=f"watching {name}: {elapsed:.0f} of {watch_s:g} s")
        if unjudged and not self.releases.approved(rel["id"], rel["stage"]):
            return self._update(rel, status="waiting_approval",
                                why=f"too few requests to judge {', '.join(unjudged)} after the {watch_s:g} s window: "
                                f"approve to go on (adcp model approve {rel['line']}@{rel['version']})")
        for site in self._stage_sites(rel, name):
            sites[site] = {**sites[site], "state": "released", "why": "released"}
        self.center.lines.put_report(rel["line"], rel["version"], "watch", self._watch_report(rel, sites, True))
        return self._next(rel, f"{name} watched {watch_s:g} s within limits", sites=sites, watch_from=None)

    def _watch_report(self, rel: dict[str, Any], sites: dict[str, Any], passed: bool) -> dict[str, Any]:
        return {"passed": passed, "stage": rel["stage"], "limits": rel["plan"]["limits"],
                "sites": {s: {k: v for k, v in (own.get("watch") or {}).items() if k != "limits"}
                          for s, own in sites.items() if own.get("watch")}}

    def _auto_rollback(self, rel: dict[str, Any], name: str, sites: dict[str, Any],
                       crossed: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
        whys = []
        for site, over in crossed.items():
            first = over[0]
            why = f"auto rollback: {first['figure']} {first['value']:.4g} > {first['limit']:g}"
            try:
                self.rollback(self.center, site, self.serve_cfg, timeout_s=self.deploy_timeout_s, by=BY, why=why)
                sites[site] = {**sites[site], "state": "rolled_back", "why": why}
            except AdcpError as e:
                sites[site] = {**sites[site], "state": "rollback_failed", "why": f"{why}; the rollback failed: {e}"}
            whys.append(f"{site}: " + ", ".join(f"{o['figure']} {o['value']:.4g} > {o['limit']:g}" for o in over))
        message = f"{rel['line']}@{rel['version']} rolled back at {name}: " + "; ".join(whys)
        for site in crossed:
            try:
                self.alert("release_rollback", site, message)
            except Exception:  # noqa: BLE001 (the rollback stands whether the alert could be shown or not)
                pass
        self.center.lines.put_report(rel["line"], rel["version"], "watch", self._watch_report(rel, sites, False))
        failed = any(sites[s]["state"] == "rollback_failed" for s in crossed)
        return self._stop_release(rel, "failed" if failed else "rolled_back", message, sites=sites)

    def _roll_back(self, rel: dict[str, Any], sites: list[str], why: str) -> list[str]:
        done = []
        for site in sites:
            try:
                self.rollback(self.center, site, self.serve_cfg, timeout_s=self.deploy_timeout_s, by=BY, why=why)
                done.append(site)
            except AdcpError:
                pass
        return done

    def _stop_release(self, rel: dict[str, Any], status: str, why: str, **detail: Any) -> dict[str, Any]:
        """End the release with `status`; the challenger alias goes where the release did not reach."""
        line, version = rel["line"], rel["version"]
        try:
            for site, held in self.center.lines.aliases(line).items():
                if held.get("challenger") == version:
                    self.center.lines.set_alias(line, site, "challenger", None, by=BY,
                                                why=f"release {status}: {why}"[:500])
        except Exception:  # noqa: BLE001 (the release's end is stored whatever the aliases say)
            pass
        return self._update(rel, status=status, why=why, **detail)

    def _monitor_alert(self, name: str, site: str, message: str) -> Any:
        engine = getattr(self.monitor, "alerts_engine", None)
        return engine.event(name, site, message) if engine is not None else None

