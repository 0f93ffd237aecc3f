"""An append's statements on the driver's own connection, in as few round trips as it allows.

Through SQLAlchemy Core each of the append's five statements cost 45-55 µs of CPU on top of
the driver, and psycopg2 sends a BEGIN of its own first: seven round trips per append
(docs/profiles/README.md). Here an append on PostgreSQL is two round trips (COPY adds one
for four rows or more), each one query string of several statements:

1. ``BEGIN``; lock the topic's counter row (``SELECT ... FOR UPDATE``); read the counter and
   the producers' seq state. The read is a statement of its own so that its snapshot is
   taken once the lock is held (READ COMMITTED takes one per statement): it sees every
   append committed before, from any process.
2. ``INSERT`` the rows; set the counter; set each producer's seq; ``COMMIT``.

Every statement is a prepared one (prepared.py), planned once per connection: the planning
of the five took 0.14 ms of an append's 0.7 ms. The connection is in autocommit mode
meanwhile, so psycopg2 sends no BEGIN of its own; the statements carry the transaction.
On SQLite the same statements run one by one in ``BEGIN IMMEDIATE`` (SQLite is in the
process: there are no round trips to save). Any failure rolls back; driver errors reach
driver.py as SQLAlchemy would raise them (database.py ``driver_connection``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from . import queries as q
from .dialect import COPY_THRESHOLD, Dialect
from .driver import autocommit
from .prepared import Prepared, execute, prepared

LastSeq = tuple[int | None, int | None, int | None]  # a producer's last seq, first, last
SeqUpdate = tuple[int, int, int, int]  # producer id, seq, first offset, last offset


class AppendSql:
    """The statements of one database kind; see PgAppendSql and SqliteAppendSql."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect

    @contextmanager
    def session(self, conn: Any) -> Iterator[None]:
        """Run the block as one transaction that the statements begin and commit; roll back
        whatever the block leaves open when it fails."""
        try:
            yield
        except BaseException:
            self._roll_back(conn)
            raise

    def lock_and_read(self, conn: Any, topic_id: int, producer_ids: Sequence[int]
                      ) -> tuple[int | None, dict[int, LastSeq]]:
        """Begin, lock the topic's counter row, and return its next offset (None: no such
        topic) and the seq state of those of `producer_ids` registered for it."""
        raise NotImplementedError

    def write_and_commit(self, conn: Any, topic_id: int, stamp: int,
                         rows: list[tuple[int, str]], next_offset: int,
                         seqs: list[SeqUpdate]) -> None:
        """Insert the (offset, body) rows, move the counter to `next_offset` when there are
        rows, record the producers' seqs, and commit."""
        raise NotImplementedError

    def _roll_back(self, conn: Any) -> None:
        raise NotImplementedError


class PgAppendSql(AppendSql):
    @contextmanager
    def session(self, conn: Any) -> Iterator[None]:
        with autocommit(conn), super().session(conn):  # the statements carry BEGIN, COMMIT
            yield

    def lock_and_read(self, conn: Any, topic_id: int, producer_ids: Sequence[int]
                      ) -> tuple[int | None, dict[int, LastSeq]]:
        params = {"topic": topic_id, "ids": list(producer_ids)}
        sql = f"BEGIN; {_LOCK.execute}; {_READ.execute}"
        values = _LOCK.values(params) + _READ.values(params)
        with conn.cursor() as cursor:
            execute(cursor, sql, values, _STATEMENTS)
            rows = cursor.fetchall()
        if not rows:
            return None, {}
        return rows[0][0], {row[1]: tuple(row[2:]) for row in rows if row[1] is not None}

    def write_and_commit(self, conn: Any, topic_id: int, stamp: int,
                         rows: list[tuple[int, str]], next_offset: int,
                         seqs: list[SeqUpdate]) -> None:
        statements: list[str] = []
        values: list[Any] = []

        def add(statement: Prepared, **params: Any) -> None:
            statements.append(statement.execute)
            values.extend(statement.values(params))

        with conn.cursor() as cursor:
            if len(rows) >= COPY_THRESHOLD:
                self.dialect.insert_messages(cursor, topic_id, stamp, rows)  # COPY
            else:
                for offset, body in rows:
                    add(_INSERT, topic=topic_id, offset=offset, body=body, ts=stamp)
            if rows:
                add(_SET_COUNTER, next=next_offset, topic=topic_id)
            for producer_id, seq, first, last in seqs:
                add(_SET_SEQ, seq=seq, first=first, last=last, id=producer_id)
            statements.append("COMMIT")
            cursor.execute("; ".join(statements), values)

    def _roll_back(self, conn: Any) -> None:
        if conn.closed:
            return
        if conn.info.transaction_status != _IDLE:
            with conn.cursor() as cursor:
                cursor.execute("ROLLBACK")


class SqliteAppendSql(AppendSql):
    def lock_and_read(self, conn: Any, topic_id: int, producer_ids: Sequence[int]
                      ) -> tuple[int | None, dict[int, LastSeq]]:
        cursor = conn.cursor()
        try:
            cursor.execute("BEGIN IMMEDIATE")  # the database's write lock: the counter's
            row = cursor.execute(q.READ_COUNTER_SQLITE, (topic_id,)).fetchone()
            if row is None:
                return None, {}
            found = cursor.execute(q.PRODUCER_SEQS_SQLITE.format(
                ids=", ".join("?" * len(producer_ids))), (topic_id, *producer_ids))
            return row[0], {r[0]: tuple(r[1:]) for r in found}
        finally:
            cursor.close()

    def write_and_commit(self, conn: Any, topic_id: int, stamp: int,
                         rows: list[tuple[int, str]], next_offset: int,
                         seqs: list[SeqUpdate]) -> None:
        cursor = conn.cursor()
        try:
            if rows:
                self.dialect.insert_messages(cursor, topic_id, stamp, rows)
                cursor.execute(q.SET_COUNTER_SQLITE, (next_offset, topic_id))
            if seqs:
                cursor.executemany(q.SET_PRODUCER_SEQ_SQLITE, [u[1:] + u[:1] for u in seqs])
            cursor.execute("COMMIT")
        finally:
            cursor.close()

    def _roll_back(self, conn: Any) -> None:
        if conn.in_transaction:
            conn.execute("ROLLBACK")


_IDLE = 0  # psycopg2.extensions.TRANSACTION_STATUS_IDLE: no transaction open
_LOCK = prepared(q.LOCK_COUNTER_PG)
_READ = prepared(q.READ_PRODUCER_SEQS_PG, q.APPEND_TYPES_PG)
_INSERT = prepared(q.APPEND_MESSAGE_PG, q.APPEND_TYPES_PG)
_SET_COUNTER = prepared(q.SET_COUNTER_PG)
_SET_SEQ = prepared(q.SET_PRODUCER_SEQ_PG)
_STATEMENTS = (_LOCK, _READ, _INSERT, _SET_COUNTER, _SET_SEQ)


def append_sql(dialect: Dialect) -> AppendSql:
    """The append statements for `dialect`'s database."""
    return PgAppendSql(dialect) if dialect.name == "postgresql" else SqliteAppendSql(dialect)
