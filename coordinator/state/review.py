"""The verdicts the center pulled from every site's review station, in the coordinator DB.

Three tables over the `State` connection and lock:

- `review_cursors`: per site, the last station event seq the center has stored (the next pull asks
  for events after it);
- `review_events`: every verdict and undo event pulled, keyed by its `event_id`, so an event
  pulled twice (a sync killed after storing, before its cursor moved) is stored once;
- `review_images`: per dataset line and image (sha256), the label the conflict rule resolved, which
  rule decided, whether live verdicts disagree, whether the center holds the image's bytes, and
  whether the line's artifacts still have to be published with it (`pending`).

`store_page` writes a page of events and moves the site's cursor in one transaction: either both
happen or neither, which is what makes a sync resumable without double counting.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from coordinator.state.db import State, now

__all__ = ["EVENT_FIELDS", "ReviewRecords"]

#: The verdict event fields of a station (contract §5) kept per event.
EVENT_FIELDS: tuple[str, ...] = (
    "event_id", "site", "seq", "kind", "verdict_id", "item_id", "image_sha256", "image_uri", "label", "reviewer",
    "role", "at", "product", "model_version", "dataset", "predicted", "decision", "why",
)

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS review_cursors (
    site TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL,
    updated_at TEXT NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS review_events (
    event_id TEXT PRIMARY KEY,
    site TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,              -- verdict | undo
    verdict_id TEXT NOT NULL,        -- a verdict's own id; for an undo, the verdict it undoes
    item_id TEXT NOT NULL DEFAULT '',
    image_sha256 TEXT NOT NULL,
    image_uri TEXT NOT NULL DEFAULT '',
    label TEXT NOT NULL DEFAULT '',
    reviewer TEXT NOT NULL DEFAULT '',
    role TEXT NOT NULL DEFAULT '',
    at TEXT NOT NULL,
    product TEXT NOT NULL DEFAULT '',
    model_version TEXT NOT NULL DEFAULT '',
    dataset TEXT NOT NULL DEFAULT '',
    predicted TEXT NOT NULL DEFAULT '',
    decision TEXT NOT NULL DEFAULT '',
    why TEXT NOT NULL DEFAULT '',
    extra TEXT NOT NULL DEFAULT '{}',   -- JSON: the event's other fields (aoi_machine, panel_id, ...)
    pulled_at TEXT NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS review_events_image ON review_events (dataset, image_sha256)",
    "CREATE INDEX IF NOT EXISTS review_events_verdict ON review_events (verdict_id)",
    """CREATE TABLE IF NOT EXISTS review_images (
    dataset TEXT NOT NULL,           -- the dataset line ('' when the model's dataset was unknown)
    image_sha256 TEXT NOT NULL,
    label TEXT,                      -- resolved label; NULL when no live verdict counts
    rule TEXT NOT NULL DEFAULT '',   -- which rule decided (single, unanimous, majority, senior_role, latest)
    annotator TEXT NOT NULL DEFAULT '',
    annotated_at TEXT NOT NULL DEFAULT '',
    live INTEGER NOT NULL DEFAULT 0, -- live verdicts that count
    conflict INTEGER NOT NULL DEFAULT 0,
    have_image INTEGER NOT NULL DEFAULT 0,
    pending INTEGER NOT NULL DEFAULT 1,
    published TEXT,                  -- annotations version that last carried it
    updated_at TEXT NOT NULL,
    PRIMARY KEY (dataset, image_sha256)
)""",
)


class ReviewRecords:
    """Cursors, pulled events and resolved images over one `State` (its connection and lock)."""

    def __init__(self, state: State) -> None:
        self.state = state
        for statement in _SCHEMA:
            state._exec(statement)

    # --- cursors ---------------------------------------------------------------------------

    def cursor(self, site: str) -> int:
        rows = self.state._exec("SELECT last_seq FROM review_cursors WHERE site = ?", (site,))
        return int(rows[0][0]) if rows else 0

    def cursors(self) -> dict[str, int]:
        return {r[0]: int(r[1]) for r in self.state._exec("SELECT site, last_seq FROM review_cursors")}

    def store_page(self, site: str, events: list[dict[str, Any]], last_seq: int) -> list[dict[str, Any]]:
        """Store a page of `site`'s events and move its cursor to `last_seq`, in one transaction.
        Returns the events that were new (an event_id seen before is skipped)."""
        stamp = now()
        new: list[dict[str, Any]] = []
        with self.state._lock:
            db = self.state._db
            db.execute("BEGIN IMMEDIATE")
            try:
                for e in events:
                    row = _row(site, e)
                    cur = db.execute(
                        f"INSERT OR IGNORE INTO review_events ({', '.join(EVENT_FIELDS)}, extra, pulled_at) "
                        f"VALUES ({', '.join('?' * (len(EVENT_FIELDS) + 2))})",
                        (*(row[f] for f in EVENT_FIELDS), row["extra"], stamp))
                    if cur.rowcount:
                        new.append(row)
                db.execute(
                    "INSERT INTO review_cursors (site, last_seq, updated_at) VALUES (?, ?, ?) "
                    "ON CONFLICT(site) DO UPDATE SET last_seq = MAX(last_seq, excluded.last_seq), "
                    "updated_at = excluded.updated_at", (site, int(last_seq), stamp))
                for dataset, sha in {(r["dataset"], r["image_sha256"]) for r in new}:
                    db.execute(
                        "INSERT INTO review_images (dataset, image_sha256, pending, updated_at) VALUES (?, ?, 1, ?) "
                        "ON CONFLICT(dataset, image_sha256) DO UPDATE SET pending = 1, "
                        "updated_at = excluded.updated_at",
                        (dataset, sha, stamp))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return new

    # --- events ----------------------------------------------------------------------------

    def events(self, *, dataset: str | None = None, image_sha256: str | None = None) -> list[dict[str, Any]]:
        """Stored events (of one dataset line, one image), oldest first."""
        where, args = [], []
        if dataset is not None:
            where.append("dataset = ?")
            args.append(dataset)
        if image_sha256 is not None:
            where.append("image_sha256 = ?")
            args.append(image_sha256)
        sql = "SELECT * FROM review_events" + (" WHERE " + " AND ".join(where) if where else "")
        return [_event(r) for r in self.state._exec(sql + " ORDER BY at, site, seq", tuple(args))]

    def undone(self, verdict_ids: Iterable[str]) -> set[str]:
        """Those of `verdict_ids` that an undo event names."""
        ids = list(verdict_ids)
        out: set[str] = set()
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            rows = self.state._exec(f"SELECT verdict_id FROM review_events WHERE kind = 'undo' AND verdict_id IN "
                                    f"({', '.join('?' * len(chunk))})", tuple(chunk))
            out.update(r[0] for r in rows)
        return out

    def count(self, kind: str = "verdict") -> int:
        return int(self.state._exec("SELECT COUNT(*) FROM review_events WHERE kind = ?", (kind,))[0][0])

    # --- resolved images ---------------------------------------------------------------------

    def pending(self) -> list[tuple[str, str]]:
        """(dataset line, image sha256) of images whose verdicts changed since they were last published."""
        rows = self.state._exec("SELECT dataset, image_sha256 FROM review_images WHERE pending = 1 "
                                "ORDER BY dataset, image_sha256")
        return [(r[0], r[1]) for r in rows]

    def put_resolved(self, dataset: str, sha: str, resolved: dict[str, Any] | None, *, conflict: bool,
                     live: int) -> None:
        """Record the label the rule resolved for an image (None: no live verdict counts)."""
        r = resolved or {}
        self.state._exec(
            "UPDATE review_images SET label = ?, rule = ?, annotator = ?, annotated_at = ?, live = ?, conflict = ?, "
            "updated_at = ? WHERE dataset = ? AND image_sha256 = ?",
            (r.get("label"), r.get("rule", ""), r.get("annotator", ""), r.get("annotated_at", ""), live,
             int(conflict), now(), dataset, sha))

    def set_have_image(self, sha: str) -> None:
        self.state._exec("UPDATE review_images SET have_image = 1 WHERE image_sha256 = ?", (sha,))

    def mark_published(self, dataset: str, shas: list[str], version: str | None) -> None:
        """The line's artifacts now carry `shas` (version: the annotations version, if one was made)."""
        for i in range(0, len(shas), 500):
            chunk = shas[i:i + 500]
            self.state._exec(
                f"UPDATE review_images SET pending = 0, published = COALESCE(?, published), updated_at = ? "
                f"WHERE dataset = ? AND image_sha256 IN ({', '.join('?' * len(chunk))})",
                (version, now(), dataset, *chunk))

    def images(self, *, dataset: str | None = None, conflicts_only: bool = False) -> list[dict[str, Any]]:
        where, args = [], []
        if dataset is not None:
            where.append("dataset = ?")
            args.append(dataset)
        if conflicts_only:
            where.append("conflict = 1")
        sql = "SELECT * FROM review_images" + (" WHERE " + " AND ".join(where) if where else "")
        return [dict(r) for r in self.state._exec(sql + " ORDER BY dataset, image_sha256", tuple(args))]

    def lines(self) -> list[str]:
        return [r[0] for r in self.state._exec("SELECT DISTINCT dataset FROM review_images ORDER BY dataset")]


def _row(site: str, e: dict[str, Any]) -> dict[str, Any]:
    """A station event as a row: every known field as text (seq an int), the rest as JSON."""
    row: dict[str, Any] = {f: "" if e.get(f) is None else str(e.get(f)) for f in EVENT_FIELDS}
    row["site"] = str(e.get("site") or site)
    row["seq"] = int(e.get("seq") or 0)
    row["kind"] = str(e.get("kind") or "verdict")
    row["verdict_id"] = str(e.get("verdict_id") or e.get("event_id"))
    row["extra"] = json.dumps({k: v for k, v in e.items() if k not in EVENT_FIELDS}, default=str, sort_keys=True)
    return row


def _event(r: Any) -> dict[str, Any]:
    d = dict(r)
    d["extra"] = json.loads(d.get("extra") or "{}")
    return d
