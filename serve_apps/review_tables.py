"""The site review database's schema (SQLAlchemy Core) and engine, one for SQLite and PostgreSQL.

`serve_apps.review_db.ReviewDB` is the only code that reads and writes these tables. Times are
stored as naive UTC and come back as aware UTC datetimes (`UTCDateTime`), the same on both
databases. `SCHEMA_VERSION` is kept in `station_state`; a database written by newer code is refused.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.pool import StaticPool
from sqlalchemy.types import TypeDecorator

from configs.errors import ConfigError

__all__ = [
    "SCHEMA_VERSION",
    "UTCDateTime",
    "decision_counts",
    "make_engine",
    "metadata",
    "normalize_url",
    "review_items",
    "shadow_results",
    "site_annotations",
    "station_state",
    "upgrade",
    "verdict_events",
]

#: Bumped with every change to the tables below (with an upgrade step in `upgrade`).
#: 2: review_items.priority (claims take higher first), the shadow_results table.
SCHEMA_VERSION = 2


class UTCDateTime(TypeDecorator):
    """An aware UTC datetime in Python, naive UTC in the database (SQLite keeps no zone)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: review DB times must be timezone-aware")
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=timezone.utc)


metadata = MetaData()

#: One row per queued image decision; `state` is queued | claimed | done. A claimed row whose
#: `lease_until` has passed counts as queued. `first_why` keeps the reason it was first queued
#: (low_confidence | audit) when escalation changes `why`.
review_items = Table(
    "review_items",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("image_sha256", String(64), nullable=False),
    Column("image_uri", Text, nullable=False),
    Column("site", String(253), nullable=False),
    Column("product", String(255), nullable=False, default=""),
    Column("aoi_machine", String(255), nullable=False, default=""),
    Column("panel_id", String(255), nullable=False, default=""),
    Column("model_version", String(255), nullable=False),
    Column("dataset", String(255), nullable=False, default=""),
    Column("predicted", String(255), nullable=False),
    Column("confidence", Float, nullable=False),
    Column("top3", JSON, nullable=False),
    Column("classes", JSON, nullable=False),
    Column("decision", String(32), nullable=False),
    Column("why", String(32), nullable=False),
    Column("first_why", String(32), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("state", String(16), nullable=False, default="queued"),
    Column("second_opinion", Boolean, nullable=False, default=False),
    Column("lease_id", String(32), nullable=True),
    Column("lease_reviewer", String(255), nullable=True),
    Column("lease_until", UTCDateTime, nullable=True),
    # Claims take higher priority first (shadow disagreements: 1), then the oldest.
    Column("priority", Integer, nullable=False, default=0, server_default=text("0")),
    Index("ix_review_items_state_created", "state", "created_at"),
    Index("ix_review_items_lease", "lease_reviewer", "state"),
    Index("ix_review_items_image", "image_sha256"),
    Index("ix_review_items_product_model", "product", "model_version"),
)

#: Append-only: verdicts and undos, in `seq` order (what the center pulls with events_after).
verdict_events = Table(
    "verdict_events",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),  # verdict | undo
    Column("event_id", String(32), nullable=False, unique=True),
    Column("verdict_id", String(32), nullable=False),  # the verdict itself, or the one undone
    Column("item_id", String(32), nullable=False),
    Column("image_sha256", String(64), nullable=False),
    Column("image_uri", Text, nullable=False),
    Column("label", String(255), nullable=False),
    Column("reviewer", String(255), nullable=False),
    Column("role", String(32), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("site", String(253), nullable=False),
    Column("product", String(255), nullable=False),
    Column("model_version", String(255), nullable=False),
    Column("dataset", String(255), nullable=False),
    Column("predicted", String(255), nullable=False),
    Column("decision", String(32), nullable=False),
    Column("why", String(32), nullable=False),
    Index("ix_verdict_events_item", "item_id", "kind"),
    Index("ix_verdict_events_reviewer", "reviewer", "kind", "seq"),
    Index("ix_verdict_events_verdict", "verdict_id"),
)

#: One row per image a shadow (challenger) model classified beside the champion.
shadow_results = Table(
    "shadow_results",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("image_sha256", String(64), nullable=False),
    Column("site", String(253), nullable=False),
    Column("product", String(255), nullable=False, default=""),
    Column("champion_version", String(255), nullable=False),
    Column("champion_class", String(255), nullable=False),
    Column("champion_decision", String(32), nullable=False),
    Column("challenger_version", String(255), nullable=False),
    Column("challenger_class", String(255), nullable=False),
    Column("challenger_decision", String(32), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Index("ix_shadow_results_challenger", "challenger_version", "at"),
    Index("ix_shadow_results_image", "image_sha256"),
)

#: Every decision the ADC app made (recorded or not), added up in batches.
decision_counts = Table(
    "decision_counts",
    metadata,
    Column("site", String(253), primary_key=True),
    Column("product", String(255), primary_key=True),
    Column("model_version", String(255), primary_key=True),
    Column("decision", String(32), primary_key=True),
    Column("n", Integer, nullable=False, default=0),
)

#: Annotation artifacts pushed to the site, one row per (image, annotation line).
site_annotations = Table(
    "site_annotations",
    metadata,
    Column("image_id", String(255), primary_key=True),
    Column("source", String(255), primary_key=True),  # artifact name without version
    Column("artifact", String(255), nullable=False),  # NAME@VERSION last loaded
    Column("label", String(255), nullable=True),
    Column("product", String(255), nullable=False, default=""),
    Column("annotator", String(255), nullable=False, default=""),
    Column("annotated_at", UTCDateTime, nullable=True),
    Column("loaded_at", UTCDateTime, nullable=False),
    Index("ix_site_annotations_label", "label"),
    Index("ix_site_annotations_product", "product"),
)

#: Small key/value state of the station (disabled-user list cache, schema version).
station_state = Table(
    "station_state",
    metadata,
    Column("key", String(255), primary_key=True),
    Column("value", Text, nullable=False),
)


#: Seconds a SQLite writer waits for another's lock before failing (the station and the ADC
#: app's recorder write the same file; batches are short, so a few seconds is plenty).
SQLITE_BUSY_TIMEOUT_S = 10.0


def normalize_url(url: str) -> str:
    """The SQLAlchemy URL with the psycopg driver named for plain `postgresql://` URLs."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def make_engine(url: str) -> Engine:
    """An engine for a review DB URL: SQLite (WAL, busy timeout, BEGIN IMMEDIATE) or PostgreSQL (psycopg)."""
    try:
        parsed = make_url(normalize_url(url))
    except ArgumentError as e:
        raise ConfigError(f"review DB URL {url!r} is not a SQLAlchemy URL",
                          allowed="sqlite:///PATH or postgresql://USER@HOST/DB") from e
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        return create_engine(parsed, pool_pre_ping=True)
    if backend != "sqlite":
        raise ConfigError(f"review DB URL {url!r} names database {backend!r}",
                          allowed="sqlite:///PATH or postgresql://USER@HOST/DB")
    database = parsed.database or ""
    args: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S}}
    if database in ("", ":memory:"):
        args["poolclass"] = StaticPool  # one shared connection: for single-threaded tests only
    elif not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, **args)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # let SQLAlchemy's "begin" hook emit BEGIN itself
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")  # take the write lock up front: claims serialise

    return engine


def upgrade(engine: Engine, found: int) -> None:
    """Bring a database at schema version `found` up to SCHEMA_VERSION (new tables come from
    `metadata.create_all`; this adds what create_all does not: columns of existing tables).
    Safe when another process upgrades at the same time: a column it added first is kept."""
    if found < 2 and "priority" not in {c["name"] for c in inspect(engine).get_columns("review_items")}:
        try:
            with engine.begin() as c:
                c.exec_driver_sql("ALTER TABLE review_items ADD COLUMN priority INTEGER NOT NULL DEFAULT 0")
        except DBAPIError:
            if "priority" not in {c["name"] for c in inspect(engine).get_columns("review_items")}:
                raise
