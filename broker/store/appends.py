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

The connection is in autocommit mode meanwhile, so psycopg2 sends no BEGIN of its own; the
statements carry the transaction. On SQLite the same statements run one by one in ``BEGIN
IMMEDIATE`` (SQLite is in the process: there are no round trips to save). Any failure rolls
back; driver errors reach driver.py as SQLAlchemy would raise them (database.py
``driver_connection``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from . import queries as q
from .dialect import COPY_THRESHOLD, Dialect

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
        conn.autocommit = True  # the statements carry BEGIN and COMMIT (one round trip less)
        try:
            with super().session(conn):
                yield
        finally:
            if not conn.closed:
                conn.autocommit = False  # as the pool hands connections out

    def lock_and_read(self, conn: Any, topic_id: int, producer_ids: Sequence[int]
                      ) -> tuple[int | None, dict[int, LastSeq]]:
        with conn.cursor() as cursor:
            cursor.execute(q.LOCK_AND_READ_PG, {"topic": topic_id, "ids": list(producer_ids)})
            rows = cursor.fetchall()
        if not rows:
            return None, {}
        return rows[0][0], {row[1]: tuple(row[2:]) for row in rows if row[1] is not None}

    def write_and_commit(self, conn: Any, topic_id: int, stamp: int,
                         rows: list[tuple[int, str]], next_offset: int,
                         seqs: list[SeqUpdate]) -> None:
        statements: list[str] = []
        params: list[Any] = []
        with conn.cursor() as cursor:
            if len(rows) >= COPY_THRESHOLD:
                self.dialect.insert_messages(cursor, topic_id, stamp, rows)  # COPY
            elif rows:
                statements.append(q.INSERT_MESSAGES_PG + ", ".join([q.MESSAGE_ROW_PG] * len(rows)))
                for offset, body in rows:
                    params += (topic_id, offset, body, stamp)
            if rows:
                statements.append(q.SET_COUNTER_PG)
                params += (next_offset, topic_id)
            for update in seqs:
                statements.append(q.SET_PRODUCER_SEQ_PG)
                params += update[1:] + update[:1]
            statements.append("COMMIT")
            cursor.execute("; ".join(statements), params)

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


def append_sql(dialect: Dialect) -> AppendSql:
    """The append statements for `dialect`'s database."""
    return PgAppendSql(dialect) if dialect.name == "postgresql" else SqliteAppendSql(dialect)
