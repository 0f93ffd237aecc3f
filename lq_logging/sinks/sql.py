"""The ``sql`` sink: one row per record in ``lq_records`` (SQLite or PostgreSQL).

Columns: ``topic``, ``offset``, ``time``, ``level``, ``logger``, ``message``, ``host`` and
``record`` (the whole record as JSON; JSONB on PostgreSQL). (``topic``, ``offset``) is the
primary key and every insert is ``ON CONFLICT DO NOTHING``, so a batch the runner delivers
again after a crash is stored once: exactly once in the table, at least once on the wire.

A batch is one transaction. On PostgreSQL (psycopg2) the batch is streamed with ``COPY`` into
a temporary staging table (one per connection, emptied at each commit, no index), then moved
with ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``: three to four times the rate of a
multi-row insert (``bench/bench_runner.py``), with the same exactly-once table. Elsewhere
(SQLite, or ``copy = false``) it is one multi-row ``INSERT ... ON CONFLICT DO NOTHING``.

When the database refuses the batch for a reason that belongs to a record (a NUL character
in PostgreSQL text, a value too large), the rows are inserted one by one and the refused ones
are :class:`Rejected` (dead-lettered). Connection and other operational errors are raised as
they are: the runner retries them.
"""

from __future__ import annotations

import io
import json
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, StatementError

from lq_logging.sinks import Entry, Rejected
from sdk.contract import parse_bool

COLUMNS = ("topic", "offset", "time", "level", "logger", "message", "host", "record")
#: The COPY path's staging table, in the connection's own temporary schema.
STAGE = "_lq_stage"
_encode_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=repr).encode


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


def _copy_text(value: str | None) -> str:
    r"""A value as a field of COPY's text format: ``\N`` for NULL; backslash, tab, newline and
    carriage return escaped (that is all the format needs)."""
    if value is None:
        return "\\N"
    return (value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
            .replace("\r", "\\r"))


def copy_line(values: dict[str, Any]) -> str:
    """One :func:`row` as a line of COPY's text format (columns in :data:`COLUMNS` order)."""
    when = values["time"]
    return "\t".join((
        _copy_text(values["topic"]), str(values["offset"]),
        "\\N" if when is None else when.isoformat(),
        _copy_text(values["level"]), _copy_text(values["logger"]),
        _copy_text(values["message"]), _copy_text(values["host"]),
        _copy_text(_encode_json(values["record"])))) + "\n"


def normalize_url(url: str) -> str:
    """``postgres://`` and ``postgresql://`` use psycopg2, the driver LogQueue ships
    (SQLAlchemy 2.1 would pick psycopg 3); an explicit ``+driver`` is kept."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix):]
    return url


def _record_error(exc: BaseException, dbapi: Any = None) -> bool:
    """True when the database (or the driver) refused a value: a record's fault. ``dbapi``:
    the driver module, for its own errors (the COPY path bypasses SQLAlchemy's wrapping)."""
    if isinstance(exc, DataError | IntegrityError | ValueError | TypeError):
        return True
    if dbapi is not None and isinstance(exc, dbapi.DataError | dbapi.IntegrityError):
        return True
    # a parameter the driver could not bind, before anything reached the database
    return isinstance(exc, StatementError) and not isinstance(exc, DBAPIError)


class SQLSink:
    """Inserts records into a table through SQLAlchemy.

    Args:
        url: a SQLAlchemy database url (``sqlite:///path.db``, ``postgresql://...``).
        table: the table name (created when missing).
        engine_options: passed to :func:`sqlalchemy.create_engine`.
        copy: on PostgreSQL with psycopg2, write batches with COPY through a staging table
            (the default); ``False`` uses a multi-row INSERT as on SQLite.

    Threading: one batch at a time per sink (the runner's pipeline lock guarantees it).
    """

    def __init__(self, url: str, table: str = "lq_records",
                 engine_options: dict[str, Any] | None = None, copy: bool | str = True) -> None:
        self.url = url
        self.engine = sa.create_engine(normalize_url(url), **(engine_options or {}))
        self.table = make_table(table)
        dialect = self.engine.dialect
        if dialect.name == "postgresql":
            self._insert = postgresql.insert
        elif dialect.name == "sqlite":
            self._insert = sqlite.insert
        else:
            raise ValueError(f"the sql sink supports SQLite and PostgreSQL, not {dialect.name}")
        self.table.metadata.create_all(self.engine)
        self._statement = self._insert(self.table).on_conflict_do_nothing(
            index_elements=["topic", "offset"])
        self._dbapi = dialect.loaded_dbapi
        self.copy = (parse_bool(copy) and dialect.name == "postgresql"
                     and dialect.driver == "psycopg2")
        if self.copy:
            self._copy_sql = self._copy_statements()

    def _copy_statements(self) -> tuple[Any, Any, Any]:
        """(create the staging table, COPY into it, move its rows into the table), with the
        identifiers quoted by the driver."""
        from psycopg2 import sql

        stage = sql.SQL("pg_temp.{}").format(sql.Identifier(STAGE))
        table = sql.Identifier(self.table.name)
        columns = sql.SQL(", ").join(sql.Identifier(c) for c in COLUMNS)
        create = sql.SQL("CREATE TEMPORARY TABLE IF NOT EXISTS {} (LIKE {}) "
                         "ON COMMIT DELETE ROWS").format(sql.Identifier(STAGE), table)
        copy = sql.SQL("COPY {} ({}) FROM STDIN").format(stage, columns)
        move = sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} "
                       "ON CONFLICT (topic, \"offset\") DO NOTHING").format(
                           table, columns, columns, stage)
        return create, copy, move

    def write(self, batch: list[Entry]) -> None:
        if not batch:
            return
        rows = [row(entry) for entry in batch]
        try:
            if self.copy:
                self._write_copy(rows)
            else:
                with self.engine.begin() as conn:
                    conn.execute(self._statement, rows)
            return
        except Exception as exc:
            if not _record_error(exc, self._dbapi):
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

    def _write_copy(self, rows: list[dict[str, Any]]) -> None:
        """COPY ``rows`` into the staging table and move them into the table, in one
        transaction on a pooled connection's driver connection."""
        from psycopg2.extensions import encodings

        create, copy, move = self._copy_sql
        text = "".join(copy_line(values) for values in rows)
        raw = self.engine.raw_connection()
        try:
            # Encoded here, so a value the connection cannot carry (a lone surrogate) is a
            # ValueError, a record's fault, not a failed COPY.
            data = io.BytesIO(text.encode(encodings[raw.dbapi_connection.encoding]))
            with raw.cursor() as cur:
                if not raw.info.get(STAGE):
                    cur.execute(create)
                    raw.commit()  # the staging table outlives a batch that fails
                    raw.info[STAGE] = True
                cur.copy_expert(copy, data)
                cur.execute(move)
            raw.commit()
        except BaseException:
            raw.info.pop(STAGE, None)  # made again (IF NOT EXISTS) by the next try
            _abandon(raw)
            raise
        finally:
            raw.close()

    def flush(self) -> None:
        """Nothing to do: every ``write`` commits its transaction."""

    def close(self) -> None:
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"SQLSink({self.engine.url.render_as_string(hide_password=True)!r})"


def _abandon(raw: Any) -> None:
    """Roll back a failed transaction; a connection that cannot (it broke) leaves the pool."""
    try:
        raw.rollback()
    except Exception:  # noqa: BLE001 - the connection is gone; the pool must not reuse it
        raw.invalidate()
        return
    if getattr(raw.dbapi_connection, "closed", 0):
        raw.invalidate()
