"""What every benchmark needs: a real `lq broker` on a free port, and a throwaway PostgreSQL
database. Imported by the bench/*.py scripts (run as `python bench/NAME.py`)."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

LQ = str(Path(sys.executable).with_name("lq"))
PG_ADMIN = os.environ.get("LQ_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def broker(db_url: str | None = None, *, workers: int | None = None,
           threads: int = 32) -> Iterator[str]:
    """`lq broker` on a free port (SQLite in a temporary directory unless `db_url`); yields
    its url once /healthz answers, and stops the whole process group afterwards."""
    with tempfile.TemporaryDirectory(prefix="lq-bench-") as tmp:
        log_path = Path(tmp) / "broker.log"
        port = free_port()
        args = [LQ, "broker", "--port", str(port), "--threads", str(threads),
                "--db", db_url or f"sqlite:///{Path(tmp) / 'bench.db'}"]
        if workers:
            args += ["--workers", str(workers)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("LQ_")}
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the broker did not start:\n{log_path.read_text()}")
                try:
                    if requests.get(url + "/healthz", timeout=1).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                time.sleep(0.05)  # polling for readiness, bounded by the deadline
            yield url
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


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
