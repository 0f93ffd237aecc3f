"""One database: its engine, its dialect, and the transactions every store module runs in."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, TextClause
from sqlalchemy import exc as sa_exc

from ..errors import Unavailable
from ..models import SCHEMA_VERSION, metadata, schema_version
from .dialect import Dialect, dialect_for
from .driver import IdTaken, translate_errors
from .queries import PING
from .records import new_id, now_us

ID_ATTEMPTS = 5

WRITE_LOCK_TIMEOUT = 30.0  # SQLite: the longest a write waits for this process's write slot


class Database:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect: Dialect = dialect_for(engine)
        self._write_lock: threading.Lock | None = self.dialect.write_lock()
        self.timeout = self.dialect.timeout  # the longest a transaction may take (None: no bound)

    @contextmanager
    def transaction(self, write: bool = False,
                    conn: Connection | None = None) -> Iterator[Connection]:
        """A transaction with driver errors translated, cut off (503, outcome unknown) when
        it takes longer than `timeout`, its commit included; `conn`: the caller's, joined as
        is (so several store calls make one transaction)."""
        if conn is not None:
            yield conn
            return
        with self.translated(), self._write_slot(write), self.engine.connect() as new, \
                self.dialect.bounded(new.connection.dbapi_connection):
            new.execution_options(lq_write=write)
            with new.begin():
                yield new

    @contextmanager
    def driver_connection(self, write: bool = False) -> Iterator[Any]:
        """A pooled connection's driver (DB-API) connection, for work that sends its own
        statements, transaction control included (appends.py): the same write slot, deadline
        and error translation as `transaction`. A driver error goes on as SQLAlchemy would
        raise it, and a connection it broke leaves the pool."""
        with self.translated(), self._write_slot(write):
            with _as_sqlalchemy_errors(self.engine):  # the pool connects: no server?
                proxied = self.engine.raw_connection()
            try:
                with self.dialect.bounded(proxied.dbapi_connection), \
                        _as_sqlalchemy_errors(self.engine, proxied):
                    yield proxied.dbapi_connection
            finally:
                proxied.close()

    @contextmanager
    def _write_slot(self, write: bool) -> Iterator[None]:
        """The dialect's write slot (SQLite: one writer at a time), waited for at most
        WRITE_LOCK_TIMEOUT; nothing to hold for a read or where the dialect has none."""
        if self._write_lock is None or not write:
            yield
            return
        if not self._write_lock.acquire(timeout=WRITE_LOCK_TIMEOUT):
            raise Unavailable("the database is busy: no write slot within "
                              f"{WRITE_LOCK_TIMEOUT:.0f} s")
        try:
            yield
        finally:
            self._write_lock.release()

    def translated(self, **context: Any) -> AbstractContextManager[None]:
        """Driver errors translated (driver.py) with `context` for the messages, for a block
        inside or outside `transaction`."""
        return translate_errors(self.dialect, **context)

    def insert_with_new_id(self, conn: Connection, statement: TextClause,
                           params: dict[str, Any]) -> int:
        """Insert a row under a new random id; a collision (about 1 in 2**53) retries with
        another. Other conflicts (driver.py) go to the caller."""
        for _ in range(ID_ATTEMPTS):
            new = new_id()
            savepoint = conn.begin_nested()
            try:
                with self.translated(id=new, **params):
                    conn.execute(statement, {**params, "id": new, "now": now_us()})
            except IdTaken:
                savepoint.rollback()
                continue
            savepoint.commit()
            return new
        raise RuntimeError("could not find a free random id")

    def ping(self) -> str | None:
        """Check the database answers; where it writes (host:port) when that can change."""
        with self.transaction() as conn:
            conn.execute(PING)
            return self.dialect.server(conn)


@contextmanager
def _as_sqlalchemy_errors(engine: Engine, proxied: Any = None) -> Iterator[None]:
    """Driver errors raised as SQLAlchemy raises them (so driver.py translates them as any
    other); `proxied`, a pooled connection the error shows broken, is invalidated, never
    pooled again. (The pool's own connect raises the driver's error as it is.)"""
    dbapi_error = engine.dialect.loaded_dbapi.Error
    try:
        yield
    except dbapi_error as exc:
        broken = proxied is None or engine.dialect.is_disconnect(
            exc, proxied.dbapi_connection, None)
        if broken and proxied is not None:
            proxied.invalidate(exc)
        raise sa_exc.DBAPIError.instance(None, None, exc, dbapi_error,
                                         connection_invalidated=broken,
                                         dialect=engine.dialect) from exc


def configure_engine(engine: Engine) -> None:
    dialect_for(engine).configure(engine)


def create_schema(engine: Engine) -> None:
    """Create the missing tables once (one broker at a time) and record the version."""
    dialect = dialect_for(engine)
    with translate_errors(dialect), engine.begin() as conn:
        dialect.lock_schema(conn)
        metadata.create_all(conn)
        recorded = conn.execute(schema_version.select()).scalar()
        if recorded is None:
            conn.execute(schema_version.insert().values(version=SCHEMA_VERSION))
        elif recorded < SCHEMA_VERSION:  # every change so far is a new table, made above
            conn.execute(schema_version.update().values(version=SCHEMA_VERSION))


def max_connections(engine: Engine) -> int | None:
    """The database's connection limit (None: none to respect), to warn before workers
    exhaust it."""
    return dialect_for(engine).max_connections(engine)


def default_workers(engine: Engine) -> int:
    return dialect_for(engine).default_workers
