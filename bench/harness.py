"""What every benchmark needs: a real `lq broker` on a free port, and a throwaway PostgreSQL
database. Imported by the bench/*.py scripts (run as `python bench/NAME.py`).

Brokers start through the tests' launcher (tests/support.py `BrokerProcess`), so a benchmark
runs the broker exactly as the tests do.
"""

from __future__ import annotations

import os
import secrets
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support import LQ, BrokerProcess

__all__ = ["LQ", "broker", "pg_database"]

PG_ADMIN = os.environ.get("LQ_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


@contextmanager
def broker(db_url: str | None = None, *, workers: int | None = None,
           threads: int = 32) -> Iterator[str]:
    """`lq broker` on a free port (SQLite in a temporary directory unless `db_url`); yields
    its url once /healthz answers, and stops the whole process group afterwards."""
    with tempfile.TemporaryDirectory(prefix="lq-bench-") as tmp:
        args = ["--threads", str(threads)]
        if workers:
            args += ["--workers", str(workers)]
        process = BrokerProcess(db_url or f"sqlite:///{Path(tmp) / 'bench.db'}", args=args,
                                log_path=Path(tmp) / "broker.log")
        try:
            process.start()
        except (AssertionError, RuntimeError) as exc:
            raise SystemExit(f"the broker did not start: {exc}") from None
        try:
            yield process.url
        finally:
            process.stop()


@contextmanager
def pg_database() -> Iterator[str | None]:
    """A fresh PostgreSQL database on PG_ADMIN's server, dropped afterwards; None when no
    server answers (the PostgreSQL rows are then left out)."""
    try:
        import psycopg2

        admin = psycopg2.connect(PG_ADMIN, connect_timeout=3)
    except Exception:  # noqa: BLE001 - PostgreSQL is optional for a benchmark
        yield None
        return
    admin.autocommit = True
    name = f"lq_bench_{secrets.token_hex(4)}"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
