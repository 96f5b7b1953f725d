"""Model lines in the coordinator's state: per-site aliases, every move of one, and the reports
(gate, shadow, watch) stored with a version.

A model line is a model artifact name (`model/<line>@<version>`); the central store holds its
versions. Per site a line has the aliases of `configs.lines.ALIASES`: `champion` (what the site
serves), `challenger` (on its way), `previous` (where a rollback returns). Each change of an alias
is a row of `model_alias_moves` with who made it and why, so `adcp model history` can say how a
site came to serve what it serves. Three tables of the state DB, over its connection and lock.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from configs.errors import InputError
from configs.lines import ALIASES
from configs.models import check_site_name
from coordinator.state.db import State, now
from data.manifests import ArtifactRef

__all__ = ["REPORT_KINDS", "ModelLines"]

REPORT_KINDS = ("gate", "shadow", "watch")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS model_aliases (
    line TEXT NOT NULL,
    site TEXT NOT NULL,
    alias TEXT NOT NULL,             -- champion | challenger | previous
    version TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (line, site, alias)
)""",
    """CREATE TABLE IF NOT EXISTS model_alias_moves (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    line TEXT NOT NULL,
    site TEXT NOT NULL,
    alias TEXT NOT NULL,
    from_version TEXT,               -- null: the alias was not set
    to_version TEXT,                 -- null: the alias was removed
    by TEXT NOT NULL,                -- who moved it (a user, or the platform's own loop)
    why TEXT NOT NULL,
    at TEXT NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS model_alias_moves_line ON model_alias_moves (line, site, id)",
    """CREATE TABLE IF NOT EXISTS model_reports (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    line TEXT NOT NULL,
    version TEXT NOT NULL,
    kind TEXT NOT NULL,              -- gate | shadow | watch
    report TEXT NOT NULL,            -- JSON
    at TEXT NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS model_reports_line ON model_reports (line, version, id)",
)


def _line(line: str) -> str:
    ArtifactRef("model", line)  # InputError for a name no model artifact can have
    return line


def _version(line: str, version: str) -> str:
    ArtifactRef("model", line, version)
    return version


def _alias(alias: str) -> str:
    if alias not in ALIASES:
        raise InputError(f'Got "{alias}" for an alias.', allowed=", ".join(ALIASES))
    return alias


def _site(site: str) -> str:
    try:
        return check_site_name(site)
    except (ValueError, TypeError) as e:
        raise InputError(f'Got "{site}" for a site name.', allowed="site names (lowercase DNS labels)") from e


def _text(value: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"A move of an alias needs {what}.", allowed="non-empty text")
    return value.strip()[:500]


class ModelLines:
    """The model-line tables of the coordinator DB behind `state` (its one connection and lock)."""

    def __init__(self, state: State) -> None:
        self._state = state
        for statement in _SCHEMA:
            state._exec(statement)

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        """One write transaction under the State's lock: the alias rows and their moves change together."""
        with self._state._lock:
            db = self._state._db
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    @staticmethod
    def _site_aliases(db: Any, line: str, site: str) -> dict[str, str]:
        rows = db.execute("SELECT alias, version FROM model_aliases WHERE line = ? AND site = ?",
                          (line, site)).fetchall()
        return {r["alias"]: r["version"] for r in rows}

    @staticmethod
    def _move(db: Any, line: str, site: str, alias: str, old: str | None, new: str | None,
              by: str, why: str, stamp: str) -> None:
        if old == new:
            return
        if new is None:
            db.execute("DELETE FROM model_aliases WHERE line = ? AND site = ? AND alias = ?", (line, site, alias))
        else:
            db.execute("INSERT INTO model_aliases (line, site, alias, version, updated_at) VALUES (?, ?, ?, ?, ?) "
                       "ON CONFLICT(line, site, alias) DO UPDATE SET version = excluded.version, "
                       "updated_at = excluded.updated_at", (line, site, alias, new, stamp))
        db.execute("INSERT INTO model_alias_moves (line, site, alias, from_version, to_version, by, why, at) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (line, site, alias, old, new, by, why, stamp))

    def promote(self, line: str, site: str, version: str, *, by: str, why: str) -> dict[str, str]:
        """`version` becomes the champion of `line` at `site`: previous <- the old champion,
        champion <- version; the challenger is cleared when it is `version`. Promoting the champion
        again changes nothing (previous keeps where a rollback returns). The site's aliases after it."""
        line, site, version = _line(line), _site(site), _version(line, version)
        by, why = _text(by, "who"), _text(why, "why")
        stamp = now()
        with self._tx() as db:
            current = self._site_aliases(db, line, site)
            champion = current.get("champion")
            if champion != version:
                if champion is not None:
                    self._move(db, line, site, "previous", current.get("previous"), champion, by, why, stamp)
                self._move(db, line, site, "champion", champion, version, by, why, stamp)
            if current.get("challenger") == version:
                self._move(db, line, site, "challenger", version, None, by, why, stamp)
            return self._site_aliases(db, line, site)

    def set_alias(self, line: str, site: str, alias: str, version: str | None, *, by: str,
                  why: str) -> dict[str, str]:
        """Set (or with `version` None remove) one alias of `line` at `site`; the site's aliases after it."""
        line, site, alias = _line(line), _site(site), _alias(alias)
        if version is not None:
            _version(line, version)
        by, why = _text(by, "who"), _text(why, "why")
        with self._tx() as db:
            current = self._site_aliases(db, line, site)
            self._move(db, line, site, alias, current.get(alias), version, by, why, now())
            return self._site_aliases(db, line, site)

    def aliases(self, line: str, site: str | None = None) -> dict[str, dict[str, str]]:
        """`{site: {alias: version}}` of `line` (only `site` when given; sites without aliases left out)."""
        _line(line)
        if site is None:
            rows = self._state._exec("SELECT site, alias, version FROM model_aliases WHERE line = ? "
                                     "ORDER BY site, alias", (line,))
        else:
            rows = self._state._exec("SELECT site, alias, version FROM model_aliases WHERE line = ? AND site = ? "
                                     "ORDER BY alias", (line, _site(site)))
        out: dict[str, dict[str, str]] = {}
        for r in rows:
            out.setdefault(r["site"], {})[r["alias"]] = r["version"]
        return out

    def moves(self, line: str, site: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The moves of `line`'s aliases (at `site` when given), newest first:
        `{line, site, alias, from_version, to_version, by, why, at}`."""
        _line(line)
        cols = "line, site, alias, from_version, to_version, by, why, at"
        if site is None:
            rows = self._state._exec(f"SELECT {cols} FROM model_alias_moves WHERE line = ? ORDER BY id DESC LIMIT ?",
                                     (line, int(limit)))
        else:
            rows = self._state._exec(f"SELECT {cols} FROM model_alias_moves WHERE line = ? AND site = ? "
                                     "ORDER BY id DESC LIMIT ?", (line, _site(site), int(limit)))
        return [dict(r) for r in rows]

    def put_report(self, line: str, version: str, kind: str, report: dict[str, Any]) -> None:
        """Store a `kind` report (gate | shadow | watch) of `line@version` (a newer one of a kind wins)."""
        _line(line), _version(line, version)
        if kind not in REPORT_KINDS:
            raise InputError(f'Got "{kind}" for a report kind.', allowed=", ".join(REPORT_KINDS))
        if not isinstance(report, dict):
            raise InputError(f"A {kind} report must be a JSON object, got {type(report).__name__}.")
        self._state._exec("INSERT INTO model_reports (line, version, kind, report, at) VALUES (?, ?, ?, ?, ?)",
                          (line, version, kind, json.dumps(report), now()))

    def reports(self, line: str, version: str | None = None) -> list[dict[str, Any]]:
        """`{line, version, kind, report, at}` of `line` (of `version` when given), newest first."""
        _line(line)
        if version is None:
            rows = self._state._exec("SELECT line, version, kind, report, at FROM model_reports WHERE line = ? "
                                     "ORDER BY id DESC", (line,))
        else:
            rows = self._state._exec("SELECT line, version, kind, report, at FROM model_reports "
                                     "WHERE line = ? AND version = ? ORDER BY id DESC", (line, _version(line, version)))
        return [{**dict(r), "report": json.loads(r["report"])} for r in rows]

    def lines(self) -> list[str]:
        """Every line with an alias, a move or a report, sorted."""
        rows = self._state._exec("SELECT line FROM model_aliases UNION SELECT line FROM model_alias_moves "
                                 "UNION SELECT line FROM model_reports ORDER BY line")
        return [r["line"] for r in rows]
