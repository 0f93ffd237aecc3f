"""What differs between SQLite and PostgreSQL, in one object per database.

SQLite has one writer per file: writes take `BEGIN IMMEDIATE` and queue on a lock in the
process. PostgreSQL locks rows: the topic's counter row serializes its appends, an advisory
lock serializes schema creation and pruning, COPY carries large appends, and LISTEN/NOTIFY
carries wake-ups between processes. Everything else the store does is the same on both.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import Connection, Engine, TextClause, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from ..models import metadata
from ..wakeups import Wakeups
from . import queries as q
from . import reads
from .driver import translate_errors
from .records import Batch, Message

if TYPE_CHECKING:
    from ..pgwakeups import PgWakeupBridge
    from .database import Database

SCHEMA_LOCK_KEY = 0x4C51_0001  # pg_advisory_lock key for schema creation
PRUNE_LOCK_KEY = 0x4C51_0002  # one broker at a time prunes
COPY_THRESHOLD = 4  # rows from which PostgreSQL appends use COPY instead of INSERT
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


class Dialect:
    """The database-specific parts of the store; see SqliteDialect and PostgresDialect."""

    name: ClassVar[str]
    default_workers: ClassVar[int]  # gunicorn workers `lq broker` starts unless told
    lock_topic_counter: ClassVar[TextClause]  # read a topic's next offset, locked for append
    lock_consumer: ClassVar[TextClause]  # read a dispatch cursor, locked to hand out a lease
    connect_args: ClassVar[dict[str, Any]] = {}  # for the driver's connect()

    def configure(self, engine: Engine) -> None:
        """Set up a new engine's connections."""

    def lock_schema(self, conn: Connection) -> None:
        """Serialize schema creation between brokers starting together."""

    def max_connections(self, engine: Engine) -> int | None:
        """The database's connection limit, if it has one to respect."""
        return None

    def write_lock(self) -> threading.Lock | None:
        """A lock writers queue on in this process, or None when the database queues them."""
        return None

    def wakeup_bridge(self, engine: Engine, wakeups: Wakeups) -> PgWakeupBridge | None:
        """What carries wake-ups to other processes, if anything can."""
        return None

    @contextmanager
    def prune_turn(self, engine: Engine) -> Iterator[bool]:
        """Whether this process may prune now (one broker at a time)."""
        yield True

    def constraint_name(self, exc: sa_exc.IntegrityError) -> str | None:
        raise NotImplementedError

    def insert_messages(self, cursor: Any, topic_id: int, stamp: int,
                        rows: list[tuple[int, str]]) -> None:
        """Insert (offset, body) rows with the driver's cursor."""
        raise NotImplementedError

    def take(self, db: Database, topic_id: int, consumer_id: int, limit: int) -> Batch:
        """Read up to `limit` messages at the consumer's position and move it past them."""
        raise NotImplementedError


class SqliteDialect(Dialect):
    name = "sqlite"
    default_workers = 1  # one writer per file
    lock_topic_counter = q.LOCK_TOPIC_COUNTER_SQLITE
    lock_consumer = q.LOCK_CONSUMER_SQLITE

    def __init__(self) -> None:
        self._unique_columns = _unique_columns()

    def configure(self, engine: Engine) -> None:
        """WAL, a busy timeout, full sync, and `BEGIN IMMEDIATE` for writes."""

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection, _record) -> None:
            dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            write = conn.get_execution_options().get("lq_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    def write_lock(self) -> threading.Lock:
        # One writer per file: queue writers here rather than in SQLite's busy handler.
        return threading.Lock()

    def constraint_name(self, exc: sa_exc.IntegrityError) -> str | None:
        """SQLite names the columns ("UNIQUE constraint failed: t.a, t.b"), not the constraint."""
        _, found, columns = str(exc.orig).partition("constraint failed: ")
        return self._unique_columns.get(columns.strip()) if found else None

    def insert_messages(self, cursor: Any, topic_id: int, stamp: int,
                        rows: list[tuple[int, str]]) -> None:
        cursor.executemany(q.INSERT_MESSAGE_SQLITE,
                           [(topic_id, offset, body, stamp) for offset, body in rows])

    def take(self, db: Database, topic_id: int, consumer_id: int, limit: int) -> Batch:
        with db.transaction() as conn:
            position, first, next_offset = reads.lag(conn, consumer_id)
        if max(position, first) >= next_offset:
            return Batch([])  # nothing to read: no write lock taken
        with db.transaction(write=True) as conn:
            position = reads.position(conn, consumer_id)
            found = reads.messages(conn, topic_id, position, limit)
            if found:
                conn.execute(q.SET_CONSUMER_POSITION,
                             {"position": found[-1].offset + 1, "id": consumer_id})
        return Batch(found, found[0].offset - position if found else 0)


class PostgresDialect(Dialect):
    name = "postgresql"
    default_workers = 2
    lock_topic_counter = q.LOCK_TOPIC_COUNTER_PG
    lock_consumer = q.LOCK_CONSUMER_PG
    # Bounded waits when the database host vanishes: a connect gives up after 5 s, and
    # keepalives notice a dead established connection within about a minute.
    connect_args: ClassVar[dict[str, Any]] = {
        "connect_timeout": 5, "keepalives": 1, "keepalives_idle": 30,
        "keepalives_interval": 10, "keepalives_count": 3}

    def lock_schema(self, conn: Connection) -> None:
        conn.execute(q.LOCK_SCHEMA_PG, {"key": SCHEMA_LOCK_KEY})

    def max_connections(self, engine: Engine) -> int:
        with translate_errors(self), engine.connect() as conn:
            return int(conn.execute(q.SHOW_MAX_CONNECTIONS_PG).scalar_one())

    def wakeup_bridge(self, engine: Engine, wakeups: Wakeups) -> PgWakeupBridge:
        from ..pgwakeups import PgWakeupBridge

        return PgWakeupBridge(engine, wakeups)

    @contextmanager
    def prune_turn(self, engine: Engine) -> Iterator[bool]:
        with translate_errors(self), engine.connect() as lock_conn:
            if not lock_conn.execute(q.TRY_PRUNE_LOCK, {"key": PRUNE_LOCK_KEY}).scalar():
                yield False
                return
            try:
                yield True
            finally:
                lock_conn.execute(q.PRUNE_UNLOCK, {"key": PRUNE_LOCK_KEY})
                lock_conn.commit()

    def constraint_name(self, exc: sa_exc.IntegrityError) -> str | None:
        diag = getattr(exc.orig, "diag", None)
        return getattr(diag, "constraint_name", None)

    def insert_messages(self, cursor: Any, topic_id: int, stamp: int,
                        rows: list[tuple[int, str]]) -> None:
        if len(rows) < COPY_THRESHOLD:
            cursor.executemany(q.INSERT_MESSAGE_PG,
                               [(topic_id, offset, body, stamp) for offset, body in rows])
            return
        prefix, suffix = f"{topic_id}\t", f"\t{stamp}\n"
        buffer = io.StringIO()
        buffer.writelines(f"{prefix}{offset}\t{body.translate(_COPY_ESCAPES)}{suffix}"
                          for offset, body in rows)
        buffer.seek(0)
        cursor.copy_expert(q.COPY_MESSAGES, buffer)

    def take(self, db: Database, topic_id: int, consumer_id: int, limit: int) -> Batch:
        params = {"id": consumer_id, "topic": topic_id, "limit": limit}
        with db.transaction(write=True) as conn:
            rows = conn.execute(q.TAKE_MESSAGES_PG, params).all()
        if not rows:
            return Batch([])
        return Batch([Message(*row[:3]) for row in rows], rows[0][0] - rows[0][3])


DIALECTS: dict[str, type[Dialect]] = {"sqlite": SqliteDialect, "postgresql": PostgresDialect}


def dialect_for(engine: Engine) -> Dialect:
    try:
        return DIALECTS[engine.dialect.name]()
    except KeyError:
        raise ValueError(f"unsupported database: {engine.dialect.name}") from None


def connect_args(url: str) -> dict[str, Any]:
    """The driver's connect() arguments for a database URL (before any engine exists)."""
    return dict(DIALECTS.get(make_url(url).get_backend_name(), Dialect).connect_args)


def _unique_columns() -> dict[str, str]:
    """"table.column, ..." -> constraint name, for every named unique constraint and index."""
    names: dict[str, str] = {}
    for table in metadata.tables.values():
        keys = [(c.name, c.columns) for c in table.constraints if c.name]
        keys += [(ix.name, ix.columns) for ix in table.indexes if ix.unique and ix.name]
        for name, columns in keys:
            names[", ".join(f"{table.name}.{col.name}" for col in columns)] = name
    return names
