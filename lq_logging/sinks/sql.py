"""The ``sql`` sink: one row per record in ``lq_records`` (SQLite or PostgreSQL).

Columns: ``topic``, ``offset``, ``time``, ``level``, ``logger``, ``message``, ``host`` and
``record`` (the whole record as JSON; JSONB on PostgreSQL). (``topic``, ``offset``) is the
primary key and every insert is ``ON CONFLICT DO NOTHING``, so a batch the runner delivers
again after a crash is stored once: exactly once in the table, at least once on the wire.

A batch is one transaction (one multi-row insert). When the database refuses the batch for
a reason that belongs to a record (a NUL character in PostgreSQL text, a value too large),
the rows are inserted one by one and the refused ones are :class:`Rejected` (dead-lettered).
Connection and other operational errors are raised as they are: the runner retries them.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, StatementError

from lq_logging.sinks import Entry, Rejected


def make_table(name: str = "lq_records") -> sa.Table:
    return sa.Table(
        name, sa.MetaData(),
        sa.Column("topic", sa.String(200), primary_key=True),
        sa.Column("offset", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("level", sa.String(20), nullable=True),
        sa.Column("logger", sa.Text, nullable=True),
        sa.Column("message", sa.Text, nullable=True),
        sa.Column("host", sa.String(255), nullable=True),
        sa.Column("record", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"),
                  nullable=False),
        sa.Index(f"ix_{name}_time", "time"),
    )


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=repr)


def row(entry: Entry) -> dict[str, Any]:
    rec = entry.record
    return {"topic": entry.topic, "offset": entry.offset, "time": _time(rec.get("time")),
            "level": _text(rec.get("level")), "logger": _text(rec.get("logger")),
            "message": _text(rec.get("message")), "host": _text(rec.get("host")),
            "record": rec}


def normalize_url(url: str) -> str:
    """``postgres://`` and ``postgresql://`` use psycopg2, the driver LogQueue ships
    (SQLAlchemy 2.1 would pick psycopg 3); an explicit ``+driver`` is kept."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix):]
    return url


def _record_error(exc: BaseException) -> bool:
    """True when the database (or the driver) refused a value: a record's fault."""
    if isinstance(exc, DataError | IntegrityError | ValueError | TypeError):
        return True
    # a parameter the driver could not bind, before anything reached the database
    return isinstance(exc, StatementError) and not isinstance(exc, DBAPIError)


class SQLSink:
    """Inserts records into a table through SQLAlchemy.

    Args:
        url: a SQLAlchemy database url (``sqlite:///path.db``, ``postgresql://...``).
        table: the table name (created when missing).
        engine_options: passed to :func:`sqlalchemy.create_engine`.
    """

    def __init__(self, url: str, table: str = "lq_records",
                 engine_options: dict[str, Any] | None = None) -> None:
        self.url = url
        self.engine = sa.create_engine(normalize_url(url), **(engine_options or {}))
        self.table = make_table(table)
        dialect = self.engine.dialect.name
        if dialect == "postgresql":
            self._insert = postgresql.insert
        elif dialect == "sqlite":
            self._insert = sqlite.insert
        else:
            raise ValueError(f"the sql sink supports SQLite and PostgreSQL, not {dialect}")
        self.table.metadata.create_all(self.engine)
        self._statement = self._insert(self.table).on_conflict_do_nothing(
            index_elements=["topic", "offset"])

    def write(self, batch: list[Entry]) -> None:
        if not batch:
            return
        rows = [row(entry) for entry in batch]
        try:
            with self.engine.begin() as conn:
                conn.execute(self._statement, rows)
            return
        except Exception as exc:
            if not _record_error(exc):
                raise  # connection, permissions, schema: transient or fatal, not a record
        rejects: list[tuple[Entry, str]] = []
        for entry, values in zip(batch, rows, strict=True):
            try:
                with self.engine.begin() as conn:
                    conn.execute(self._statement, [values])
            except Exception as exc:
                if not _record_error(exc):
                    raise
                reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
                rejects.append((entry, f"sql: {type(exc).__name__}: {reason}"))
        if rejects:
            raise Rejected(rejects)

    def flush(self) -> None:
        """Nothing to do: every ``write`` commits its transaction."""

    def close(self) -> None:
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"SQLSink({self.engine.url.render_as_string(hide_password=True)!r})"
