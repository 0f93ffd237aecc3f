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
import time
from collections.abc import Callable
from contextlib import ExitStack, closing
from dataclasses import dataclass
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from harness import broker, pg_database

from sdk import Client
from sdk.client import _messages as sdk_messages

ROUNDS = 3
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


def timed(fn: Callable[[], object], calls: int, pid: int | None = None) -> Sample:
    """Per call: wall, this process's CPU and the broker worker's CPU; each the median of
    ROUNDS rounds (after a few warm-up calls)."""
    for _ in range(min(calls, 20)):
        fn()
    walls, cpus, brokers = [], [], []
    for _ in range(ROUNDS):
        broker_start = process_cpu(pid) if pid else 0.0
        cpu_start, start = time.process_time(), time.perf_counter()
        for _ in range(calls):
            fn()
        walls.append((time.perf_counter() - start) / calls * 1e6)
        cpus.append((time.process_time() - cpu_start) / calls * 1e6)
        if pid:
            brokers.append((process_cpu(pid) - broker_start) / calls * 1e6)
    return Sample(statistics.median(walls), statistics.median(cpus),
                  statistics.median(brokers) if brokers else None)


def report(rows: list[tuple[str, Sample]], unit: str, title: str) -> None:
    per = 1000 if unit.endswith("batch") else 1
    print(f"\n{title}\n\n| layer | wall {unit} | msg/s | this process CPU | broker worker CPU |"
          "\n|---|---:|---:|---:|---:|")
    for name, sample in rows:
        broker_cpu = "" if sample.broker_cpu is None else f"{sample.broker_cpu:,.0f}"
        print(f"| {name} | {sample.wall:,.0f} | {1e6 * per / sample.wall:,.0f} | "
              f"{sample.cpu:,.0f} | {broker_cpu} |")


# --- the database alone ----------------------------------------------------------------------
def database_layers(db: str | None, calls: int) -> list[tuple[str, Sample]]:
    if not db or not db.startswith("postgres"):
        return []
    import psycopg2

    rows = []
    with closing(psycopg2.connect(db)) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE scratch (id BIGSERIAL PRIMARY KEY, body TEXT, ts_us BIGINT)")
        conn.commit()

        def insert() -> None:
            cur.execute("INSERT INTO scratch (body, ts_us) VALUES (%s, 0)", (PAYLOAD,))
            conn.commit()

        def notify() -> None:
            cur.execute("SELECT pg_notify('lq_bench', '1')")
            conn.commit()

        def insert_notify() -> None:
            cur.execute("INSERT INTO scratch (body, ts_us) VALUES (%s, 0)", (PAYLOAD,))
            cur.execute("SELECT pg_notify('lq_bench', '1')")
            conn.commit()

        def insert_then_notify() -> None:
            insert()
            notify()

        conn.autocommit = False
        rows.append(("PostgreSQL: INSERT + COMMIT (psycopg2)", timed(insert, calls)))
        rows.append(("PostgreSQL: SELECT pg_notify + COMMIT (a NOTIFY transaction alone)",
                     timed(notify, calls)))
        rows.append(("PostgreSQL: INSERT + COMMIT, then NOTIFY + COMMIT (two transactions)",
                     timed(insert_then_notify, calls)))
        rows.append(("PostgreSQL: INSERT + NOTIFY + COMMIT (one transaction)",
                     timed(insert_notify, calls)))
        conn.autocommit = True
        rows.append(("PostgreSQL: SELECT 1 (a round trip, no commit)",
                     timed(lambda: cur.execute("SELECT 1"), calls)))
    return rows


# --- path 1: one message per round trip ------------------------------------------------------
def produce_body(pid: int, seqs: itertools.count, topic: str) -> bytes:
    return json.dumps({"topic": topic, "producer_id": pid, "seq": next(seqs),
                       "message": PAYLOAD}, separators=(",", ":")).encode()


def http_client_post(url: str, nodelay: bool) -> Callable[[bytes], None]:
    """http.client on one kept-alive connection; TCP_NODELAY as asked (http.client leaves
    Nagle on; it sends the headers and a bytes body in one write)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port))
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(nodelay))
    headers = {"Content-Type": "application/json"}

    def post(body: bytes) -> None:
        conn.request("POST", "/producer/produce", body, headers)
        response = conn.getresponse()
        data = response.read()
        assert response.status == 200, data

    return post


def single_layers(url: str, db_url: str, calls: int, pid: int) -> list[tuple[str, Sample]]:
    from broker.app import create_app
    from broker.store import AppendRequest, get_store

    app = create_app({"LQ_DATABASE_URL": db_url, "LQ_PRUNE_INTERVAL": 0})
    store, flask_client = get_store(app), app.test_client()
    client = Client(url)
    topic = f"measure-{time.time_ns()}"
    client.create_topic(topic)
    seqs = itertools.count(time.time_ns() // 1000)
    session = requests.Session()
    session.trust_env = False

    def new_pid() -> int:
        return session.post(url + "/producer/register", json={"topic": topic}).json()[
            "producer_id"]

    pid_store, pid_flask, pid_http, pid_nagle, pid_req = (new_pid() for _ in range(5))

    def raw_post(producer_id: int, nodelay: bool) -> Callable[[], None]:
        post = http_client_post(url, nodelay)  # connected now: keep-alive lasts 5 s
        return lambda: post(produce_body(producer_id, seqs, topic))

    producer = client.producer([topic])
    rows = [
        ("Store.append in-process (group commit; no Flask, no HTTP)",
         timed(lambda: store.append(topic, AppendRequest(pid_store, [PAYLOAD], next(seqs))),
               calls)),
        ("Flask test client POST /producer/produce in-process (no HTTP)",
         timed(lambda: flask_client.post("/producer/produce",
                                         data=produce_body(pid_flask, seqs, topic),
                                         content_type="application/json"), calls)),
        ("HTTP: GET an unknown path (JSON 404, no database), requests",
         timed(lambda: session.get(url + "/bench-empty"), calls, pid)),
        ("HTTP: POST produce, http.client, TCP_NODELAY on",
         timed(raw_post(pid_http, True), calls, pid)),
        ("HTTP: POST produce, http.client, TCP_NODELAY off (Nagle)",
         timed(raw_post(pid_nagle, False), max(calls // 10, 10), pid)),
        ("HTTP: POST produce, requests.Session (trust_env off)",
         timed(lambda: session.post(url + "/producer/produce",
                                    data=produce_body(pid_req, seqs, topic),
                                    headers={"Content-Type": "application/json"}), calls, pid)),
        ("SDK: Producer.send", timed(lambda: producer.send(topic, PAYLOAD), calls, pid)),
    ]
    client.close()
    return rows


# --- path 2: consume 1,000 + commit ----------------------------------------------------------
def consume_layers(url: str, db_url: str, batches: int, pid: int) -> list[tuple[str, Sample]]:
    from broker.app import create_app
    from broker.store import get_store

    app = create_app({"LQ_DATABASE_URL": db_url, "LQ_PRUNE_INTERVAL": 0})
    store, flask_client = get_store(app), app.test_client()
    client = Client(url)
    topic = f"measure-c-{time.time_ns()}"
    client.create_topic(topic)
    producer = client.producer([topic])
    for _ in range(batches * (ROUNDS + 1) + 20):
        producer.send_many(topic, [PAYLOAD] * 1000)
    session = requests.Session()
    session.trust_env = False

    def new_cid() -> int:
        return session.post(url + "/consumer/register", json={"topic": topic}).json()[
            "consumer_id"]

    def over_http(cid: int, decode: bool) -> Callable[[], None]:
        def step() -> None:
            reply = session.get(url + "/consumer/fetch",
                                params={"topic": topic, "consumer_id": cid, "max": 1000})
            last = json.loads(reply.content)["messages"][-1]["offset"] if decode else None
            if last is None:  # not decoded: the offset is near the end of the body
                tail = reply.content[reply.content.rfind(b'"offset":') + 9:]
                last = int(tail[:tail.index(b",")])
            session.post(url + "/consumer/commit",
                         json={"topic": topic, "consumer_id": cid, "offset": last + 1})
        return step

    def in_store(cid: int) -> Callable[[], None]:
        def step() -> None:
            batch, _pos = store.fetch(topic, cid, 1000)
            store.commit(topic, cid, batch.messages[-1].offset + 1)
        return step

    def in_flask(cid: int) -> Callable[[], None]:
        def step() -> None:
            reply = flask_client.get("/consumer/fetch", query_string={
                "topic": topic, "consumer_id": cid, "max": 1000}).get_json()
            flask_client.post("/consumer/commit", json={
                "topic": topic, "consumer_id": cid,
                "offset": reply["messages"][-1]["offset"] + 1})
        return step

    consumer = client.consumer([topic])

    def sdk_step() -> None:
        batch, _pos = consumer.fetch(topic, max=1000)
        consumer.commit(topic, batch[-1].offset + 1)

    rows = [
        ("PostgreSQL/SQLite in-process: Store.fetch + Store.commit (no Flask, no HTTP)",
         timed(in_store(new_cid()), batches)),
        ("Flask test client: GET fetch + POST commit, in-process (no HTTP)",
         timed(in_flask(new_cid()), batches)),
        ("HTTP requests: GET fetch (reply not decoded) + POST commit",
         timed(over_http(new_cid(), False), batches, pid)),
        ("HTTP requests: GET fetch + json.loads + POST commit",
         timed(over_http(new_cid(), True), batches, pid)),
        ("SDK: Consumer.fetch + Consumer.commit", timed(sdk_step, batches, pid)),
    ]
    client.close()
    return rows


def raw_consume_layer(db: str, batches: int) -> list[tuple[str, Sample]]:
    """SELECT 1,000 rows of lq_messages + UPDATE an lq_consumers position + COMMIT."""
    import psycopg2

    with closing(psycopg2.connect(db)) as conn, conn.cursor() as cur:
        cur.execute("SELECT topic_id, MIN(msg_offset), MAX(msg_offset) FROM lq_messages "
                    "GROUP BY topic_id ORDER BY COUNT(*) DESC LIMIT 1")
        topic_id, low, high = cur.fetchone()
        cur.execute("SELECT id FROM lq_consumers WHERE topic_id = %s LIMIT 1", (topic_id,))
        consumer_id = cur.fetchone()[0]
        position = [low]

        def step() -> None:
            cur.execute("SELECT msg_offset, body, ts_us FROM lq_messages WHERE topic_id = %s "
                        "AND msg_offset >= %s ORDER BY msg_offset LIMIT 1000",
                        (topic_id, position[0]))
            rows = cur.fetchall()
            position[0] = rows[-1][0] + 1 if rows[-1][0] + 1000 < high else low
            cur.execute("UPDATE lq_consumers SET position = %s WHERE id = %s",
                        (position[0], consumer_id))
            conn.commit()

        return [("PostgreSQL: SELECT 1,000 rows + UPDATE position + COMMIT (psycopg2)",
                 timed(step, batches))]


def reply_costs(calls: int) -> list[tuple[str, Sample]]:
    """One fetch reply of 1,000 messages: building it on the broker, parsing it in the SDK."""
    from broker import schemas as s
    from broker.api import _messages as api_messages
    from broker.store import Message, iso_time

    stamp = time.time_ns() // 1000
    found = [Message(i, PAYLOAD, stamp) for i in range(1000)]
    items = api_messages(found)
    body = s.FetchedBatch(messages=items, position=0).model_dump_json(exclude_none=True)
    rows = [
        ("broker: iso_time x 1,000", timed(lambda: [iso_time(m.ts_us) for m in found], calls)),
        ("broker: api._messages (dicts, iso_time)", timed(lambda: api_messages(found), calls)),
        ("broker: FetchedBatch(...).model_dump_json (pydantic)",
         timed(lambda: s.FetchedBatch(messages=items, position=0).model_dump_json(
             exclude_none=True), calls)),
        ("broker: json.dumps of the same dict", timed(
            lambda: json.dumps({"status": "success", "messages": items, "position": 0}), calls)),
        ("client: json.loads of the reply", timed(lambda: json.loads(body), calls)),
        ("client: SDK Message objects (fromisoformat)",
         timed(lambda: sdk_messages("t", json.loads(body)["messages"]), calls)),
    ]
    return rows + optional_json_costs(items, body, calls)


def optional_json_costs(items: list[dict], body: str, calls: int) -> list[tuple[str, Sample]]:
    rows = []
    doc = {"status": "success", "messages": items, "position": 0}
    try:
        import orjson

        rows += [("broker: orjson.dumps", timed(lambda: orjson.dumps(doc), calls)),
                 ("client: orjson.loads", timed(lambda: orjson.loads(body), calls))]
    except ImportError:
        pass
    try:
        import msgspec

        encoder, decoder = msgspec.json.Encoder(), msgspec.json.Decoder()
        rows += [("broker: msgspec encode", timed(lambda: encoder.encode(doc), calls)),
                 ("client: msgspec decode", timed(lambda: decoder.decode(body), calls))]
    except ImportError:
        pass
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=("pg", "sqlite"), default="pg")
    parser.add_argument("--calls", type=int, default=300, help="calls per single-path layer")
    parser.add_argument("--batches", type=int, default=20, help="batches per consume layer")
    parser.add_argument("--extra-path", help="a directory holding orjson/msgspec to compare")
    args = parser.parse_args()
    if args.extra_path:
        sys.path.append(args.extra_path)
    with ExitStack() as stack:
        if args.db == "pg":
            db = stack.enter_context(pg_database())
            if db is None:
                raise SystemExit("no PostgreSQL server answered")
        else:
            tmp = stack.enter_context(__import__("tempfile").TemporaryDirectory())
            db = f"sqlite:///{tmp}/measure.db"
        url = stack.enter_context(broker(db, workers=1))
        pid = worker_pid(url)
        report(database_layers(db, args.calls) + single_layers(url, db, args.calls, pid),
               "µs per call", f"Path 1 ({args.db}): one message per round trip")
        rows = consume_layers(url, db, args.batches, pid)
        if args.db == "pg":
            rows = raw_consume_layer(db, args.batches) + rows
        report(rows, "µs per batch", f"Path 2 ({args.db}): consume 1,000 + commit")
    report(reply_costs(args.batches), "µs per batch", "One fetch reply of 1,000 messages")


if __name__ == "__main__":
    main()
