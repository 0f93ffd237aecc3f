"""Driver errors stop here, translated in one place (procrastinate's `wrap_exceptions`).

A unique constraint that refuses a row becomes the domain error its name stands for; a
database that does not answer becomes `Unavailable` (503: nothing was acknowledged). Any
other driver error is a bug and goes on as it is (a logged 500).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any, Protocol

from sqlalchemy import Connection, TextClause
from sqlalchemy import exc as sa_exc

from ..errors import TokenExists, TopicExists, Unavailable
from ..models import (
    CONSUMER_ID_KEY,
    CONSUMER_NAME_KEY,
    LEASE_ID_KEY,
    PRODUCER_ID_KEY,
    TOKEN_NAME_KEY,
    TOPIC_NAME_KEY,
)
from .prepared import execute as prepared_execute
from .prepared import prepared


class UniqueViolation(Exception):
    """A unique constraint refused a row. Store-internal: callers turn each kind into an
    answer, so one that escapes is a bug (a 500), as an untranslated driver error would be."""


class IdTaken(UniqueViolation):
    """A random registration id collided with an existing one (about 1 in 2**53): retry."""


class NameTaken(UniqueViolation):
    """A consumer name was registered concurrently on the same topic: that one won."""


#: Constraint name (models.py) -> the error it means, given what the caller said it was doing.
UNIQUE_ERRORS: dict[str, Callable[[Mapping[str, Any]], Exception]] = {
    TOPIC_NAME_KEY: lambda p: TopicExists(f"Topic '{p.get('name')}' already exists"),
    PRODUCER_ID_KEY: lambda p: IdTaken(f"producer id {p.get('id')} is taken"),
    CONSUMER_ID_KEY: lambda p: IdTaken(f"consumer id {p.get('id')} is taken"),
    CONSUMER_NAME_KEY: lambda p: NameTaken(f"consumer name {p.get('name')!r} is taken"),
    TOKEN_NAME_KEY: lambda p: TokenExists(f"a token named {p.get('name')!r} exists already"),
    LEASE_ID_KEY: lambda p: IdTaken(f"lease id {p.get('id')} is taken"),
}

UNANSWERED = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError,
              sa_exc.TimeoutError)


class NamesConstraints(Protocol):
    def constraint_name(self, exc: sa_exc.IntegrityError) -> str | None: ...


@contextmanager
def translate_errors(dialect: NamesConstraints, **context: Any) -> Iterator[None]:
    """Run the block with driver errors translated (see the module's docstring); `context`
    (a topic's `name`, say) goes into the domain error's message."""
    try:
        yield
    except sa_exc.IntegrityError as exc:
        make = UNIQUE_ERRORS.get(dialect.constraint_name(exc) or "")
        if make is None:
            raise
        raise make(context) from exc
    except UNANSWERED as exc:
        raise Unavailable(f"the database is unavailable: {_message(exc)}") from exc
    except sa_exc.DBAPIError as exc:
        if exc.connection_invalidated:
            raise Unavailable(f"the database connection was lost: {_message(exc)}") from exc
        raise


def _message(exc: sa_exc.StatementError) -> str:
    """The driver's message on one line: all of it, since with several hosts libpq says why
    each one failed, one line (or two) per host."""
    if not exc.orig:
        return type(exc).__name__
    return "; ".join(line.strip() for line in str(exc.orig).splitlines() if line.strip())


# --- the driver's own cursor, for the hot reads ------------------------------------------------
_COMPILED: dict[tuple[int, str], tuple[str, tuple[str, ...] | None]] = {}


class DriverCursor:
    """The driver's cursor in a SQLAlchemy transaction, taking the store's named statements.

    A statement through SQLAlchemy costs about 50 µs of CPU and a Row object per row (a
    fetch of 1,000 messages spent more on that than on the query): the hot reads go to the
    driver, their statement compiled once per database kind into the driver's own style.
    """

    __slots__ = ("cursor", "_dialect")

    def __init__(self, cursor: Any, dialect: Any) -> None:
        self.cursor = cursor
        self._dialect = dialect

    def execute(self, statement: TextClause, params: Mapping[str, Any]) -> Any:
        """Run `statement` with `params`; the driver's cursor, to fetch from."""
        key = (id(statement), self._dialect.name)
        found = _COMPILED.get(key)
        if found is None:
            compiled = statement.compile(dialect=self._dialect)
            positions = compiled.positiontup
            found = _COMPILED[key] = (str(compiled), tuple(positions) if positions else None)
        sql, positions = found
        values = params if positions is None else [params[name] for name in positions]
        self.cursor.execute(sql, values)
        return self.cursor

    def execute_prepared(self, statement: TextClause, params: Mapping[str, Any]) -> Any:
        """`execute`, but on PostgreSQL as a prepared statement (prepared.py: planned once per
        connection), every parameter a bigint; the connection in autocommit mode."""
        if self._dialect.name != "postgresql":
            return self.execute(statement, params)
        found = prepared(statement)
        prepared_execute(self.cursor, found.execute, found.values(params), [found])
        return self.cursor


@contextmanager
def autocommit(dbapi_connection: Any) -> Iterator[Any]:
    """The driver's connection in autocommit mode for the block: psycopg2 sends no BEGIN of
    its own, so each statement is its own transaction, or the statements carry BEGIN and
    COMMIT themselves (a round trip less); then back out of it, as the pool hands
    connections out."""
    dbapi_connection.autocommit = True
    try:
        yield dbapi_connection
    finally:
        if not dbapi_connection.closed:
            dbapi_connection.autocommit = False


@contextmanager
def driver_cursor(conn: Connection) -> Iterator[DriverCursor]:
    """A DriverCursor on `conn`'s transaction. The driver's errors leave it as SQLAlchemy's
    (so `translate_errors` maps them), and a lost connection is invalidated, as SQLAlchemy
    does for its own statements."""
    dbapi_connection = conn.connection.dbapi_connection
    cursor = dbapi_connection.cursor()
    error = conn.dialect.loaded_dbapi.Error
    try:
        yield DriverCursor(cursor, conn.dialect)
    except error as exc:
        gone = conn.dialect.is_disconnect(exc, dbapi_connection, cursor)
        if gone:
            conn.invalidate(exc)
        raise sa_exc.DBAPIError.instance(None, None, exc, error,
                                         connection_invalidated=gone) from exc
    finally:
        with suppress(error):
            cursor.close()
