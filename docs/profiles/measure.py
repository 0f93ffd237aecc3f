"""Where the time of issue 21's two lagging paths goes, layer by layer, in one run.

    python docs/profiles/measure.py                 # PostgreSQL (a throwaway database)
    python docs/profiles/measure.py --db sqlite     # SQLite in a temporary directory

Path 1, one message per round trip: the database's own INSERT + COMMIT, the NOTIFY
transaction, the store's append in-process, the Flask app in-process (test client, no HTTP),
an empty HTTP request, the same POST with http.client (TCP_NODELAY on and off) and with
requests, and the SDK's ``Producer.send``. Path 2, consume 1,000 + commit: the same layers
for SELECT 1,000 + position UPDATE, and the per-batch costs of building and parsing the
reply (pydantic, json, orjson and msgspec when importable, the SDK's Message objects).

Each figure is the mean per call over ``--calls`` calls, the median of 3 rounds, all on one
broker (``--workers 1``) in this run. orjson/msgspec are measured only when importable (they
are not dependencies): ``pip install --target DIR orjson msgspec`` and ``--extra-path DIR``.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack, closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from harness import broker, pg_database

from sdk import Client

ROUNDS = 5
PAYLOAD = json.dumps({"ts": "2026-01-01T12:00:00.000000+00:00", "level": "INFO",
                      "logger": "shop.orders", "message": "order 1 created " + "x" * 190})


@dataclass(frozen=True)
class Sample:
    wall: float  # µs per call
    cpu: float  # µs of this process's CPU per call
    broker_cpu: float | None  # µs of the broker worker's CPU per call


def process_cpu(pid: int) -> float:
    """A process's user + system CPU seconds so far, from /proc (clock-tick resolution)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker_pid(url: str) -> int:
    """The gunicorn worker of the broker on ``url``'s port: the `lq broker --port N` process
    whose parent is one too (workers are forks of the arbiter, with its command line)."""
    port = url.rsplit(":", 1)[1]
    brokers: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
            if b"broker" in args and b"--port" in args and port.encode() in args:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
                brokers[int(proc.name)] = ppid
        except (OSError, ValueError):
            continue
    workers = [pid for pid, ppid in brokers.items() if ppid in brokers]
    if len(workers) != 1:
        raise SystemExit(f"expected one worker for port {port}, found {workers}")
    return workers[0]


@dataclass(frozen=True)
class Layer:
    name: str
    fn: Callable[[], object]
    calls: int
    pid: int | None = None  # the broker worker to charge CPU to, for HTTP layers


def one_round(layer: Layer) -> tuple[float, float, float]:
    broker_start = process_cpu(layer.pid) if layer.pid else 0.0
    cpu_start, start = time.process_time(), time.perf_counter()
    for _ in range(layer.calls):
        layer.fn()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    broker_cpu = process_cpu(layer.pid) - broker_start if layer.pid else 0.0
    return tuple(x / layer.calls * 1e6 for x in (wall, cpu, broker_cpu))


def run_layers(layers: list[Layer]) -> list[tuple[str, Sample]]:
    """Per call: wall, this process's CPU and the broker worker's CPU; each the median of
    ROUNDS rounds. The rounds interleave the layers, so all see the same machine load."""
    for layer in layers:
        for _ in range(min(layer.calls, 20)):  # warm-up
            layer.fn()
    rounds: list[list[tuple[float, float, float]]] = [[] for _ in layers]
    for _ in range(ROUNDS):
        for layer, results in zip(layers, rounds, strict=True):
            results.append(one_round(layer))
    rows = []
    for layer, results in zip(layers, rounds, strict=True):
        wall, cpu, broker_cpu = (statistics.median(r[i] for r in results) for i in range(3))
        rows.append((layer.name, Sample(wall, cpu, broker_cpu if layer.pid else None)))
    return rows


def report(rows: list[tuple[str, Sample]], unit: str, title: str) -> None:
    per = 1000 if unit.endswith("batch") else 1
    print(f"\n{title}\n\n| layer | wall {unit} | msg/s | this process CPU | broker worker CPU |"
          "\n|---|---:|---:|---:|---:|")
    for name, sample in rows:
        broker_cpu = "" if sample.broker_cpu is None else f"{sample.broker_cpu:,.0f}"
        print(f"| {name} | {sample.wall:,.0f} | {1e6 * per / sample.wall:,.0f} | "
              f"{sample.cpu:,.0f} | {broker_cpu} |")


# --- the database alone ----------------------------------------------------------------------
APPEND_STATEMENTS = [  # what the store sent for one message with a seq before session 4
    ("SELECT next_offset FROM lq_topics WHERE id = %(t)s FOR UPDATE", False),
    ("SELECT id, last_seq, last_first, last_last FROM lq_producers "
     "WHERE topic_id = %(t)s AND id IN (%(p)s)", False),
    ("INSERT INTO lq_messages (topic_id, msg_offset, body, ts_us) "
     "VALUES (%(t)s, %(o)s, %(b)s, 0)", True),
    ("UPDATE lq_topics SET next_offset = %(o)s + 1 WHERE id = %(t)s", True),
    ("UPDATE lq_producers SET last_seq = %(s)s, last_first = %(o)s, last_last = %(o)s "
     "WHERE id = %(p)s", True),
]
#: The same work in one statement (no duplicate check: the round-trip cost only).
APPEND_ONE_STATEMENT = (
    "WITH c AS (UPDATE lq_topics SET next_offset = next_offset + 1 WHERE id = %(t)s "
    "           RETURNING next_offset - 1 AS o), "
    "p AS (UPDATE lq_producers SET last_seq = %(s)s, last_first = (SELECT o FROM c), "
    "      last_last = (SELECT o FROM c) WHERE id = %(p)s RETURNING id) "
    "INSERT INTO lq_messages (topic_id, msg_offset, body, ts_us) "
    "SELECT %(t)s, c.o, %(b)s, 0 FROM c, p")


def append_by_hand(cur, conn, one_statement: bool) -> Callable[[], None]:
    """psycopg2 on the broker's own tables: a topic and a producer of their own."""
    cur.execute("INSERT INTO lq_topics (name, next_offset, first_offset, created_us) "
                "VALUES (%s, 0, 0, 0) RETURNING id", (f"by-hand-{one_statement}",))
    topic = cur.fetchone()[0]
    producer = topic * 1000 + 7
    cur.execute("INSERT INTO lq_producers (id, topic_id, created_us) VALUES (%s, %s, 0)",
                (producer, topic))
    conn.commit()
    state = {"t": topic, "p": producer, "s": 0, "o": 0, "b": PAYLOAD}

    def append() -> None:
        state["s"] += 1
        if one_statement:
            cur.execute(APPEND_ONE_STATEMENT, state)
        else:
            for sql, _writes in APPEND_STATEMENTS:
                cur.execute(sql, state)
            state["o"] += 1
        conn.commit()

    return append


def database_layers(db: str | None, calls: int) -> list[tuple[str, Sample]]:
    if not db or not db.startswith("postgres"):
        return []
    import psycopg2

    with closing(psycopg2.connect(db)) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE scratch (id BIGSERIAL PRIMARY KEY, body TEXT, ts_us BIGINT)")
        conn.commit()

        def run(*statements: str) -> Callable[[], None]:
            def step() -> None:
                for sql in statements:
                    cur.execute(sql, (PAYLOAD,) if "%s" in sql else None)
                conn.commit()
            return step

        insert = "INSERT INTO scratch (body, ts_us) VALUES (%s, 0)"
        notify = "SELECT pg_notify('lq_bench', '1')"
        layers = [
            Layer("PostgreSQL: SELECT 1 + COMMIT (two round trips, nothing to fsync)",
                  run("SELECT 1"), calls),
            Layer("PostgreSQL: INSERT + COMMIT (psycopg2)", run(insert), calls),
            Layer("PostgreSQL: SELECT pg_notify + COMMIT (a NOTIFY transaction alone)",
                  run(notify), calls),
            Layer("PostgreSQL: INSERT + NOTIFY + COMMIT (one transaction)",
                  run(insert, notify), calls),
            Layer("PostgreSQL: the store's 5 append statements + COMMIT (6 round trips)",
                  append_by_hand(cur, conn, False), calls),
            Layer("PostgreSQL: the same append as one statement + COMMIT (2 round trips)",
                  append_by_hand(cur, conn, True), calls),
        ]
        return run_layers(layers)


# --- path 1: one message per round trip ------------------------------------------------------
def produce_body(pid: int, seqs: itertools.count, topic: str) -> bytes:
    return json.dumps({"topic": topic, "producer_id": pid, "seq": next(seqs),
                       "message": PAYLOAD}, separators=(",", ":")).encode()


def http_client_post(url: str, nodelay: bool,
                     path: str = "/producer/produce") -> Callable[[bytes | None], None]:
    """http.client on one kept-alive connection, TCP_NODELAY as asked. (Python 3.11's
    http.client writes the headers and the body in two sends: with Nagle on, the body waits
    for the ACK of the headers, which the server delays.)"""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port))
    headers = {"Content-Type": "application/json"}

    def connect() -> None:
        conn.close()
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(nodelay))

    def post(body: bytes | None) -> None:
        for attempt in (1, 2):  # the server closes a connection idle for 5 s
            try:
                if conn.sock is None:
                    connect()
                conn.request("GET" if body is None else "POST", path, body, headers)
                response = conn.getresponse()
                data = response.read()
                break
            except (ConnectionError, http.client.HTTPException):
                conn.close()
                if attempt == 2:
                    raise
        assert response.status == (404 if body is None else 200), data

    return post


def store_statements(store, topic: str, producer_id: int,
                     seqs: itertools.count) -> Callable[[], None]:
    """The five statements of the append as the store sent them before issue 21, each through
    SQLAlchemy Core, in one transaction, without the group commit and the NOTIFY thread: the
    cost of SQLAlchemy Core per statement."""
    from sqlalchemy import text

    lock = text("SELECT next_offset FROM lq_topics WHERE id = :topic FOR UPDATE")
    seqs_of = text("SELECT id, last_seq, last_first, last_last FROM lq_producers "
                   "WHERE topic_id = :topic AND id = :id")
    insert = text("INSERT INTO lq_messages (topic_id, msg_offset, body, ts_us) "
                  "VALUES (:topic, :offset, :body, 0)")
    counter = text("UPDATE lq_topics SET next_offset = :next WHERE id = :topic")
    seq_update = text("UPDATE lq_producers SET last_seq = :seq, last_first = :offset, "
                      "last_last = :offset WHERE id = :id")
    topic_id = store.caches.topic_id(topic)

    def step() -> None:
        seq = next(seqs)
        with store.db.engine.connect() as conn, conn.begin():
            offset = conn.execute(lock, {"topic": topic_id}).scalar()
            conn.execute(seqs_of, {"topic": topic_id, "id": producer_id}).all()
            conn.execute(insert, {"topic": topic_id, "offset": offset, "body": PAYLOAD})
            conn.execute(counter, {"next": offset + 1, "topic": topic_id})
            conn.execute(seq_update, {"id": producer_id, "seq": seq, "offset": offset})

    return step


def without_notify(store) -> None:
    """The store's appends wake this process's waiters only: no NOTIFY to other processes
    (a private hook, for this measurement only)."""
    store.producers._appended = store.wakeups.notify


def in_process(url: str, db_url: str, prefix: str) -> tuple[Any, Any, Client, str]:
    """The broker's app in this process on the served broker's database (its store and a
    Flask test client), an SDK client of the served one, and a new topic."""
    from broker.app import create_app
    from broker.store import get_store

    app = create_app({"LQ_DATABASE_URL": db_url, "LQ_PRUNE_INTERVAL": 0})
    client = Client(url)
    topic = f"{prefix}-{time.time_ns()}"
    client.create_topic(topic)
    return get_store(app), app.test_client(), client, topic


def single_layers(url: str, db_url: str, calls: int, pid: int) -> list[tuple[str, Sample]]:
    from broker.app import create_app
    from broker.store import AppendRequest, get_store

    store, flask_client, client, topic = in_process(url, db_url, "measure")
    seqs = itertools.count(time.time_ns() // 1000)
    session = requests.Session()
    session.trust_env = False
    pids = [session.post(url + "/producer/register", json={"topic": topic}).json()[
        "producer_id"] for _ in range(6)]

    def post(producer_id: int, nodelay: bool) -> Callable[[], None]:
        send = http_client_post(url, nodelay)
        return lambda: send(produce_body(producer_id, seqs, topic))

    def empty_get() -> Callable[[], None]:
        get = http_client_post(url, True, "/bench-empty")
        return lambda: get(None)

    producer = client.producer([topic])
    json_headers = {"Content-Type": "application/json"}
    quiet = get_store(create_app({"LQ_DATABASE_URL": db_url, "LQ_PRUNE_INTERVAL": 0}))
    without_notify(quiet)
    layers = [
        Layer("SQLAlchemy: the store's 5 append statements + COMMIT, no group commit",
              store_statements(store, topic, pids[5], seqs), calls),
        Layer("Store.append in-process, NOTIFY thread off (group commit; no Flask, no HTTP)",
              lambda: quiet.producers.append(topic, AppendRequest(pids[5], [PAYLOAD], next(seqs))),
              calls),
        Layer("Store.append in-process (group commit; no Flask, no HTTP)",
              lambda: store.producers.append(topic, AppendRequest(pids[0], [PAYLOAD], next(seqs))),
              calls),
        Layer("Store.append in-process, no seq (4 round trips to the database, not 6)",
              lambda: store.producers.append(topic, AppendRequest(pids[0], [PAYLOAD], None)),
              calls),
        Layer("Flask test client: GET an unknown path in-process (JSON 404, no HTTP)",
              lambda: flask_client.get("/bench-empty"), calls),
        Layer("Flask test client: POST /producer/produce in-process (no HTTP)",
              lambda: flask_client.post("/producer/produce", headers=json_headers,
                                        data=produce_body(pids[1], seqs, topic)), calls),
        Layer("HTTP: GET an unknown path (JSON 404, no database), requests",
              lambda: session.get(url + "/bench-empty"), calls, pid),
        Layer("HTTP: GET an unknown path (JSON 404, no database), http.client",
              empty_get(), calls, pid),
        Layer("HTTP: POST produce, http.client, TCP_NODELAY on",
              post(pids[2], True), calls, pid),
        Layer("HTTP: POST produce, http.client, TCP_NODELAY off (Nagle)",
              post(pids[3], False), max(calls // 20, 5), pid),
        Layer("HTTP: POST produce, requests.Session (trust_env off)",
              lambda: session.post(url + "/producer/produce", headers=json_headers,
                                   data=produce_body(pids[4], seqs, topic)), calls, pid),
        Layer("SDK: Producer.send", lambda: producer.send(topic, PAYLOAD), calls, pid),
    ]
    try:
        return run_layers(layers)
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=("pg", "sqlite"), default="pg")
    parser.add_argument("--calls", type=int, default=200, help="calls per single-path round")
    parser.add_argument("--batches", type=int, default=10, help="batches per consume round")
    parser.add_argument("--extra-path", help="a directory holding orjson/msgspec to compare")
    parser.add_argument("--paths", choices=("single", "consume", "both"), default="both")
    args = parser.parse_args()
    from consume import consume_layers, raw_consume_layer, reply_costs  # it imports this module

    if args.extra_path:
        sys.path.append(args.extra_path)
    print(f"load average before: {os.getloadavg()}")
    with ExitStack() as stack:
        if args.db == "pg":
            db = stack.enter_context(pg_database())
            if db is None:
                raise SystemExit("no PostgreSQL server answered")
        else:
            tmp = stack.enter_context(tempfile.TemporaryDirectory())
            db = f"sqlite:///{tmp}/measure.db"
        url = stack.enter_context(broker(db, workers=1))
        pid = worker_pid(url)
        if args.paths != "consume":
            report(database_layers(db, args.calls) + single_layers(url, db, args.calls, pid),
                   "µs per call", f"Path 1 ({args.db}): one message per round trip")
        if args.paths != "single":
            rows = consume_layers(url, db, args.batches, pid)
            if args.db == "pg":
                rows = raw_consume_layer(db, args.batches) + rows
            report(rows, "µs per batch", f"Path 2 ({args.db}): consume 1,000 + commit")
    if args.paths != "single":
        report(reply_costs(args.batches * 5), "µs per batch", "One fetch reply of 1,000 messages")
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
