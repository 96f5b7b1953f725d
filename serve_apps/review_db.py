"""The site review database: the queue of images waiting for a human verdict, the verdicts, counts.

`ReviewDB(url)` runs the same SQLAlchemy Core code on SQLite (the embedded default: WAL, a busy
timeout, every transaction `BEGIN IMMEDIATE` so claims are serialised) and PostgreSQL (psycopg;
claims use `SELECT ... FOR UPDATE SKIP LOCKED`). The ADC app's recorder writes items and decision
counts; the review station claims items under a lease, records verdicts (append-only events with
a growing `seq` that the center pulls) and reads the site's production-quality figures.

Every method takes an optional keyword `now` (an aware datetime) so tests can move time.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, case, exists, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from configs.errors import ConfigError, ConflictError, InputError, NotFoundError
from serve_apps.review_shadow import ShadowQueries, ShadowResult
from serve_apps.review_tables import (
    SCHEMA_VERSION,
    decision_counts,
    make_engine,
    metadata,
    normalize_url,
    review_items,
    site_annotations,
    station_state,
    upgrade,
    verdict_events,
)

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["DECISIONS", "SPECIAL_LABELS", "QueuedItem", "ReviewDB", "normalize_url"]

DECISIONS = ("defect", "false_defect", "review")
#: Labels a reviewer may give besides the model's classes.
SPECIAL_LABELS = ("false_defect", "unsure")
ITEM_STATES = ("queued", "claimed", "done")
MAX_BATCH = 1000

I = review_items.c  # noqa: E741 - the one table most queries read
V = verdict_events.c


@dataclass
class QueuedItem:
    """One decision to queue for review (what the ADC app's recorder writes)."""

    id: str
    image_sha256: str
    image_uri: str
    site: str
    product: str
    aoi_machine: str
    panel_id: str
    model_version: str
    dataset: str
    predicted: str
    confidence: float
    top3: list[dict]
    decision: str
    why: str
    created_at: datetime
    classes: list[str] = field(default_factory=list)  # the model's classes (the verdict labels)
    priority: int = 0  # claims take higher first (shadow disagreements: 1)


_ITEM_FIELDS = tuple(f.name for f in fields(QueuedItem))


def _utcnow(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(timezone.utc)
    if now.tzinfo is None:
        raise InputError(f"now={now!r} has no time zone", allowed="timezone-aware datetimes")
    return now


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


class ReviewDB(ShadowQueries):
    """The site's review queue, verdict events, decision counts, annotations, station state and
    shadow results (serve_apps.review_shadow)."""

    def __init__(self, url: str, *, lease_s: float = 300.0) -> None:
        self.url = url
        self.lease_s = lease_s  # how long an undone item is leased back to its reviewer
        self._engine = make_engine(url)
        self._pg = self._engine.dialect.name == "postgresql"
        self._create()

    # ---- set-up -------------------------------------------------------------------------
    def _create(self) -> None:
        for attempt in range(2):  # two processes creating the tables at once: the loser retries
            try:
                metadata.create_all(self._engine)
                break
            except DBAPIError:
                if attempt:
                    raise
        found = self.get_state("schema_version")
        if found is None:
            self.set_state("schema_version", str(SCHEMA_VERSION))
        elif int(found) < SCHEMA_VERSION:
            upgrade(self._engine, int(found))
            self.set_state("schema_version", str(SCHEMA_VERSION))
        elif int(found) > SCHEMA_VERSION:
            raise ConfigError(f"review DB {self.url!r} has schema version {found}, newer than this code's",
                              allowed=f"schema version <= {SCHEMA_VERSION}", hint="upgrade the platform at this site")

    def _upsert(self, table: Any, keys: list[str], set_cols: dict[str, Any]) -> Any:
        """INSERT ... ON CONFLICT DO UPDATE, to execute with a list of rows (one compiled statement)."""
        ins = (postgresql if self._pg else sqlite).insert(table)
        return ins.on_conflict_do_update(index_elements=keys, set_={k: v(ins.excluded) for k, v in set_cols.items()})

    def close(self) -> None:
        self._engine.dispose()

    # ---- conditions ------------------------------------------------------------------------
    @staticmethod
    def _live(now: datetime) -> Any:
        return and_(I.state == "claimed", I.lease_until > now)

    @staticmethod
    def _free(now: datetime) -> Any:
        return or_(I.state == "queued", and_(I.state == "claimed", I.lease_until <= now))

    @staticmethod
    def _not_undone() -> Any:
        undo = verdict_events.alias("undo")
        return ~exists(select(undo.c.seq).where(undo.c.kind == "undo", undo.c.verdict_id == V.event_id))

    def _judged_by(self, reviewer: str) -> Any:
        return exists(select(V.seq).where(V.item_id == I.id, V.kind == "verdict", V.reviewer == reviewer,
                                          self._not_undone()))

    def _item_row(self, c: Connection, item_id: str) -> Any:
        q = select(review_items).where(I.id == item_id)
        if self._pg:
            q = q.with_for_update()
        row = c.execute(q).first()
        if row is None:
            raise NotFoundError(f"review item {item_id!r} does not exist", hint="claim items to get their ids")
        return row

    @staticmethod
    def _item_dict(row: Any, now: datetime) -> dict:
        m = row._mapping
        state = m["state"]
        if state == "claimed" and (m["lease_until"] is None or m["lease_until"] <= now):
            state = "queued"  # an expired lease: back in the queue
        out = {k: m[k] for k in ("id", "image_sha256", "image_uri", "site", "product", "aoi_machine",
                                 "panel_id", "model_version", "dataset", "predicted", "confidence",
                                 "top3", "decision", "why")}
        out.update(created_at=_iso(m["created_at"]), state=state, second_opinion=bool(m["second_opinion"]),
                   classes=list(m["classes"]), priority=int(m["priority"] or 0))
        return out

    @staticmethod
    def _event_dict(row: Any) -> dict:
        m = dict(row._mapping)
        m["at"] = _iso(m["at"])
        return m

    @staticmethod
    def labels(item: Any) -> list[str]:
        """The labels a reviewer may give this item: the model's classes, false_defect, unsure."""
        m = item._mapping if hasattr(item, "_mapping") else item
        classes = list(m["classes"]) or [m["predicted"], *(t["class"] for t in m["top3"])]
        return list(dict.fromkeys([*classes, *SPECIAL_LABELS]))

    # ---- the recorder's side -------------------------------------------------------------
    def record(self, items: list[QueuedItem], counts: dict[tuple[str, str, str, str], int] | None = None,
               shadow: list[ShadowResult] | None = None) -> None:
        """Queue these decisions for review, add `counts` (as count_decisions) and store `shadow`
        results, in one transaction. An item with a priority whose image already waits for a
        verdict raises that item's priority instead of queueing the image twice."""
        rows = []
        for it in items:
            if it.decision not in DECISIONS:
                raise InputError(f"decision {it.decision!r} of item {it.id}", allowed=", ".join(DECISIONS))
            row = {name: getattr(it, name) for name in _ITEM_FIELDS}  # shallow: asdict deep-copies
            row.update(first_why=it.why, state="queued", second_opinion=False)
            rows.append(row)
        counted = [{"site": s, "product": p, "model_version": m, "decision": d, "n": int(n)}
                   for (s, p, m, d), n in (counts or {}).items() if n]
        if not rows and not counted and not shadow:
            return
        with self._engine.begin() as c:
            self._insert_shadow(c, shadow or [])
            plain = [r for r in rows if not r["priority"]]
            for i in range(0, len(plain), MAX_BATCH):
                c.execute(insert(review_items), plain[i:i + MAX_BATCH])
            for r in rows:  # after the plain ones: they may hold the same image
                if r["priority"] and not self._raise_priority(c, r):
                    c.execute(insert(review_items), [r])
            if counted:
                c.execute(self._upsert(decision_counts, ["site", "product", "model_version", "decision"],
                                       {"n": lambda ex: decision_counts.c.n + ex.n}), counted)

    @staticmethod
    def _raise_priority(c: Connection, row: dict) -> bool:
        """Raise the priority of an unjudged item of the same image; False when there is none."""
        done = c.execute(update(review_items).where(I.image_sha256 == row["image_sha256"], I.state != "done",
                                                    I.priority < row["priority"])
                         .values(priority=row["priority"]))
        waiting = c.execute(select(I.id).where(I.image_sha256 == row["image_sha256"], I.state != "done")
                            .limit(1)).first()
        return bool(done.rowcount) or waiting is not None

    def count_decisions(self, counts: dict[tuple[str, str, str, str], int]) -> None:
        """Add n to each (site, product, model_version, decision) count."""
        self.record([], counts)

    # ---- the reviewer's side --------------------------------------------------------------
    def claim(self, reviewer: str, n: int, *, lease_s: float, product: str | None = None,
              include_held: bool = False, now: datetime | None = None) -> tuple[str, datetime, list[dict]]:
        """Lease up to n queued items (higher priority first, then oldest) to reviewer: (lease_id, lease_until, items).

        Atomic: no item is ever leased to two reviewers; an expired lease counts as free; an item
        the reviewer already gave a verdict is never given back to them (second opinions). The
        items the reviewer still holds get the new lease too; they are returned (first) only with
        include_held=True (a station page that reloaded).
        """
        if not 0 <= n <= MAX_BATCH:
            raise InputError(f"claim of {n} items", allowed=f"0..{MAX_BATCH}")
        if lease_s <= 0:
            raise InputError(f"lease of {lease_s} s", allowed="a positive number of seconds")
        now = _utcnow(now)
        until = now + timedelta(seconds=lease_s)
        lease_id = uuid.uuid4().hex
        lease = {"state": "claimed", "lease_id": lease_id, "lease_reviewer": reviewer, "lease_until": until}
        with self._engine.begin() as c:
            held_q = select(I.id).where(I.lease_reviewer == reviewer, self._live(now))
            if product is not None:
                held_q = held_q.where(I.product == product)
            held = [r[0] for r in c.execute(held_q)]
            if held:
                c.execute(update(review_items).where(I.id.in_(held), I.lease_reviewer == reviewer).values(**lease))
            new: list[str] = []
            if n:
                q = (select(I.id).where(self._free(now), ~self._judged_by(reviewer))
                     .order_by(I.priority.desc(), I.created_at, I.id).limit(n))
                if product is not None:
                    q = q.where(I.product == product)
                if self._pg:
                    q = q.with_for_update(skip_locked=True, of=review_items)
                new = [r[0] for r in c.execute(q)]
            if new:
                # The free check again: whatever the isolation, only still-free rows change hands.
                c.execute(update(review_items).where(I.id.in_(new), self._free(now)).values(**lease))
            got = c.execute(select(review_items).where(I.lease_id == lease_id)
                            .order_by(I.created_at, I.id)).all()
        by_id = {r.id: r for r in got}
        order = ([*held, *new] if include_held else new)
        return lease_id, until, [self._item_dict(by_id[i], now) for i in order if i in by_id]

    def verdict(self, item_id: str, reviewer: str, role: str, label: str, *,
                now: datetime | None = None) -> dict:
        """Record reviewer's verdict on an item they hold; "unsure" sends it back as escalated."""
        now = _utcnow(now)
        with self._engine.begin() as c:
            row = self._item_row(c, item_id)
            allowed = self.labels(row)
            if label not in allowed:
                raise InputError(f"label {label!r} for item {item_id}", allowed=", ".join(allowed))
            if not (row.state == "claimed" and row.lease_reviewer == reviewer and row.lease_until > now):
                raise ConflictError(f"item {item_id} is not leased to {reviewer!r} (lease expired or never held)",
                                    hint="claim items again and judge one of those")
            values: dict[str, Any] = {"lease_reviewer": None, "lease_until": None}
            values.update({"state": "queued", "why": "escalated"} if label == "unsure" else {"state": "done"})
            done = c.execute(update(review_items).where(I.id == item_id, I.state == "claimed",
                                                        I.lease_reviewer == reviewer, I.lease_until > now)
                             .values(**values))
            if done.rowcount != 1:
                raise ConflictError(f"item {item_id} is not leased to {reviewer!r}", hint="claim items again")
            event_id = uuid.uuid4().hex
            return self._append(c, row, kind="verdict", event_id=event_id, verdict_id=event_id, label=label,
                                reviewer=reviewer, role=role, why=row.why, at=now)

    def _append(self, c: Connection, item: Any, **fields: Any) -> dict:
        ev = {"image_sha256": item.image_sha256, "image_uri": item.image_uri, "item_id": item.id,
              "site": item.site, "product": item.product, "model_version": item.model_version,
              "dataset": item.dataset, "predicted": item.predicted, "decision": item.decision, **fields}
        seq = c.execute(insert(verdict_events).values(**ev)).inserted_primary_key[0]
        row = c.execute(select(verdict_events).where(V.seq == seq)).one()
        return self._event_dict(row)

    def undo(self, reviewer: str, *, now: datetime | None = None) -> dict:
        """Undo reviewer's last verdict (an "undo" event); the item is leased back to them."""
        now = _utcnow(now)
        with self._engine.begin() as c:
            last = c.execute(select(verdict_events)
                             .where(V.kind == "verdict", V.reviewer == reviewer, self._not_undone())
                             .order_by(V.seq.desc()).limit(1)).first()
            if last is None:
                raise NotFoundError(f"{reviewer!r} has no verdict to undo")
            item = self._item_row(c, last.item_id)
            if item.state == "claimed" and item.lease_reviewer != reviewer and item.lease_until > now:
                raise ConflictError(f"item {item.id} is now leased to another reviewer; its verdict stays",
                                    holder=item.lease_reviewer)
            c.execute(update(review_items).where(I.id == item.id).values(
                state="claimed", lease_reviewer=reviewer, why=last.why,
                lease_until=now + timedelta(seconds=self.lease_s), lease_id=item.lease_id or uuid.uuid4().hex))
            return self._append(c, item, kind="undo", event_id=uuid.uuid4().hex, verdict_id=last.event_id,
                                label=last.label, reviewer=reviewer, role=last.role, why=last.why, at=now)

    def second_opinion(self, item_id: str, reviewer: str, *, now: datetime | None = None) -> dict:
        """Put an item reviewer judged (or holds) back in the queue for someone else's verdict."""
        now = _utcnow(now)
        with self._engine.begin() as c:
            item = self._item_row(c, item_id)
            holds = item.state == "claimed" and item.lease_reviewer == reviewer and item.lease_until > now
            judged = c.execute(select(V.seq).where(V.item_id == item_id, V.kind == "verdict",
                                                   V.reviewer == reviewer, self._not_undone()).limit(1)).first()
            if not (holds or judged):
                raise ConflictError(f"{reviewer!r} neither judged nor holds item {item_id}",
                                    hint="ask for a second opinion on an item you reviewed")
            if item.state == "claimed" and item.lease_reviewer != reviewer and item.lease_until > now:
                raise ConflictError(f"item {item_id} is already leased to another reviewer", holder=item.lease_reviewer)
            c.execute(update(review_items).where(I.id == item_id).values(
                state="queued", second_opinion=True, lease_reviewer=None, lease_until=None))
            return self._item_dict(c.execute(select(review_items).where(I.id == item_id)).one(), now)

    def release(self, reviewer: str, *, now: datetime | None = None) -> int:
        """Give back every item reviewer holds; the number released."""
        now = _utcnow(now)
        with self._engine.begin() as c:
            res = c.execute(update(review_items).where(I.lease_reviewer == reviewer, self._live(now))
                            .values(state="queued", lease_reviewer=None, lease_until=None))
            return res.rowcount

    # ---- reading -------------------------------------------------------------------------------
    def queue_stats(self, *, now: datetime | None = None) -> dict:
        """Items without a verdict: {"total", "by_product": [{"product", "queued", "claimed", "oldest_age_s"}]}."""
        now = _utcnow(now)
        live = case((self._live(now), 1), else_=0)
        q = (select(I.product, func.count(), func.sum(live), func.min(I.created_at))
             .where(I.state != "done").group_by(I.product).order_by(I.product))
        with self._engine.begin() as c:
            rows = c.execute(q).all()
        by_product = []
        for product, total, claimed, oldest in rows:
            oldest = oldest.replace(tzinfo=timezone.utc) if oldest.tzinfo is None else oldest
            by_product.append({"product": product, "queued": int(total) - int(claimed or 0),
                               "claimed": int(claimed or 0),
                               "oldest_age_s": max(0.0, (now - oldest).total_seconds())})
        return {"total": sum(p["queued"] + p["claimed"] for p in by_product), "by_product": by_product}

    def items(self, *, state: str | None = None, limit: int = 100, now: datetime | None = None) -> list[dict]:
        """Items, oldest first; state queued (incl. expired leases) | claimed (live lease) | done."""
        now = _utcnow(now)
        if state is not None and state not in ITEM_STATES:
            raise InputError(f"item state {state!r}", allowed=", ".join(ITEM_STATES))
        if not 1 <= limit <= 10 * MAX_BATCH:
            raise InputError(f"limit {limit}", allowed=f"1..{10 * MAX_BATCH}")
        q = select(review_items).order_by(I.created_at, I.id).limit(limit)
        cond = {"queued": self._free(now), "claimed": self._live(now), "done": I.state == "done"}.get(state or "")
        if cond is not None:
            q = q.where(cond)
        with self._engine.begin() as c:
            return [self._item_dict(r, now) for r in c.execute(q)]

    def image(self, sha256: str) -> dict | None:
        """The (first) item holding this image, or None."""
        with self._engine.begin() as c:
            row = c.execute(select(review_items).where(I.image_sha256 == sha256)
                            .order_by(I.created_at).limit(1)).first()
        return None if row is None else self._item_dict(row, _utcnow(None))

    def events_after(self, seq: int, limit: int = 1000) -> tuple[list[dict], int]:
        """Verdict and undo events with seq > seq, oldest first, and the last seq returned."""
        if not 1 <= limit <= 10 * MAX_BATCH:
            raise InputError(f"limit {limit}", allowed=f"1..{10 * MAX_BATCH}")
        with self._engine.begin() as c:
            rows = c.execute(select(verdict_events).where(V.seq > seq).order_by(V.seq).limit(limit)).all()
        events = [self._event_dict(r) for r in rows]
        return events, (events[-1]["seq"] if events else seq)

    def stats(self, *, now: datetime | None = None) -> list[dict]:
        """Per (product, model_version): classified, automatic, review, the audit figures, backlog."""
        now = _utcnow(now)
        rows: dict[tuple[str, str], dict] = {}

        def row(product: str, model_version: str) -> dict:
            return rows.setdefault((product, model_version), {
                "product": product, "model_version": model_version, "classified": 0, "automatic": 0,
                "review": 0, "audited_defect": 0, "overkill": 0, "audited_false_defect": 0, "escapes": 0,
                "backlog": 0, "oldest_age_s": 0.0})

        dc = decision_counts.c
        # The standing verdict of an item: its latest verdict that is neither undone nor "unsure".
        latest = (select(V.item_id, func.max(V.seq).label("seq"))
                  .where(V.kind == "verdict", V.label != "unsure", self._not_undone())
                  .group_by(V.item_id).subquery())
        human = select(V.item_id, V.label).join(latest, V.seq == latest.c.seq).subquery()
        is_false = case((human.c.label == "false_defect", 1), else_=0)
        audit_q = (select(I.product, I.model_version, I.decision, func.count(), func.sum(is_false))
                   .join(human, human.c.item_id == I.id)
                   .where(I.first_why == "audit", I.decision.in_(("defect", "false_defect")))
                   .group_by(I.product, I.model_version, I.decision))
        backlog_q = (select(I.product, I.model_version, func.count(), func.min(I.created_at))
                     .where(I.state != "done").group_by(I.product, I.model_version))
        with self._engine.begin() as c:
            counts = c.execute(select(dc.product, dc.model_version, dc.decision, func.sum(dc.n))
                               .group_by(dc.product, dc.model_version, dc.decision)).all()
            audits = c.execute(audit_q).all()
            backlog = c.execute(backlog_q).all()
        for product, mv, decision, n in counts:
            r = row(product, mv)
            r["classified"] += int(n)
            r["automatic" if decision in ("defect", "false_defect") else "review"] += int(n)
        for product, mv, decision, n, n_false in audits:
            r = row(product, mv)
            if decision == "defect":
                r["audited_defect"] += int(n)
                r["overkill"] += int(n_false or 0)
            else:
                r["audited_false_defect"] += int(n)
                r["escapes"] += int(n) - int(n_false or 0)
        for product, mv, n, oldest in backlog:
            r = row(product, mv)
            oldest = oldest.replace(tzinfo=timezone.utc) if oldest.tzinfo is None else oldest
            r.update(backlog=int(n), oldest_age_s=max(0.0, (now - oldest).total_seconds()))
        return [rows[k] for k in sorted(rows)]

    # ---- annotations and station state -------------------------------------------------------
    def load_annotations(self, artifact: str, table: pa.Table, *, now: datetime | None = None) -> int:
        """Upsert an annotations artifact's rows (keyed by image id and artifact name); the row count."""
        now = _utcnow(now)
        if "image_id" not in table.column_names:
            raise InputError(f"annotations {artifact!r} have no image_id column",
                             allowed="a table with image_id, label[, product, annotator, annotated_at]")
        source = artifact.split("@", 1)[0]
        total = 0
        for batch in table.to_batches(max_chunksize=MAX_BATCH):
            rows = []
            for r in batch.to_pylist():
                at = r.get("annotated_at")
                if isinstance(at, datetime) and at.tzinfo is None:
                    at = at.replace(tzinfo=timezone.utc)
                rows.append({"image_id": r["image_id"], "source": source, "artifact": artifact,
                             "label": r.get("label"), "product": r.get("product") or "",
                             "annotator": r.get("annotator") or "", "annotated_at": at, "loaded_at": now})
            if not rows:
                continue
            cols = ("artifact", "label", "product", "annotator", "annotated_at", "loaded_at")
            with self._engine.begin() as c:
                c.execute(self._upsert(site_annotations, ["image_id", "source"],
                                       {k: (lambda ex, k=k: getattr(ex, k)) for k in cols}), rows)
            total += len(rows)
        return total

    def query_annotations(self, *, image_id: str | None = None, label: str | None = None,
                          product: str | None = None, limit: int = 1000) -> list[dict]:
        """Loaded annotation rows matching every filter given."""
        a = site_annotations.c
        q = select(site_annotations).order_by(a.image_id, a.source).limit(limit)
        for col, value in ((a.image_id, image_id), (a.label, label), (a.product, product)):
            if value is not None:
                q = q.where(col == value)
        with self._engine.begin() as c:
            out = [dict(r._mapping) for r in c.execute(q)]
        for r in out:
            r["annotated_at"], r["loaded_at"] = _iso(r["annotated_at"]), _iso(r["loaded_at"])
        return out

    def get_state(self, key: str) -> str | None:
        with self._engine.begin() as c:
            return c.execute(select(station_state.c.value).where(station_state.c.key == key)).scalar()

    def set_state(self, key: str, value: str) -> None:
        with self._engine.begin() as c:
            c.execute(self._upsert(station_state, ["key"], {"value": lambda ex: ex.value}),
                      [{"key": key, "value": value}])
