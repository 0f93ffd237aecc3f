"""Server-side prepared statements (PostgreSQL): the hottest statements planned once per
connection instead of once per call.

Planning is a measurable share of the hot paths: 0.2 ms of a fetch, 0.3 ms of a commit's
0.7, 0.14 ms of an append's 0.7 (docs/profiles/README.md). Each statement gets a name the
first time it is used; a connection PREPAREs the ones it does not hold yet (in autocommit
mode: a failure there must not end a transaction) and then EXECUTEs them, alone or several
in one query string. A connection whose prepared statements were dropped (DEALLOCATE, a
session reset) answers `invalid_sql_statement_name`: `execute` prepares them again.

The broker connects to PostgreSQL directly (ARCHITECTURE). A transaction-mode pooler
(PgBouncer) in between would hand an EXECUTE to a server connection that never saw its
PREPARE: supporting one would need these statements switched off.
"""

from __future__ import annotations

import itertools
import re
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import TextClause
from sqlalchemy.dialects.postgresql import psycopg2 as pg_driver

_PG = pg_driver.dialect()
_PARAM = re.compile(r"%\((\w+)\)s")
_NAMES = itertools.count(1)
_BY_STATEMENT: dict[int, Prepared] = {}
#: By driver connection, the names of the statements prepared on it.
_HELD: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()
UNKNOWN_STATEMENT = "26000"  # invalid_sql_statement_name
PREPARED_ALREADY = "42P05"  # duplicate_prepared_statement
_IDLE = 0  # psycopg2.extensions.TRANSACTION_STATUS_IDLE


@dataclass(frozen=True)
class Prepared:
    name: str
    prepare: str  # PREPARE name (types) AS ...
    execute: str  # EXECUTE name (%s, ...): the driver's placeholders
    names: tuple[str, ...]  # the parameters, in EXECUTE's order

    def values(self, params: Mapping[str, Any]) -> list[Any]:
        return [params[name] for name in self.names]


def prepared(statement: TextClause, types: Mapping[str, str] | None = None) -> Prepared:
    """`statement` as a prepared statement; each parameter a bigint unless `types` says."""
    found = _BY_STATEMENT.get(id(statement))
    if found is None:
        sql = str(statement.compile(dialect=_PG))
        names = tuple(dict.fromkeys(_PARAM.findall(sql)))
        numbered = _PARAM.sub(lambda m: f"${names.index(m.group(1)) + 1}", sql)
        name = f"lq_{next(_NAMES)}"
        declared = ", ".join((types or {}).get(param, "bigint") for param in names)
        found = _BY_STATEMENT[id(statement)] = Prepared(
            name, f"PREPARE {name} ({declared}) AS {numbered.replace('%%', '%')}",
            f"EXECUTE {name} ({', '.join(['%s'] * len(names))})", names)
    return found


def _ensure(cursor: Any, statements: Sequence[Prepared]) -> None:
    """PREPARE those of `statements` the cursor's connection does not hold yet (the
    connection in autocommit mode)."""
    held = _HELD.setdefault(cursor.connection, set())
    for statement in statements:
        if statement.name in held:
            continue
        try:
            cursor.execute(statement.prepare)
        except Exception as exc:
            if getattr(exc, "pgcode", None) != PREPARED_ALREADY:
                raise
        held.add(statement.name)


def execute(cursor: Any, sql: str, values: Sequence[Any],
            statements: Sequence[Prepared]) -> None:
    """Run `sql` (EXECUTEs of `statements`, maybe within statements of its own) once the
    connection holds `statements`; if the server dropped them meanwhile, roll back what `sql`
    began, prepare them again and run it once more."""
    _ensure(cursor, statements)
    try:
        cursor.execute(sql, values)
    except Exception as exc:
        if not _dropped(exc):
            raise
        if cursor.connection.info.transaction_status != _IDLE:
            cursor.execute("ROLLBACK")  # the failed EXECUTE came first: nothing was written
        _forget(cursor)
        _ensure(cursor, statements)
        cursor.execute(sql, values)


def _forget(cursor: Any) -> None:
    """The cursor's connection holds none of them any more (it answered UNKNOWN_STATEMENT)."""
    _HELD.pop(cursor.connection, None)


def _dropped(exc: BaseException) -> bool:
    """Whether `exc` says a prepared statement is gone from the server's session."""
    return getattr(exc, "pgcode", None) == UNKNOWN_STATEMENT
