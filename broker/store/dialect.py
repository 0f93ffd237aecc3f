"""What differs between SQLite and PostgreSQL, in one object per database.

SQLite has one writer per file: writes take `BEGIN IMMEDIATE` and queue on a lock in the
process. PostgreSQL locks rows: the topic's counter row serializes its appends, an advisory
lock serializes schema creation and pruning, COPY carries large appends, and LISTEN/NOTIFY
carries wake-ups between processes. Everything else the store does is the same on both.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import Connection, Engine, TextClause, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from ..dburl import host_count, primary_first
from ..models import metadata
from ..wakeups import Wakeups
from . import queries as q
from . import reads
from .driver import DriverCursor, driver_cursor, translate_errors
from .records import Batch, Row
from .watchdog import WATCHDOG

if TYPE_CHECKING:
    from ..pgwakeups import PgWakeupBridge
    from .database import Database

SCHEMA_LOCK_KEY = 0x4C51_0001  # pg_advisory_lock key for schema creation
PRUNE_LOCK_KEY = 0x4C51_0002  # one broker at a time prunes
DB_TIMEOUT_SECONDS = 5.0  # default LQ_DB_TIMEOUT: below the SDK's 10 s read timeout
CONNECT_TIMEOUT_SECONDS = 2  # per host (libpq's least): a dead first host costs 2 s
COPY_THRESHOLD = 4  # rows from which PostgreSQL appends use COPY instead of INSERT
_SET_TIMEOUTS = ("SELECT set_config('lock_timeout', %s, false), "
                 "set_config('statement_timeout', %s, false)")  # driver-level, on connect
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


class Dialect:
    """The database-specific parts of the store; see SqliteDialect and PostgresDialect."""

    name: ClassVar[str]
    default_workers: ClassVar[int]  # gunicorn workers `lq broker` starts unless told
    lock_topic_counter: ClassVar[TextClause]  # read a topic's next offset, locked for append
    lock_consumer: ClassVar[TextClause]  # read a dispatch cursor, locked to hand out a lease
    lock_commit: ClassVar[TextClause]  # a commit's look at a registration, locked (queries.py)
    timeout: float | None = None  # the longest a block of database work may take

    def connect_args(self, url: str) -> dict[str, Any]:
        """The driver's connect() arguments for this URL."""
        return {}

    def bounded(self, dbapi_connection: Any) -> AbstractContextManager[None]:
        """A block of work on the connection, cut off after `timeout` (see watchdog.py)."""
        return nullcontext()

    def server(self, conn: Connection) -> str | None:
        """Where this connection writes (host:port), when that can change (failover)."""
        return None

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

    def page(self, cursor: DriverCursor, topic_id: int, start: int, limit: int,
             max_bytes: int | None = None) -> list[Row]:
        """Up to `limit` messages from `start`; with `max_bytes`, only as many as carry at most
        that much text (UTF-8), and always the first, so a reply stays bounded."""
        raise NotImplementedError

    def take(self, db: Database, topic_id: int, consumer_id: int, limit: int,
             max_bytes: int | None = None) -> Batch:
        """Read up to `limit` messages (and `max_bytes` of text, see `page`) at the
        consumer's position and move it past them."""
        raise NotImplementedError

    def checkpoint(self, engine: Engine) -> bool:
        """A clean stop: close the engine's connections and leave the database whole without
        any side file. False when that could not be finished."""
        engine.dispose()
        return True


class SqliteDialect(Dialect):
    name = "sqlite"
    default_workers = 1  # one writer per file
    lock_topic_counter = q.LOCK_TOPIC_COUNTER_SQLITE
    lock_consumer = q.LOCK_CONSUMER_SQLITE
    lock_commit = q.LOCK_CONSUMER_COMMIT_SQLITE

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

    def checkpoint(self, engine: Engine) -> bool:
        """Fold the write-ahead log into the database file and empty it, so a copy of the
        `.db` file alone holds every message. Complete only when no other connection reads."""
        engine.dispose()
        with translate_errors(self):
            raw = engine.raw_connection()  # autocommit (see configure): no BEGIN around it
            try:
                busy = raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            finally:
                raw.close()
        engine.dispose()
        return not busy

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

    def take(self, db: Database, topic_id: int, consumer_id: int, limit: int,
             max_bytes: int | None = None) -> Batch:
        with db.transaction() as conn:
            position, first, next_offset = reads.lag(conn, consumer_id)
        if max(position, first) >= next_offset:
            return Batch([])  # nothing to read: no write lock taken
        with db.transaction(write=True) as conn, driver_cursor(conn) as cursor:
            position = reads.registration(cursor, consumer_id)
            found = self.page(cursor, topic_id, position, limit, max_bytes)
            if found:
                cursor.execute(q.SET_CONSUMER_POSITION,
                               {"position": found[-1][0] + 1, "id": consumer_id})
        return Batch(found, found[0][0] - position if found else 0)

    def page(self, cursor: DriverCursor, topic_id: int, start: int, limit: int,
             max_bytes: int | None = None) -> list[Row]:
        found = cursor.execute(q.SELECT_MESSAGES,
                               {"topic": topic_id, "start": start, "limit": limit})
        if max_bytes is None:
            return found.fetchall()
        return reads.within(found, max_bytes)  # a row at a time: those past it are never read


class PostgresDialect(Dialect):
    name = "postgresql"
    default_workers = 2
    lock_topic_counter = q.LOCK_TOPIC_COUNTER_PG
    lock_consumer = q.LOCK_CONSUMER_PG
    lock_commit = q.LOCK_CONSUMER_COMMIT_PG

    def __init__(self) -> None:
        self.timeout = db_timeout()

    def connect_args(self, url: str) -> dict[str, Any]:
        """Bounded waits when a database host vanishes: each host's connect gives up after
        2 s; a dead established connection is noticed by keepalives and tcp_user_timeout
        within about `timeout`; with several hosts, only a primary is taken."""
        seconds = max(1, round(self.timeout))
        args: dict[str, Any] = {
            "connect_timeout": CONNECT_TIMEOUT_SECONDS, "keepalives": 1,
            "keepalives_idle": seconds, "keepalives_interval": 1, "keepalives_count": 3,
            "tcp_user_timeout": int(self.timeout * 1000)}
        if host_count(url) > 1 and "target_session_attrs" not in make_url(url).query:
            args["target_session_attrs"] = "read-write"
        return args

    def configure(self, engine: Engine) -> None:
        """New connections try first the host where the last one found a primary.
        Server-side bounds too: a lock wait gives up after `timeout`. The statement
        timeout is twice that, so it only frees the server of work whose client is gone:
        it cancels a commit waiting for the synchronous standby into a *success* (committed
        locally, maybe not replicated), so the broker's own deadline must come first."""
        millis = int(self.timeout * 1000)
        primary: list[tuple[str, int]] = []  # where the last new connection found a primary

        @event.listens_for(engine, "do_connect")
        def _primary_first(dialect, _record, cargs, cparams) -> Any:
            if not primary:
                return None  # SQLAlchemy connects as usual
            return dialect.loaded_dbapi.connect(*cargs, **primary_first(cparams, *primary[0]))

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection, _record) -> None:
            primary[:] = [(dbapi_connection.info.host, dbapi_connection.info.port)]
            autocommit = dbapi_connection.autocommit
            dbapi_connection.autocommit = True
            with dbapi_connection.cursor() as cursor:
                cursor.execute(_SET_TIMEOUTS, (f"{millis}ms", f"{2 * millis}ms"))
            dbapi_connection.autocommit = autocommit

    def bounded(self, dbapi_connection: Any) -> AbstractContextManager[None]:
        return WATCHDOG.bounded(dbapi_connection, self.timeout)

    def server(self, conn: Connection) -> str | None:
        info = conn.connection.dbapi_connection.info
        return f"{info.host}:{info.port}"

    def lock_schema(self, conn: Connection) -> None:
        conn.execute(q.LOCK_SCHEMA_PG, {"key": SCHEMA_LOCK_KEY})

    def max_connections(self, engine: Engine) -> int:
        with translate_errors(self), engine.connect() as conn, self.bounded(_dbapi(conn)):
            return int(conn.execute(q.SHOW_MAX_CONNECTIONS_PG).scalar_one())

    def wakeup_bridge(self, engine: Engine, wakeups: Wakeups) -> PgWakeupBridge:
        from ..pgwakeups import PgWakeupBridge

        return PgWakeupBridge(engine, wakeups, self.bounded)

    @contextmanager
    def prune_turn(self, engine: Engine) -> Iterator[bool]:
        with translate_errors(self), engine.connect() as lock_conn:
            with self.bounded(_dbapi(lock_conn)):
                mine = lock_conn.execute(q.TRY_PRUNE_LOCK, {"key": PRUNE_LOCK_KEY}).scalar()
            if not mine:
                yield False
                return
            try:
                yield True
            finally:
                with self.bounded(_dbapi(lock_conn)):
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

    def take(self, db: Database, topic_id: int, consumer_id: int, limit: int,
             max_bytes: int | None = None) -> Batch:
        params = {"id": consumer_id, "topic": topic_id, "limit": limit,
                  "max_bytes": reads.UNBOUNDED if max_bytes is None else max_bytes}
        with db.transaction(write=True) as conn, driver_cursor(conn) as cursor:
            rows = cursor.execute(q.TAKE_MESSAGES_PG, params).fetchall()
        if not rows:
            return Batch([])
        return Batch([row[:3] for row in rows], rows[0][0] - rows[0][3])

    def page(self, cursor: DriverCursor, topic_id: int, start: int, limit: int,
             max_bytes: int | None = None) -> list[Row]:
        params = {"topic": topic_id, "start": start, "limit": limit}
        if max_bytes is None:
            return cursor.execute(q.SELECT_MESSAGES, params).fetchall()
        # The driver fetches every row of a result: the bound is applied in SQL.
        return cursor.execute(q.SELECT_MESSAGES_WITHIN_PG,
                              {**params, "max_bytes": max_bytes}).fetchall()


DIALECTS: dict[str, type[Dialect]] = {"sqlite": SqliteDialect, "postgresql": PostgresDialect}


def dialect_for(engine: Engine) -> Dialect:
    try:
        return DIALECTS[engine.dialect.name]()
    except KeyError:
        raise ValueError(f"unsupported database: {engine.dialect.name}") from None


def connect_args(url: str) -> dict[str, Any]:
    """The driver's connect() arguments for a database URL (before any engine exists)."""
    return DIALECTS.get(make_url(url).get_backend_name(), Dialect)().connect_args(url)


def db_timeout() -> float:
    """LQ_DB_TIMEOUT: seconds a block of database work (a transaction, its commit included)
    may take before the broker gives up on it and answers 503. Keep it below the clients'
    read timeout (the SDK's is 10 s)."""
    text = os.environ.get("LQ_DB_TIMEOUT", "").strip()
    try:
        timeout = float(text) if text else DB_TIMEOUT_SECONDS
    except ValueError:
        timeout = 0.0
    if not 0 < timeout < float("inf"):
        raise ValueError(f"LQ_DB_TIMEOUT must be a positive number of seconds, not {text!r}")
    return timeout


def _dbapi(conn: Connection) -> Any:
    return conn.connection.dbapi_connection


def _unique_columns() -> dict[str, str]:
    """"table.column, ..." -> constraint name, for every named unique constraint and index."""
    names: dict[str, str] = {}
    for table in metadata.tables.values():
        keys = [(c.name, c.columns) for c in table.constraints if c.name]
        keys += [(ix.name, ix.columns) for ix in table.indexes if ix.unique and ix.name]
        for name, columns in keys:
            names[", ".join(f"{table.name}.{col.name}" for col in columns)] = name
    return names
