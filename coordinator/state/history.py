"""Bounded per-site history of monitoring figures in the coordinator's SQLite DB.

One row per site and sweep (`monitor_history`: site, t, res, figures as JSON), written for every
site in one transaction per sweep. Rows older than `raw_s` are merged into `downsample_s` means
(res = 1), rows older than `retention_s` are deleted, so a site holds at most
(raw_s + 2 downsample_s)/interval + retention_s/downsample_s + 1 rows (about 744 + 1,441 with the
defaults) whatever its age: compaction runs once per `downsample_s`, on whole buckets only.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = ["History", "bucket_means"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS monitor_history (
    site TEXT NOT NULL,
    t REAL NOT NULL,             -- unix seconds (the sweep's time, or a bucket's start)
    res INTEGER NOT NULL,        -- 0 raw, 1 downsampled mean
    data TEXT NOT NULL           -- JSON {figure: value}
);
CREATE INDEX IF NOT EXISTS monitor_history_site_t ON monitor_history (site, t);
"""

Row = tuple[float, dict[str, float]]


def bucket_means(rows: Iterable[Row], width: float) -> list[Row]:
    """Rows merged into buckets of `width` seconds (aligned to multiples of it): per bucket, its
    start and the mean of each figure over the rows that have it."""
    sums: dict[float, dict[str, list[float]]] = {}
    for t, data in rows:
        start = math.floor(t / width) * width
        acc = sums.setdefault(start, {})
        for name, value in data.items():
            if value is not None:
                pair = acc.setdefault(name, [0.0, 0.0])
                pair[0] += value
                pair[1] += 1
    return [(start, {n: s / k for n, (s, k) in acc.items()}) for start, acc in sorted(sums.items())]


class History:
    """The monitor's own connection to the state DB (WAL), so a long read here never holds the
    State's lock."""

    def __init__(self, path: str | Path, *, retention_s: float, raw_s: float, downsample_s: float) -> None:
        self.retention_s, self.raw_s, self.downsample_s = retention_s, raw_s, downsample_s
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), timeout=30, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._compacted_at = 0.0

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def write(self, t: float, figures: Mapping[str, Mapping[str, float]]) -> None:
        """One sweep's figures (site -> figures) in one transaction; compacts at most once per
        `downsample_s`."""
        rows = [(site, t, json.dumps(data, separators=(",", ":"))) for site, data in figures.items() if data]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT INTO monitor_history (site, t, res, data) VALUES (?, ?, 0, ?)", rows)
                if t - self._compacted_at >= self.downsample_s:
                    self._compact(t)
                    self._compacted_at = t
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _compact(self, now: float) -> None:
        """Drop what is past retention; merge raw rows older than raw_s, in whole buckets only."""
        self._db.execute("DELETE FROM monitor_history WHERE t < ?", (now - self.retention_s,))
        edge = math.floor((now - self.raw_s) / self.downsample_s) * self.downsample_s
        old = self._db.execute("SELECT site, t, data FROM monitor_history WHERE res = 0 AND t < ? ORDER BY site, t",
                               (edge,)).fetchall()
        if not old:
            return
        by_site: dict[str, list[Row]] = {}
        for site, t, data in old:
            by_site.setdefault(site, []).append((t, json.loads(data)))
        merged = [(site, start, json.dumps(means, separators=(",", ":")))
                  for site, rows in by_site.items() for start, means in bucket_means(rows, self.downsample_s)]
        self._db.execute("DELETE FROM monitor_history WHERE res = 0 AND t < ?", (edge,))
        self._db.executemany("INSERT INTO monitor_history (site, t, res, data) VALUES (?, ?, 1, ?)", merged)

    def read(self, site: str, names: list[str] | None, since: float, until: float | None = None) -> list[Row]:
        """Rows of `site` from `since`, oldest first, each with only `names` (all when None)."""
        sql = "SELECT t, data FROM monitor_history WHERE site = ? AND t >= ?"
        args: list[object] = [site, since]
        if until is not None:
            sql += " AND t <= ?"
            args.append(until)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY t", args).fetchall()
        out: list[Row] = []
        for t, data in rows:
            figures = json.loads(data)
            out.append((t, figures if names is None else {n: figures[n] for n in names if n in figures}))
        return out

    def count(self, site: str | None = None) -> int:
        with self._lock:
            if site is None:
                return self._db.execute("SELECT COUNT(*) FROM monitor_history").fetchone()[0]
            return self._db.execute("SELECT COUNT(*) FROM monitor_history WHERE site = ?", (site,)).fetchone()[0]

    def forget(self, site: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM monitor_history WHERE site = ?", (site,))
