"""Verdicts back to the center: pull every site's new review verdicts through the site gateway,
resolve disagreements by a written rule, and publish them per dataset line as versioned artifacts.

`sync(center)` asks each site's review station (`<serve base>/review/api/verdicts?after=SEQ`, with
the center's own station token in `X-Adcp-Station-Token`) for the events after the site's cursor,
all sites at once, each bounded by timeouts (a site that does not answer is reported, not fatal).
A page of events and the site's new cursor are stored in one transaction
(`coordinator.state.review`), and an event is stored once by its `event_id`: a sync killed
half-way resumes where it stopped and never counts a verdict twice. Then, per dataset line (the
training dataset of the model that asked), the images whose verdicts changed are resolved,
fetched (from the site store over fsspec at `image_uri`, or from the station's
`/review/api/images/{sha}` when the center cannot reach that store) and published as
`annotations/reviewed-<dataset>` (label per image_id = sha256, annotator = the reviewer, plus
`verdicts.parquet`: every verdict with who, when, site, model version, decision, why, and whether
it still counts) and `dataset/reviewed-<dataset>` (`data.image_datasets.publish_images`); a line
of dataset "" is `reviewed`. Each sync also pushes the signed disabled-accounts list to every site.

The conflict rule that resolves several verdicts on one image is written in
`coordinator.jobs.review_rule` (majority, then the senior role, then the latest).

`conflicts(center)` lists the images whose live verdicts disagree, with their verdicts, the
resolved label and the rule used.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import fsspec
import httpx
import pyarrow as pa

from configs.errors import AdcpError, SiteError
from configs.station_tokens import STATION_TOKEN_HEADER
from coordinator.center.core import Center
from coordinator.jobs.review_rule import ROLE_RANK, live_verdicts, resolve, when
from coordinator.state.review import ReviewRecords
from coordinator.state.users import Users
from data.annotations import publish_annotations
from data.artifacts import ArtifactRef
from data.schema import DEFECT_CLASSES

__all__ = ["ROLE_RANK", "Station", "conflicts", "disabled_names", "line_name", "load_site_db", "push_disabled",
           "resolve", "start_loop", "sync"]

log = logging.getLogger("adcp.review")

VERDICTS_FILE = "verdicts.parquet"
#: Events per page: a page is one transaction at the center; 500 rows keep it well under a second.
PAGE = 500
#: Seconds one HTTP call to a station may take (a site behind a slow link still answers a page).
TIMEOUT_S = 10.0
#: Seconds one site's pull may take in all before the sync moves on (the rest comes next sync).
SITE_DEADLINE_S = 120.0
#: Seconds a station may take to load an annotations artifact into its DB (a big table).
LOAD_TIMEOUT_S = 120.0
#: Images fetched at once (each from its site's store or station).
FETCH_WORKERS = 8

_locks_guard = threading.Lock()
_sync_locks: dict[str, threading.Lock] = {}  # per center home: one sync at a time


def line_name(dataset: str) -> str:
    """The artifact name of a dataset line's reviewed data: `reviewed-<dataset>`, `reviewed` for ""."""
    return f"reviewed-{dataset}" if dataset else "reviewed"


# --- the station client --------------------------------------------------------------------------

class Station:
    """One site's review station through the site gateway, with the center's station token."""

    def __init__(self, center: Center, site: str, timeout_s: float = TIMEOUT_S) -> None:
        self.site = site
        gw = center.gateway(site)
        headers = {**gw.headers("serve"), STATION_TOKEN_HEADER: center.station_keys.center_token()}
        self.http = httpx.Client(base_url=gw.base_url("serve") + "/review", headers=headers, timeout=timeout_s,
                                 **gw.client_options())

    def __enter__(self) -> Station:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.http.close()

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The answer of `method path`; SiteError when the station cannot be reached or refuses."""
        try:
            r = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise SiteError(f"The review station at {self.site} did not answer {method} {path}: "
                            f"{type(e).__name__}: {e}", site=self.site) from e
        if r.status_code >= 400:
            try:
                body = r.json()
                detail = body.get("detail") or body.get("error") if isinstance(body, dict) else body
            except ValueError:
                detail = r.text[:300]
            hint = ("Is the review app deployed there (a model rolled out since)? `adcp status` shows its apps."
                    if r.status_code == 404 else None)
            raise SiteError(f"The review station at {self.site} answered {r.status_code} to {method} {path}: "
                            f"{detail}", hint=hint, site=self.site, status=r.status_code)
        return r

    def verdicts(self, after: int, limit: int = PAGE) -> tuple[list[dict[str, Any]], int]:
        body = self.call("GET", "/api/verdicts", params={"after": after, "limit": limit}).json()
        return list(body.get("events") or []), int(body.get("last_seq") or after)

    def items(self, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if state:
            params["state"] = state
        return list(self.call("GET", "/api/items", params=params).json().get("items") or [])

    def image(self, sha256: str) -> bytes:
        return self.call("GET", f"/api/images/{sha256}").content

    def put_disabled(self, token: str) -> dict[str, Any]:
        return self.call("PUT", "/api/disabled", json={"token": token}).json()

    def load_annotations(self, artifact: str, url: str) -> dict[str, Any]:
        return self.call("POST", "/api/annotations", json={"artifact": artifact, "url": url}).json()


# --- disabled accounts and annotation loads (best effort) -----------------------------------------

def disabled_names(center: Center) -> list[str]:
    return sorted(u.name for u in Users(center.state).list() if u.disabled)


def push_disabled(center: Center, sites: list[str] | None = None) -> dict[str, Any]:
    """Send the signed disabled-accounts list to every site (or `sites`) at once; per site
    {"disabled": n} or {"error": ...}. A site that does not answer gets it on the next sync."""
    token = center.station_keys.disabled_list(disabled_names(center))
    names = sites or [s.name for s in center.sites()]

    def one(site: str) -> dict[str, Any]:
        try:
            with Station(center, site) as st:
                return st.put_disabled(token)
        except AdcpError as e:
            return {"error": str(e)}

    if not names:
        return {}
    with ThreadPoolExecutor(max_workers=min(16, len(names))) as pool:
        return dict(zip(names, pool.map(one, names)))


def load_site_db(center: Center, ref: ArtifactRef, site: str) -> dict[str, Any] | None:
    """A `Center.push_hooks` hook: an annotations artifact just pushed to `site` is loaded into
    the site's review DB (`POST /review/api/annotations`). Best effort: the outcome goes into the
    push result as "site_db" ({"rows": n} or {"error": ...}); never raises."""
    if ref.kind != "annotations":
        return None
    try:
        entry = center.central.manifest(ref).entry("annotations.parquet")
        url = center.store(site).object_url(entry)
        with Station(center, site, LOAD_TIMEOUT_S) as st:
            return {"site_db": st.load_annotations(f"{ref.name}@{ref.version}", url)}
    except Exception as e:  # best effort: the push itself succeeded
        return {"site_db": {"error": f"{type(e).__name__}: {e}"}}


def conflicts(center: Center, sites: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """Images whose live verdicts disagree: {"image", "dataset", "label", "rule", "verdicts": [...]}
    (only those with a verdict given at one of `sites`, when given)."""
    records = ReviewRecords(center.state)
    out = []
    for img in records.images(conflicts_only=True):
        events = records.events(dataset=img["dataset"], image_sha256=img["image_sha256"])
        live = live_verdicts(events)
        if sites is not None and not any(e["site"] in sites for e in live):
            continue
        res = resolve(events) or {}
        out.append({"image": img["image_sha256"], "dataset": img["dataset"], "label": res.get("label"),
                    "rule": res.get("rule"), "labels": res.get("labels", {}),
                    "verdicts": [{k: e[k] for k in ("reviewer", "role", "label", "at", "site", "model_version",
                                                    "event_id")} for e in live]})
    return out


# --- the sync ----------------------------------------------------------------------------------

def sync(center: Center, sites: list[str] | None = None, *, page: int = PAGE, timeout_s: float = TIMEOUT_S,
         site_deadline_s: float = SITE_DEADLINE_S, on_event: Any = None) -> dict[str, Any]:
    """Pull, store, resolve, publish (see the module docstring). Returns {"verdicts_new" (verdicts
    pulled now and not undone: a verdict undone and given again counts once), "verdict_events_new",
    "undos_new", "annotations" ("NAME@V" of the lines published now, comma-joined; else the
    latest of every line; None when there is none), "dataset" (likewise), "lines": [...],
    "sites": [per site: ok, verdicts_new, pages, last_seq, disabled, error], "conflicts": n}.
    One sync runs at a time per center; a second waits for the first."""
    say = on_event or (lambda msg: None)
    names = [center.site(n).name for n in sites] if sites else [s.name for s in center.sites()]
    records = ReviewRecords(center.state)
    with _lock(center):
        token = center.station_keys.disabled_list(disabled_names(center))
        rows: list[dict[str, Any]] = []
        if names:
            with ThreadPoolExecutor(max_workers=min(16, len(names))) as pool:
                rows = list(pool.map(lambda n: _pull(center, records, n, token, page, timeout_s, site_deadline_s),
                                     names))
        for r in rows:
            say(f"{r['site']}: " + (f"{r['verdicts_new']} new verdicts, {r['undos_new']} undos" if r["ok"]
                                    else f"not synced: {r['error']}"))
        lines = _publish(center, records, say)
    published = [ln for ln in lines if ln.get("annotations")]
    latest = published or _latest_lines(center, records)
    return {"verdicts_new": sum(r["verdicts_new"] for r in rows),
            "verdict_events_new": sum(r["verdict_events_new"] for r in rows),
            "undos_new": sum(r["undos_new"] for r in rows),
            "annotations": ", ".join(ln["annotations"] for ln in latest if ln.get("annotations")) or None,
            "dataset": ", ".join(ln["dataset_artifact"] for ln in latest if ln.get("dataset_artifact")) or None,
            "lines": lines, "sites": rows, "conflicts": len(records.images(conflicts_only=True))}


def _lock(center: Center) -> threading.Lock:
    with _locks_guard:
        return _sync_locks.setdefault(str(center.home), threading.Lock())


def _pull(center: Center, records: ReviewRecords, site: str, disabled: str, page: int, timeout_s: float,
          deadline_s: float) -> dict[str, Any]:
    """Pull one site's events after its cursor, page by page, each page stored with the cursor."""
    row: dict[str, Any] = {"site": site, "ok": False, "verdicts_new": 0, "verdict_events_new": 0, "undos_new": 0,
                           "pages": 0, "last_seq": records.cursor(site), "disabled": None, "error": None}
    deadline = time.monotonic() + deadline_s
    verdict_ids: list[str] = []  # of the verdicts stored now
    try:
        with Station(center, site, timeout_s) as st:
            try:
                row["disabled"] = st.put_disabled(disabled).get("disabled")
            except AdcpError as e:
                row["disabled_error"] = str(e)
            cursor = row["last_seq"]
            while True:
                events, last = st.verdicts(cursor, page)
                if not events:
                    break
                new = records.store_page(site, events, max(last, cursor))
                row["pages"] += 1
                verdict_ids += [e["verdict_id"] for e in new if e["kind"] == "verdict"]
                row["undos_new"] += sum(1 for e in new if e["kind"] == "undo")
                if last <= cursor or len(events) < page:
                    cursor = max(last, cursor)
                    break
                cursor = last
                if time.monotonic() > deadline:
                    row["error"] = f"stopped after {deadline_s:.0f} s; the rest comes with the next sync"
                    break
            row["last_seq"] = cursor
        row["ok"] = row["error"] is None
    except AdcpError as e:
        row["error"] = str(e)
        row["last_seq"] = records.cursor(site)
    row["verdict_events_new"] = len(verdict_ids)
    row["verdicts_new"] = len(set(verdict_ids) - records.undone(verdict_ids))
    return row


def _cache_path(center: Center, sha: str) -> Path:
    return center.home / "coordinator" / "review-images" / sha[:2] / sha


def _fetch(center: Center, event: dict[str, Any], timeout_s: float = TIMEOUT_S) -> bytes:
    """The bytes of the image of `event`: from its site's store when the center reaches it, else
    from the station; checked against its sha256 and cached under <home>/coordinator/review-images."""
    sha, site = event["image_sha256"], event["site"]
    path = _cache_path(center, sha)
    if path.is_file():
        return path.read_bytes()
    data = None
    errors = []
    if event.get("image_uri") and center.reachable(site):
        try:
            store = center.store(site)
            uri = event["image_uri"]
            uri = uri if "://" in uri or uri.startswith("/") else f"{store.url}/{uri}"  # a key in the store
            with fsspec.open(uri, "rb", **store.storage_options) as f:
                data = f.read()
        except (OSError, ValueError, AdcpError) as e:
            errors.append(f"store: {type(e).__name__}: {e}")
    if data is None or hashlib.sha256(data).hexdigest() != sha:
        try:
            with Station(center, site, timeout_s) as st:
                data = st.image(sha)
        except AdcpError as e:
            raise SiteError(f"Cannot fetch image {sha[:12]} from {site}: {'; '.join([*errors, str(e)])}") from e
    if hashlib.sha256(data).hexdigest() != sha:
        raise SiteError(f"Image {sha[:12]} from {site} does not match its sha256.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return data


def _publish(center: Center, records: ReviewRecords, say: Any) -> list[dict[str, Any]]:
    """Resolve every pending image, fetch the bytes of those with a label, publish each line."""
    by_line: dict[str, list[str]] = defaultdict(list)
    for dataset, sha in records.pending():
        events = records.events(dataset=dataset, image_sha256=sha)
        res = resolve(events)
        live = live_verdicts(events)
        records.put_resolved(dataset, sha, res, conflict=len({e["label"] for e in live}) > 1, live=len(live))
        by_line[dataset].append(sha)
    lines = []
    for dataset, shas in sorted(by_line.items()):
        try:
            lines.append(_publish_line(center, records, dataset, set(shas), say))
        except AdcpError as e:
            say(f"line {dataset or '(none)'}: not published: {e}")
            lines.append({"dataset_line": dataset, "annotations": None, "dataset_artifact": None, "error": str(e)})
    return lines


def _publish_line(center: Center, records: ReviewRecords, dataset: str, pending: set[str],
                  say: Any) -> dict[str, Any]:
    name = line_name(dataset)
    images = {img["image_sha256"]: img for img in records.images(dataset=dataset)}
    events = records.events(dataset=dataset)
    latest_event: dict[str, dict[str, Any]] = {}
    for e in events:
        if e["kind"] == "verdict":
            latest_event[e["image_sha256"]] = e
    labelled = [sha for sha, img in images.items() if img["label"]]
    missing = [sha for sha in labelled if not images[sha]["have_image"] and sha in latest_event]

    def fetch(sha: str) -> str | None:
        try:
            _fetch(center, latest_event[sha])
            records.set_have_image(sha)
            return None
        except AdcpError as e:
            return str(e)

    with ThreadPoolExecutor(max_workers=FETCH_WORKERS) as pool:
        fetch_errors = [err for err in pool.map(fetch, missing) if err]
    have = {sha for sha in labelled if _cache_path(center, sha).is_file()}
    out: dict[str, Any] = {"dataset_line": dataset, "annotations": None, "dataset_artifact": None,
                           "images": len(have), "labelled": len(labelled), "fetch_errors": fetch_errors[:20]}
    changed = sorted(sha for sha in pending if images[sha]["label"])
    version = None
    if changed:
        updates = pa.table({
            "image_id": changed,
            "label": [images[s]["label"] for s in changed],
            "annotator": [images[s]["annotator"] for s in changed],
            "annotated_at": pa.array([when(images[s]["annotated_at"]) for s in changed], pa.timestamp("ms", "UTC")),
        })
        classes = sorted(set(DEFECT_CLASSES) | {images[s]["label"] for s in labelled})
        sites = sorted({e["site"] for e in events})
        manifest = publish_annotations(center.central, name, updates, author="review-sync", classes=classes,
                                       note=f"verdicts from {', '.join(sites)}",
                                       extra_files={VERDICTS_FILE: _verdicts_table(events)})
        version = manifest.version
        out["annotations"] = f"{name}@{manifest.version}"
        say(f"published annotations/{out['annotations']} ({len(changed)} images changed)")
    if have and (pending & have):
        try:
            out["dataset_artifact"] = _publish_images(center, name, images, sorted(have), latest_event)
            say(f"published dataset/{out['dataset_artifact']}")
        except (AdcpError, ImportError) as e:  # the images stay pending: the next sync publishes them
            out["dataset_error"] = f"{type(e).__name__}: {e}"
            have = set()
    done = [sha for sha in pending if sha in have or not images[sha]["label"]]
    records.mark_published(dataset, done, version)
    return out


def _publish_images(center: Center, name: str, images: dict[str, dict[str, Any]], shas: list[str],
                    latest_event: dict[str, dict[str, Any]]) -> str:
    from data.image_datasets import ImageRecord, publish_images  # part A's writer

    def records():
        for sha in shas:
            e = latest_event.get(sha, {})
            extra = e.get("extra") or {}
            yield ImageRecord(data=_cache_path(center, sha).read_bytes(), label=images[sha]["label"],
                              product=e.get("product", ""), panel_id=str(extra.get("panel_id") or ""),
                              aoi_machine=str(extra.get("aoi_machine") or ""), site=e.get("site", ""),
                              source=e.get("image_uri", ""))

    result = publish_images(center.central, name, records(), source={"kind": "review", "line": name},
                            annotator="review-sync")
    ds = result.dataset
    return ds if isinstance(ds, str) else f"{ds.name}@{ds.version}"


_VERDICT_COLUMNS = ("event_id", "verdict_id", "image_sha256", "label", "reviewer", "role", "at", "site", "product",
                    "model_version", "dataset", "predicted", "decision", "why", "item_id", "image_uri")


def _verdicts_table(events: list[dict[str, Any]]) -> pa.Table:
    """Every verdict of a line, with whether it still counts and when it was undone."""
    undo_at = {e["verdict_id"]: e["at"] for e in events if e["kind"] == "undo"}
    live = {e["event_id"] for e in live_verdicts(events)}
    rows = [e for e in events if e["kind"] == "verdict"]
    cols: dict[str, Any] = {c: [str(e[c]) for e in rows] for c in _VERDICT_COLUMNS}
    cols["image_id"] = cols.pop("image_sha256")
    cols["at"] = pa.array([when(e["at"]) for e in rows], pa.timestamp("ms", "UTC"))
    cols["counts"] = [e["event_id"] in live for e in rows]
    cols["undone_at"] = pa.array([when(undo_at[e["verdict_id"]]) if e["verdict_id"] in undo_at
                                  else (when(undo_at[e["event_id"]]) if e["event_id"] in undo_at else None)
                                  for e in rows], pa.timestamp("ms", "UTC"))
    return pa.table(cols)


def _latest_lines(center: Center, records: ReviewRecords) -> list[dict[str, Any]]:
    out = []
    for dataset in records.lines():
        name = line_name(dataset)
        row: dict[str, Any] = {"dataset_line": dataset}
        for kind, key in (("annotations", "annotations"), ("dataset", "dataset_artifact")):
            versions = center.central.versions(kind, name)
            row[key] = f"{name}@{versions[-1]}" if versions else None
        out.append(row)
    return out


def start_loop(center: Center, interval_s: float) -> threading.Event:
    """Sync every `interval_s` seconds in a daemon thread until the returned event is set."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval_s):
            try:
                sync(center)
            except Exception:  # the loop must outlive one bad sync; the next one retries
                log.exception("scheduled review sync failed")

    threading.Thread(target=loop, name="review-sync", daemon=True).start()
    return stop
