"""Real processes and real databases for the tests: no mocks, no sleeps as synchronization."""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import requests

PG_ADMIN_DSN = os.environ.get("LQ_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
LQ = str(Path(sys.executable).with_name("lq"))


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01,
               message: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - the predicate may fail until ready
            last_error = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}"
                                 + (f" (last error: {last_error!r})" if last_error else ""))
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LQ_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def interruptible(argv: list[str]) -> list[str]:
    """``argv`` run with SIGINT at its default, so the test can press Ctrl-C on it. A
    process started in the background by a shell without job control (as a CI runner may
    start the suite) inherits SIGINT ignored, and Python then never raises
    KeyboardInterrupt. A tiny exec wrapper rather than ``preexec_fn``, which is unsafe in
    a process with threads."""
    reset = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
             "os.execv(sys.argv[1], sys.argv[1:])")
    return [sys.executable, "-c", reset, *argv]


class BrokerProcess:
    """``lq broker`` as a subprocess on a free port; ready once /healthz answers.

    ``env``: extra environment variables for the broker (on top of :func:`clean_env`).
    """

    def __init__(self, db_url: str, *, token: str | None = None, args: list[str] | None = None,
                 port: int | None = None, log_path: Path | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        self.db_url = db_url
        self.token = token
        self.args = list(args or [])
        self.env = dict(env or {})
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> BrokerProcess:
        env = clean_env(**self.env)
        if self.token:
            env["LQ_TOKEN"] = self.token
        cmd = [LQ, "broker", "--host", "127.0.0.1", "--port", str(self.port), "--db", self.db_url,
               *self.args]
        if self.log_path:
            with open(self.log_path, "ab") as out:
                self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                             start_new_session=True)
        else:
            self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.STDOUT, start_new_session=True)

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"broker exited with {self.proc.returncode}: {self.tail_log()}")
            return requests.get(self.url + "/healthz", timeout=1).status_code == 200

        deadline = time.monotonic() + timeout
        while True:
            try:
                if ready():
                    return self
            except RuntimeError:
                raise
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"broker did not become ready: {self.tail_log()}")
            time.sleep(0.02)

    def tail_log(self) -> str:
        if self.log_path and self.log_path.exists():
            return self.log_path.read_text(errors="replace")[-3000:]
        return "(no log)"

    def kill(self) -> None:
        """kill -9 the whole process group (gunicorn arbiter and workers)."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def __enter__(self) -> BrokerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- PostgreSQL -------------------------------------------------------------------------

def postgres_available() -> str | None:
    """None when PostgreSQL answers, else the reason it does not."""
    try:
        import psycopg2

        psycopg2.connect(PG_ADMIN_DSN, connect_timeout=3).close()
        return None
    except Exception as exc:  # noqa: BLE001
        return f"PostgreSQL unreachable at {PG_ADMIN_DSN}: {exc}".strip()


def create_pg_database(prefix: str) -> str:
    import psycopg2

    name = f"lqt_{prefix}_{secrets.token_hex(4)}".lower()[:60]
    conn = psycopg2.connect(PG_ADMIN_DSN)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    base = PG_ADMIN_DSN.rsplit("/", 1)[0]
    return f"{base}/{name}"


def drop_pg_database(url: str) -> None:
    import psycopg2

    name = url.rsplit("/", 1)[1]
    conn = psycopg2.connect(PG_ADMIN_DSN)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
        cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
    conn.close()


def execute_sql(db_url: str, statement: str, **params: Any) -> int:
    """Run one statement on a broker's database (to set up what only time would make, e.g.
    a registration idle for hours); the rows it changed."""
    import sqlalchemy as sa

    engine = sa.create_engine(db_url.replace("postgresql://", "postgresql+psycopg2://"))
    try:
        with engine.begin() as conn:
            return conn.execute(sa.text(statement), params).rowcount
    finally:
        engine.dispose()


class TopicReader:
    """Reads a topic from the start through one consumer registration, over raw HTTP (so a
    test of the client side does not trust the client side to read its result)."""

    def __init__(self, url: str, topic: str) -> None:
        self.url, self.topic = url, topic
        self.consumer_id: int | None = None
        self.texts: list[str] = []

    def poll(self) -> int:
        """Read what is there (waiting briefly); how many messages came."""
        if self.consumer_id is None:
            body = requests.post(self.url + "/consumer/register", json={"topic": self.topic},
                                 timeout=5).json()
            assert body["status"] == "success", body
            self.consumer_id = body["consumer_id"]
        body = requests.get(self.url + "/consumer/consume",
                            params={"topic": self.topic, "consumer_id": self.consumer_id,
                                    "max": 1000, "wait_ms": 200}, timeout=10).json()
        assert body["status"] == "success", body
        self.texts += [m["message"] for m in body["messages"]]
        return len(body["messages"])

    def texts_until(self, count: int, timeout: float = 60.0) -> list[str]:
        """Read until ``count`` messages came, then on until the topic is drained (so a
        duplicate beyond the expected messages shows up too)."""
        def enough() -> bool:
            self.poll()
            return len(self.texts) >= count
        wait_until(enough, timeout=timeout, interval=0,
                   message=f"{count} messages on {self.topic} (have {len(self.texts)})")
        while self.poll():
            pass
        return self.texts

    def until(self, count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        """:meth:`texts_until`, each message parsed as a JSON record."""
        return [json.loads(text) for text in self.texts_until(count, timeout)]


def private_logger(name: str) -> Iterator[logging.Logger]:
    """The logger ``name`` for one test: INFO, not propagating; the handlers the test added
    are removed and closed afterwards. In a fixture: ``yield from private_logger(name)``."""
    logger = logging.getLogger(name)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    yield logger
    for handler in logger.handlers[:]:
        logger.removeHandler(handler)
        handler.close()


def messages(records: list[dict[str, Any]], prefix: str) -> list[str]:
    """The messages of ``records`` that start with ``prefix``, in order."""
    return [r["message"] for r in records if r["message"].startswith(prefix)]


def plan_nodes(conn: Any, statement: str, params: dict) -> list[dict]:
    """Every node of `statement`'s plan as EXPLAIN ANALYZE ran it (PostgreSQL; `conn` a
    SQLAlchemy connection)."""
    from sqlalchemy import text

    plan = conn.execute(text("EXPLAIN (ANALYZE, FORMAT JSON) " + statement), params).scalar()
    plan = json.loads(plan) if isinstance(plan, str) else plan
    found, todo = [], [plan[0]["Plan"]]
    while todo:
        node = todo.pop()
        todo.extend(node.get("Plans", []))
        found.append(node)
    return found
