"""Model rollout: put a model artifact into sites' Serve apps, see what each serves, roll back.

A rollout ships the model artifact and the code bundle to every site (`Center.push`, which skips
what is already there and works for pull-mode sites too), points the site's Serve app at the
copies in the site's own store, and waits through the site gateway until the new version answers.
Only the app's `user_config` changes between rollouts, so replicas swap models in place and no
request is dropped. Every rollout is a row in the deployments table; what a site serves now and
what a rollback returns to are read from there. Rollouts run inside the coordinator only, one per
site at a time: a second one to a busy site is refused with ConflictError (HTTP 409).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
from pydantic import ValidationError

from configs.errors import AdcpError, ConflictError, InputError, NotFoundError, SiteError
from configs.models import ServeConfig, ServeUserConfig
from coordinator.center import bundle
from coordinator.center.core import Center
from coordinator.jobs import aliases, serving
from data.artifacts import ArtifactRef, ObjectEntry
from data.model_format import read_metadata
from raycluster.gateway import SiteGateway

__all__ = ["check", "deploy", "list_models", "parse_model_ref", "rollback", "rollback_target", "served_models"]

#: Serve replicas share the site's CPUs with training; one torch/OMP thread each keeps them from
#: oversubscribing small machines (every rollout gives the apps this same environment, plus the
#: site's `serving.site_env`: a different runtime_env would restart replicas instead of swapping
#: the model in place).
SITE_ENV = {"OMP_NUM_THREADS": "1"}
#: How often the wait asks the site's Serve app which model answers. /v1/model is a cheap local
#: answer of the replica; 0.1 s keeps the poll's share of the rollout figure small.
POLL_S = 0.1
#: How often the wait also reads the app's status from the dashboard (to fail early on
#: DEPLOY_FAILED); the dashboard call costs more than /v1/model, so less often.
STATUS_EVERY_S = 1.0

Event = Callable[[str, str], None]  # (site, message)

_locks_guard = threading.Lock()
_site_locks: dict[tuple[str, str], threading.Lock] = {}  # (home, site) -> held while a rollout runs there
_holders: dict[tuple[str, str], dict[str, str]] = {}  # (home, site) -> the running rollout's model and start


def _default_serve() -> ServeConfig:
    from configs.loader import load_defaults

    return load_defaults().serve


def parse_model_ref(text: str) -> ArtifactRef:
    """`model/NAME@VERSION`, `NAME@VERSION` (or without `@VERSION`: the latest) as a model ref."""
    text = (text or "").strip()
    if "/" in text:
        ref = ArtifactRef.parse(text)
        if ref.kind != "model":
            raise InputError(f'Got "{text}"; only models are rolled out to Serve apps.',
                             allowed="NAME@VERSION or model/NAME@VERSION")
        return ref
    name, at, version = text.partition("@")
    if not name or (at and not version):
        raise InputError(f'"{text}" does not name a model.', allowed="NAME@VERSION or model/NAME@VERSION",
                         hint="For example adc@2.")
    return ArtifactRef("model", name, version or None)


# --- what sites serve --------------------------------------------------------------------------

def _current(center: Center, site: str) -> dict[str, Any] | None:
    """The site's latest successful deployment row (what its Serve app serves now), or None."""
    for row in center.state.deployments(site=site, limit=1000):
        if row["status"] == "serving":
            return row
    return None


def served_models(center: Center) -> dict[str, str | None]:
    """{site: model ref its Serve app serves now (per the deployments table), or None}."""
    return {s.name: (row["model"] if (row := _current(center, s.name)) else None) for s in center.sites()}


def list_models(center: Center) -> list[dict[str, Any]]:
    """Model artifacts of the central store, each with the sites whose Serve app serves it now and
    its aliases per site (`{"fab-a": ["champion"]}`)."""
    served = served_models(center)
    line_aliases: dict[str, dict[str, dict[str, str]]] = {}
    rows = []
    for m in center.central.list("model"):
        ref = str(m.ref)
        if m.name not in line_aliases:
            line_aliases[m.name] = center.lines.aliases(m.name)
        rows.append({"ref": ref, "name": m.name, "version": m.version, "bytes": m.total_bytes,
                     "created": m.created, "model_id": m.meta.get("model_id"),
                     "metrics": m.meta.get("metrics") or {},
                     "serving_at": sorted(site for site, model in served.items() if model == ref),
                     "aliases": {site: sorted(a for a, v in names.items() if v == m.version)
                                 for site, names in line_aliases[m.name].items() if m.version in names.values()}})
    return rows


# --- rollout -----------------------------------------------------------------------------------

@contextmanager
def _exclusive(center: Center, sites: list[str], what: str) -> Iterator[None]:
    """Hold every site's rollout lock for the block, or take none: ConflictError naming the busy
    site and the rollout it runs. Rollouts run only inside the coordinator process (the one owner
    of the state DB), so these locks serialise every rollout to a site."""
    held: list[tuple[str, str]] = []
    try:
        for site in sites:
            key = (str(center.home), site)
            with _locks_guard:
                lock = _site_locks.setdefault(key, threading.Lock())
                if not lock.acquire(blocking=False):
                    raise _busy_error(center, site, _holders.get(key) or {})
                _holders[key] = {"model": what, "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            held.append(key)
        yield
    finally:
        with _locks_guard:
            for key in held:
                _holders.pop(key, None)
                _site_locks[key].release()


def _busy_error(center: Center, site: str, holder: dict[str, str]) -> ConflictError:
    row = next((r for r in center.state.deployments(site=site, limit=20) if r["status"] == "deploying"), None)
    running = {**holder, "deployment_id": row["id"] if row else None}
    of = f" of {holder['model']}" if holder.get("model") else ""
    since = f", since {holder['since']}" if holder.get("since") else ""
    return ConflictError(f"A rollout{of} to {site} is already running{since}; one rollout per site at a time.",
                         hint="Wait for it to finish (see `adcp model deployments`), then retry.",
                         site=site, running=running)


def check(center: Center, ref: str | ArtifactRef, sites: list[str]) -> tuple[ArtifactRef, list[str]]:
    """(the model resolved, the destination names) of a rollout that may start now: InputError or
    NotFoundError for a bad model or site, ConflictError for a site with a rollout running. What
    an API call checks before it starts the rollout as a task (`deploy` checks it again, holding
    the sites' locks)."""
    ref = parse_model_ref(ref) if isinstance(ref, str) else ref
    names = _destinations(center, sites)
    with _exclusive(center, names, str(ref)):
        return center.central.resolve(ref), names


def _destinations(center: Center, sites: list[str]) -> list[str]:
    names = list(dict.fromkeys(s.strip() for s in sites if s and s.strip()))
    if not names:
        raise InputError("No destination site given.", allowed=", ".join(s.name for s in center.sites()) or "none")
    for name in names:
        center.site(name)  # NotFoundError naming the known sites
    return names


def deploy(center: Center, ref: str | ArtifactRef, sites: list[str], serve_cfg: ServeConfig | None = None, *,
           timeout_s: float = 240, on_event: Event | None = None, by: str | None = None,
           why: str | None = None, shadow: tuple[str | ArtifactRef, float] | None = None,
           thresholds: dict[str, float] | None = None,
           shadow_thresholds: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """Roll model `ref` out to every site in `sites` at once; per site
    `{"site", "model", "previous", "seconds", "status", "deployment_id"}` (+ `"error"`), where
    `seconds` runs from this call to the new version answering at the site's Serve endpoint.

    `shadow` = (model, rate): that model is shipped too and runs beside `ref` on a `rate` share of
    the images (the rows gain `"shadow"`; `"shadow_error"` when the site could not load it: the
    champion serves all the same). `thresholds` / `shadow_thresholds` replace the models' own per
    class. A change of only these swaps in place like a model change.

    Each site that serves the model afterwards has its version as the line's champion (previous <-
    the old one; aliases.on_deployed, moved by `by` for `why`, "deploy" by default).

    Raises InputError/NotFoundError before anything is recorded when the model or a site does not
    exist; ConflictError (409) before anything is shipped when a rollout to one of the sites is
    still running (no site is touched then); SiteError (with `results` = every site's row) after
    all sites finished when any failed.
    """
    started = time.monotonic()
    serve_cfg = serve_cfg or _default_serve()
    ref = parse_model_ref(ref) if isinstance(ref, str) else ref
    names = _destinations(center, sites)
    extra = _shadow_options(center, shadow, thresholds, shadow_thresholds)
    with _exclusive(center, names, str(ref)):
        ref = center.central.resolve(ref)
        model_id = read_metadata(center.central.manifest_url(ref)).model_id
        code = bundle.publish(center.central)
        code_ref = ArtifactRef("code", bundle.BUNDLE_NAME, code.version)
        code_entry = center.central.manifest(code_ref).entry(bundle.BUNDLE_FILE)

        def one(site: str) -> dict[str, Any]:
            return _deploy_site(center, site, ref, model_id, code_ref, code_entry, serve_cfg, started=started,
                                timeout_s=timeout_s, on_event=on_event, extra=extra)

        with ThreadPoolExecutor(max_workers=len(names)) as pool:
            futures = [pool.submit(one, n) for n in names]
    rows = [f.result() for f in futures]  # re-raises only what is not an AdcpError (our bugs)
    for r in rows:
        if r["status"] == "serving":
            aliases.on_deployed(center, ref, r["site"], by=by, why=why)
    failed = [r for r in rows if r["status"] != "serving"]
    if failed:
        raise SiteError(f"Rollout of {ref} failed at {len(failed)} of {len(rows)} sites: "
                        + "; ".join(f"{r['site']}: {r['error']}" for r in failed),
                        hint="The other sites serve the new model; a failed site keeps its previous one.",
                        results=rows)
    return rows


def _shadow_options(center: Center, shadow: tuple[str | ArtifactRef, float] | None,
                    thresholds: dict[str, float] | None, shadow_thresholds: dict[str, float] | None) -> dict[str, Any]:
    """The user_config fields of a deploy besides the model (checked before anything moves), and the
    shadow model resolved: {"user": {...}, "shadow": (ref, model_id) | None}."""
    user: dict[str, Any] = {"thresholds": thresholds, "shadow_thresholds": shadow_thresholds}
    resolved = None
    if shadow is not None:
        sref, rate = shadow
        sref = center.central.resolve(parse_model_ref(sref) if isinstance(sref, str) else sref)
        resolved = (sref, read_metadata(center.central.manifest_url(sref)).model_id)
        user["shadow_rate"] = rate
    elif shadow_thresholds:
        raise InputError("shadow_thresholds were given without a shadow model.", allowed="shadow=(model, rate)")
    try:
        ServeUserConfig.model_validate(user)
    except ValidationError as e:
        raise InputError(f"Bad shadow or threshold settings: {e.errors()[0]['msg']}.",
                         allowed="shadow rate 0..1, thresholds {class: 0..1}") from e
    return {"user": user, "shadow": resolved}


def _deploy_site(center: Center, site: str, ref: ArtifactRef, model_id: str, code_ref: ArtifactRef,
                 code_entry: ObjectEntry, serve_cfg: ServeConfig, *, started: float, timeout_s: float,
                 on_event: Event | None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    say = (lambda msg: on_event(site, msg)) if on_event else (lambda msg: None)
    row: dict[str, Any] = {"site": site, "model": str(ref), "previous": None, "seconds": None,
                           "status": "failed", "deployment_id": None}
    try:
        current = _current(center, site)
        row["previous"] = current["model"] if current else None
        if current and current["model"] == str(ref):  # the same model again (e.g. with a shadow now)
            row["previous"] = current["previous"]  # a rollback still returns to what came before it
        row["deployment_id"] = did = center.state.start_deployment(site, serve_cfg.app_name, str(ref),
                                                                   row["previous"])
        try:
            shadow = (extra or {}).get("shadow")
            say(f"shipping {ref}{f' and shadow {shadow[0]}' if shadow else ''} and code {code_ref.version}")
            center.push(ref, [site])
            if shadow:
                center.push(shadow[0], [site])
            center.push(code_ref, [site])
            store = center.store(site)  # the site's copies, whoever wrote them (push or pull)
            model_uri = store.manifest_url(ref)
            cfg = serving.site_user_config(serve_cfg, center.site(site))  # + the site's audit_rate
            user = {"model_uri": model_uri, **(extra or {}).get("user", {})}
            if shadow:
                user["shadow_model_uri"] = store.manifest_url(shadow[0])
                row["shadow"] = str(shadow[0])
            cfg = cfg.model_copy(update={"user_config": cfg.user_config.model_copy(update=user)})
            gw = center.gateway(site)
            config = serving.serve_config(cfg, working_dir=store.object_url(code_entry),
                                          http_options=gw.serve_http_options(),
                                          env={**SITE_ENV, **serving.site_env(center, site)})
            say(f"deploying {model_id}")
            serving.deploy(gw.base_url("dashboard"), gw.headers("dashboard"), config, tls=gw.client_options())
            served = _wait_serving(gw, cfg.app_name, model_id, model_uri, deadline=time.monotonic() + timeout_s,
                                   config=cfg.user_config)
            if shadow and (served.get("shadow") or {}).get("error"):
                row["shadow_error"] = served["shadow"]["error"].get("detail")
                say(f"shadow {shadow[1]} did not load: {row['shadow_error']}")
        except AdcpError as e:
            center.state.finish_deployment(did, error=str(e))
            raise
        except Exception as e:  # our bug: record it, then let it surface
            center.state.finish_deployment(did, error=f"{type(e).__name__}: {e}")
            raise
        row["seconds"] = round(time.monotonic() - started, 3)
        center.state.finish_deployment(did, seconds=row["seconds"])
        row["status"] = "serving"
        say(f"serving {model_id} after {row['seconds']:.2f} s")
    except AdcpError as e:
        row["error"] = str(e)
    return row


def _wait_serving(gw: SiteGateway, app_name: str, model_id: str, model_uri: str, *, deadline: float,
                  config: ServeUserConfig | None = None) -> dict[str, Any]:
    """Return the app's `/v1/model` answer once the app is RUNNING and its Serve endpoint (through
    the gateway, with the gateway's headers) answers `model_id` with `config` in effect (its
    fingerprint, when the app reports one: thresholds and shadow included); SiteError when the app
    failed, reported that it could not load `model_uri`, or the deadline passed.

    `serving.wait_serving` polls every 0.5 s and calls the Serve endpoint without the gateway's
    headers; rollouts are timed against a 2 s target and may go through an authenticating proxy."""
    dashboard, headers = gw.base_url("dashboard"), gw.headers("dashboard")
    last, next_status = "no answer yet", 0.0
    want = config.fingerprint() if config is not None else None
    with gw.client("serve", timeout_s=5) as client:
        while True:
            served, body = None, {}
            try:
                r = client.get("/v1/model")
                body = r.json() if r.status_code == 200 else {}
                served = body.get("model_version")
                stale = bool(want and body.get("config") not in (None, want))
                if stale:
                    served = None  # the model answers, but not yet with this configuration
                failed = body.get("reconfigure_error") or {}
                if failed.get("model_uri") == model_uri:
                    raise SiteError(f"The Serve app at {gw.site} could not load {model_uri}: {failed.get('detail')}",
                                    hint=f"It keeps serving {served}.")
                last = (f"serving {body.get('model_version')} with an older configuration" if stale
                        else f"serving {served or 'no model'}" if r.status_code == 200
                        else f"/v1/model answered {r.status_code}")
            except (httpx.HTTPError, ValueError) as e:
                last = f"{type(e).__name__}: {e}"
            now = time.monotonic()
            if served == model_id or now >= next_status:
                next_status = now + STATUS_EVERY_S
                try:
                    app = serving.app_status(dashboard, headers, app_name, tls=gw.client_options())
                except (httpx.HTTPError, ValueError) as e:
                    app = {"status": f"unknown ({type(e).__name__})"}
                state = app.get("status", "NOT_STARTED")
                if state in ("DEPLOY_FAILED", "UNHEALTHY"):
                    raise SiteError(f"Serve app {app_name} at {gw.site} is {state}: {app.get('message', '')[:800]}")
                if served == model_id and state == "RUNNING":
                    return body
                last += f", app {state}"
            if now >= deadline:
                raise SiteError(f"Site {gw.site} did not serve {model_id} in time ({last}).",
                                hint="See the app's state with `adcp status`; roll out again once it is healthy.")
            time.sleep(POLL_S)  # poll interval of a deadline-bounded wait


# --- rollback ----------------------------------------------------------------------------------

def rollback(center: Center, site: str, serve_cfg: ServeConfig | None = None, *, timeout_s: float = 240,
             on_event: Event | None = None, by: str | None = None, why: str | None = None) -> dict[str, Any]:
    """Redeploy the model `site` served before its current one; that site's row as `deploy` gives it.
    Its line's aliases move back (champion <- previous, previous <- the rolled back version), the
    move's why "rollback" (": `why`" when given).

    NotFoundError when the coordinator never rolled a model out there, or only one. A second
    rollback undoes the first (it returns to the model the rollback replaced)."""
    current = rollback_target(center, site)
    try:
        return deploy(center, current["previous"], [site], serve_cfg, timeout_s=timeout_s, on_event=on_event,
                      by=by, why=f"rollback: {why}" if why else "rollback")[0]
    except SiteError as e:
        if e.details.get("results"):
            raise SiteError(f"Rollback of {site} to {current['previous']} failed: {e.details['results'][0]['error']}",
                            hint=f"It keeps serving {current['model']}.", results=e.details["results"]) from e
        raise


def rollback_target(center: Center, site: str) -> dict[str, Any]:
    """The site's current deployment row, whose `previous` a rollback returns to; NotFoundError
    when there is nothing to roll back to."""
    center.site(site)
    current = _current(center, site)
    if current is None:
        raise NotFoundError(f"Nothing to roll back at {site}: the coordinator has not rolled a model out there.",
                            hint=f"Deploy one with `adcp model deploy NAME@VERSION --to {site}`.")
    if not current["previous"]:
        raise NotFoundError(f"Nothing to roll back at {site}: {current['model']} is the first model rolled out there.",
                            hint=f"Deploy another with `adcp model deploy NAME@VERSION --to {site}`.")
    return current
