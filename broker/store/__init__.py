"""The only package that knows SQL: topics, messages, producers and consumer positions.

One module per noun, as rq and procrastinate do:

- ``queries``: every statement, named, grouped by noun;
- ``dialect``: what differs between SQLite and PostgreSQL, one object per database;
- ``driver``: driver errors translated in one place (constraint name -> domain error);
- ``database``: the engine, its dialect, transactions (a caller's connection may be joined);
- ``caches``: topic ids and registrations, and the retry when a cached topic id is stale;
- ``topics``, ``producers`` (appends, idempotence), ``consumers`` (positions, long-polls),
  ``leases`` (consumer groups), ``pruning`` (retention), ``history`` (reads of the past
  without a registration: the web page's tail and rates): the nouns, each given what it needs;
- ``records``: the plain records they hand back.

`Store` puts them together for one app: ``get_store(app).producers.append(...)``.
"""

from __future__ import annotations

from flask import Flask
from sqlalchemy import Engine

from ..models import db
from ..wakeups import Wakeups
from .caches import Caches
from .consumers import Consumers
from .database import Database, configure_engine, create_schema, default_workers, max_connections
from .dialect import connect_args
from .history import Appends, History, Tail
from .leases import Leases
from .producers import Producers
from .pruning import Pruner
from .records import (
    AppendRequest,
    AppendResult,
    Batch,
    ConsumerInfo,
    LeasedBatch,
    LeaseInfo,
    Message,
    Row,
    TopicInfo,
    TopicStats,
    iso_time,
)
from .tokens import TokenRecord, Tokens
from .topics import Topics

__all__ = ["AppendRequest", "AppendResult", "Appends", "Batch", "ConsumerInfo", "LeaseInfo",
           "LeasedBatch", "Message", "Row", "Store", "Tail", "TokenRecord", "TopicInfo",
           "TopicStats", "configure_engine",
           "connect_args", "create_schema", "default_workers", "get_store", "init_app",
           "iso_time", "max_connections"]

EXTENSION = "logqueue.store"
RECHECK_SECONDS = 1.0  # default for LQ_RECHECK_INTERVAL
CONSUMER_TTL_MS = 7 * 24 * 3600 * 1000  # default: unnamed registrations unused a week expire


class Store:
    """All reads and writes of one database, plus the in-process structures that speed them up
    (caches, group commit, wake-ups)."""

    def __init__(self, engine: Engine, *, default_retention_ms: int | None = None,
                 consumer_ttl_ms: int | None = None,
                 recheck_interval: float = RECHECK_SECONDS) -> None:
        """`consumer_ttl_ms`: None is the default (a week), 0 keeps unnamed registrations."""
        if consumer_ttl_ms is None:
            consumer_ttl_ms = CONSUMER_TTL_MS
        self.db = Database(engine)
        self.dialect = self.db.dialect.name
        self.wakeups = Wakeups()
        bridge = self.db.dialect.wakeup_bridge(engine, self.wakeups)
        self.caches = Caches(self.db)
        self.topics = Topics(self.db, self.caches, self.wakeups)

        def appended(topic_id: int) -> None:
            self.wakeups.notify(topic_id)
            if bridge is not None:
                bridge.appended(topic_id)

        self.producers = Producers(self.db, self.caches, self.topics, appended)
        self.consumers = Consumers(self.db, self.caches, self.wakeups, bridge,
                                   recheck_interval, consumer_ttl_ms)
        self.leases = Leases(self.db, self.caches, self.consumers, appended)
        self.pruner = Pruner(self.db, default_retention_ms, consumer_ttl_ms)
        self.tokens = Tokens(self.db)
        self.history = History(self.db, self.caches)

    def ping(self) -> str | None:
        return self.db.ping()


def init_app(app: Flask) -> None:
    """Bind Flask-SQLAlchemy and a Store to the app; connections open lazily, after any fork."""
    db.init_app(app)
    with app.app_context():
        engine = db.engine
    configure_engine(engine)
    app.extensions[EXTENSION] = Store(
        engine, default_retention_ms=app.config.get("LQ_RETENTION_MS"),
        consumer_ttl_ms=app.config.get("LQ_CONSUMER_TTL_MS"),
        recheck_interval=float(app.config.get("LQ_RECHECK_INTERVAL") or RECHECK_SECONDS))


def get_store(app: Flask) -> Store:
    return app.extensions[EXTENSION]
