"""A fetch's read and a commit's move of a consumer's position, in as few round trips as the
database allows.

Through a SQLAlchemy transaction a fetch was four round trips on PostgreSQL (psycopg2's
``BEGIN``, the registration, the page, ``COMMIT``) and a commit four more. Here each is one
statement on the driver's connection in autocommit mode (queries.py ``FETCH_PG``,
``COMMIT_PG``): one round trip, one snapshot, and for the commit one transaction that is
durable when the statement returns (``synchronous_commit`` as the server has it, on by
default), as appends.py does for appends. On SQLite (in the process: no round trips to save)
both stay in a transaction, the commit in ``BEGIN IMMEDIATE``.

Both refuse what consumers.py refused: a registration gone (``RegistrationGone``), one that
hands out leases (``Leased``), a commit past the topic's end (``BadRequest``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import BadRequest
from . import queries as q
from . import reads
from .caches import RegistrationGone
from .database import Database
from .driver import DriverCursor, autocommit, driver_cursor
from .records import Row


class PositionSql:
    """The statements of one database kind; see PgPositionSql and SqlitePositionSql."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def read(self, topic_id: int, consumer_id: int, offset: int | None, limit: int,
             max_bytes: int | None) -> tuple[int, list[Row]]:
        """The consumer's position and up to `limit` messages (at most `max_bytes` of text,
        at least one) from `offset`, or from the position when `offset` is None."""
        raise NotImplementedError

    def commit(self, consumer_id: int, offset: int) -> int:
        """Move the position forward to `offset`; return the position after."""
        raise NotImplementedError


def _checked_commit(consumer_id: int, offset: int, row: tuple[Any, ...] | None) -> int:
    """The position a commit's look (position, end, leases out) leaves, or its refusal."""
    if row is None:  # unregistered, or the topic deleted (then retried: caches.py)
        raise RegistrationGone("consumer", consumer_id)
    position, end, leased = row[:3]
    if offset > end:
        raise BadRequest(f"offset {offset} is past the end of the topic ({end})")
    if leased:
        raise reads.refusal(consumer_id)
    return max(position, offset)


class PgPositionSql(PositionSql):
    @contextmanager
    def _cursor(self, write: bool) -> Iterator[DriverCursor]:
        """A cursor in autocommit mode: each statement is its own transaction, and psycopg2
        sends no BEGIN of its own."""
        with self.db.driver_connection(write) as conn, autocommit(conn), \
                conn.cursor() as cursor:
            yield DriverCursor(cursor, self.db.engine.dialect)

    def read(self, topic_id: int, consumer_id: int, offset: int | None, limit: int,
             max_bytes: int | None) -> tuple[int, list[Row]]:
        params = {"id": consumer_id, "topic": topic_id, "offset": offset, "limit": limit,
                  "max_bytes": reads.UNBOUNDED if max_bytes is None else max_bytes}
        with self._cursor(write=False) as cursor:
            rows = cursor.execute_prepared(q.FETCH_PG, params).fetchall()
        if rows and rows[0][0] is not None:  # not seen: the header is the first branch
            rows.sort(key=lambda row: -1 if row[0] is None else row[0])
        if not rows or rows[0][0] is not None:
            raise RegistrationGone("consumer", consumer_id)
        _, leased, position = rows[0]
        if leased:
            raise reads.refusal(consumer_id)
        del rows[0]
        return position, rows

    def commit(self, consumer_id: int, offset: int) -> int:
        with self._cursor(write=True) as cursor:
            row = cursor.execute_prepared(q.COMMIT_PG, {"id": consumer_id,
                                                          "offset": offset}).fetchone()
        _checked_commit(consumer_id, offset, row)
        return row[0] if row[3] is None else row[3]  # the position, or where it moved to


class SqlitePositionSql(PositionSql):
    def read(self, topic_id: int, consumer_id: int, offset: int | None, limit: int,
             max_bytes: int | None) -> tuple[int, list[Row]]:
        with self.db.transaction() as conn, driver_cursor(conn) as cursor:
            position = reads.registration(cursor, consumer_id)
            start = position if offset is None else offset
            return position, self.db.dialect.page(cursor, topic_id, start, limit, max_bytes)

    def commit(self, consumer_id: int, offset: int) -> int:
        with self.db.transaction(write=True) as conn, driver_cursor(conn) as cursor:
            row = cursor.execute(self.db.dialect.lock_commit, {"id": consumer_id}).fetchone()
            position = _checked_commit(consumer_id, offset, row)
            if position > row[0]:
                cursor.execute(q.SET_CONSUMER_POSITION, {"position": position, "id": consumer_id})
        return position


def position_sql(db: Database) -> PositionSql:
    """The fetch and commit statements for `db`'s database."""
    return PgPositionSql(db) if db.dialect.name == "postgresql" else SqlitePositionSql(db)
