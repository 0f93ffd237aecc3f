"""Broker throughput on SQLite and PostgreSQL, each row beside a ceiling measured in the same run.

    python bench/bench_broker.py                 # both databases, 1/4/16 clients (~3 minutes)
    python bench/bench_broker.py --db sqlite --clients 1,4 --scale 0.3

Rows: produce one message per request and in batches of 100 and 1,000; consume one per
request and batched (max=1000). Ceilings, measured here and now: multi-row INSERT and COPY of
the same messages straight into the same database from one connection, a raw SELECT of the
same rows, the same server's empty-request rate (a request that reaches the app and touches no
database: an unknown path, answered with the JSON 404) at the same concurrency, and Redis
Streams XADD pipelined as a peer. Clients are separate processes (no shared GIL with each
other); everything shares this machine's cores with the broker.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import secrets
import sqlite3
import tempfile
import time

import requests
from harness import broker, pg_database

BODY = "x" * 100  # a 100-byte log line


# --- the broker ----------------------------------------------------------------------------
# --- client processes ----------------------------------------------------------------------
def _client(args: tuple) -> tuple[int, float]:
    """One client process: `requests` calls of one kind; returns (messages, seconds)."""
    url, op, topic, ident, calls, batch = args
    session = requests.Session()
    if op == "empty":
        send = lambda: session.get(url + "/bench-empty")  # noqa: E731
    elif op == "produce":
        body = {"topic": topic, "producer_id": ident}
        body.update({"message": BODY} if batch == 1 else {"messages": [BODY] * batch})
        send = lambda: session.post(url + "/producer/produce", json=body)  # noqa: E731
    else:
        params = {"topic": topic, "consumer_id": ident}
        if batch > 1:
            params["max"] = batch
        send = lambda: session.get(url + "/consumer/consume", params=params)  # noqa: E731
    send()  # warm the connection
    moved = 0
    start = time.perf_counter()
    for _ in range(calls):
        response = send()
        if op == "consume":
            data = response.json()
            moved += len(data["messages"]) if batch > 1 else int(data["status"] == "success")
        elif op == "produce":
            assert response.status_code == 200, response.text
            moved += batch
        else:
            moved += 1
    return moved, time.perf_counter() - start


def run_clients(pool: mp.pool.Pool, jobs: list[tuple]) -> float:
    results = pool.map(_client, jobs)
    moved = sum(m for m, _ in results)
    return moved / max(s for _, s in results)


def register(url: str, path: str, topic: str, key: str) -> int:
    return requests.post(url + path, json={"topic": topic}).json()[key]


# --- ceilings straight into the database ---------------------------------------------------
def raw_insert_rate(db_url: str, rows: int, copy: bool = False) -> float:
    data = [(1, i, BODY, 0) for i in range(rows)]
    if db_url.startswith("sqlite"):
        path = tempfile.mktemp(suffix=".db")
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE t (topic_id INT, msg_offset INT, body TEXT, ts_us INT, "
                     "PRIMARY KEY (topic_id, msg_offset))")
        start = time.perf_counter()
        for i in range(0, rows, 1000):
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO t VALUES (?, ?, ?, ?)", data[i:i + 1000])
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - start
        conn.close()
        os.unlink(path)
        return rows / elapsed
    import io

    import psycopg2
    from psycopg2.extras import execute_values

    conn = psycopg2.connect(db_url.replace("+psycopg2", ""))
    cur = conn.cursor()
    # A regular (WAL-logged) table: a TEMP table skips the WAL and would make the ceiling
    # one with less durability than the broker's appends.
    table = f"lq_bench_ceiling_{os.getpid()}"
    cur.execute(f"CREATE TABLE {table} (topic_id BIGINT, msg_offset BIGINT, body TEXT, "
                "ts_us BIGINT, PRIMARY KEY (topic_id, msg_offset))")
    conn.commit()
    start = time.perf_counter()
    for i in range(0, rows, 1000):
        chunk = data[i:i + 1000]
        if copy:
            buffer = io.StringIO("".join(f"{a}\t{b}\t{c}\t{d}\n" for a, b, c, d in chunk))
            cur.copy_expert(f"COPY {table} FROM STDIN", buffer)
        else:
            execute_values(cur, f"INSERT INTO {table} VALUES %s", chunk, page_size=1000)
        conn.commit()
    elapsed = time.perf_counter() - start
    cur.execute(f"DROP TABLE {table}")
    conn.commit()
    conn.close()
    return rows / elapsed


def raw_select_rate(db_url: str, topic: str) -> float:
    """SELECT the topic's rows 1,000 at a time by offset range, as a consume reads them."""
    if db_url.startswith("sqlite"):
        conn = sqlite3.connect(db_url.removeprefix("sqlite:///"))
        q = ("SELECT msg_offset, body, ts_us FROM lq_messages WHERE topic_id = ? "
             "AND msg_offset >= ? ORDER BY msg_offset LIMIT 1000")
    else:
        import psycopg2

        conn = psycopg2.connect(db_url.replace("+psycopg2", ""))
        q = ("SELECT msg_offset, body, ts_us FROM lq_messages WHERE topic_id = %s "
             "AND msg_offset >= %s ORDER BY msg_offset LIMIT 1000")
    cur = conn.cursor()
    cur.execute("SELECT id FROM lq_topics WHERE name = " + ("?" if "sqlite" in db_url else "%s"),
                (topic,))
    topic_id = cur.fetchone()[0]
    total, offset = 0, 0
    start = time.perf_counter()
    while True:
        cur.execute(q, (topic_id, offset))
        rows = cur.fetchall()
        if not rows:
            break
        total += len(rows)
        offset = rows[-1][0] + 1
        conn.commit()
    elapsed = time.perf_counter() - start
    conn.close()
    return total / elapsed


def redis_xadd_rate(rows: int) -> float | None:
    try:
        import redis
    except ImportError:
        return None
    try:
        client = redis.Redis(host="127.0.0.1", port=6379)
        client.ping()
    except Exception:  # noqa: BLE001 - the peer is optional
        return None
    key = f"lq-bench-{secrets.token_hex(4)}"
    start = time.perf_counter()
    for i in range(0, rows, 1000):
        pipe = client.pipeline(transaction=False)
        for _ in range(min(1000, rows - i)):
            pipe.xadd(key, {"m": BODY})
        pipe.execute()
    elapsed = time.perf_counter() - start
    client.delete(key)
    return rows / elapsed


# --- the table -----------------------------------------------------------------------------
def bench_database(name: str, db_url: str, clients_list: list[int], scale: float,
                   rows: list[tuple]) -> None:
    workers = 1 if name == "sqlite" else 2
    with broker(db_url, workers=workers) as url:
        n_insert = int(100_000 * scale)
        insert = raw_insert_rate(db_url, n_insert)
        copy = raw_insert_rate(db_url, n_insert, copy=True) if name == "postgresql" else None
        for clients in clients_list:
            with mp.Pool(clients) as pool:
                empty = run_clients(pool, [(url, "empty", "", 0, int(1500 * scale), 1)] * clients)
                topic = f"bench-{clients}-{secrets.token_hex(3)}"
                pid = register(url, "/producer/register", topic, "producer_id")
                calls1 = max(20, int(1500 * scale))
                rate1 = run_clients(pool, [(url, "produce", topic, pid, calls1, 1)] * clients)
                rows.append((name, clients, "produce 1/request", rate1,
                             "empty request", empty))
                for batch in (100, 1000):
                    calls = max(2, int(100_000 * scale / batch / clients))
                    rate = run_clients(pool, [(url, "produce", topic, pid, calls, batch)] * clients)
                    rows.append((name, clients, f"produce {batch}/request", rate,
                                 "multi-row INSERT", insert))
                    if copy:
                        rows.append((name, clients, f"produce {batch}/request", rate,
                                     "COPY", copy))
                total = requests.get(url + "/stats").json()
                count = next(t["messages"] for t in total["topics"] if t["topic"] == topic)
                ids = [register(url, "/consumer/register", topic, "consumer_id")
                       for _ in range(clients)]
                one = max(20, int(1500 * scale))
                rate_c1 = run_clients(pool, [(url, "consume", topic, i, one, 1) for i in ids])
                rows.append((name, clients, "consume 1/request", rate_c1, "empty request", empty))
                select = raw_select_rate(db_url, topic)
                calls = max(2, count // 1000)
                rate_cb = run_clients(pool, [(url, "consume", topic, i, calls, 1000)
                                             for i in ids])
                rows.append((name, clients, "consume 1000/request", rate_cb,
                             "raw SELECT", select))


def consume_at_depth(name: str, db_url: str, depth: int, rows: list[tuple]) -> None:
    """Consume time at position 0 and at position `depth` of one topic (issue 18: a consume
    must read from its position, not from the topic's start). One client, 100 per request."""
    with broker(db_url, workers=1) as url:
        session = requests.Session()
        topic = f"depth-{secrets.token_hex(3)}"
        pid = register(url, "/producer/register", topic, "producer_id")
        for _ in range(0, depth + 20_000, 10_000):
            response = session.post(url + "/producer/produce", json={
                "topic": topic, "producer_id": pid, "messages": [BODY] * 10_000})
            assert response.status_code == 200, response.text
        for position in (0, depth):
            cid = register(url, "/consumer/register", topic, "consumer_id")
            session.post(url + "/consumer/commit",
                         json={"topic": topic, "consumer_id": cid, "offset": position})
            params = {"topic": topic, "consumer_id": cid, "max": 100}
            session.get(url + "/consumer/consume", params=params)  # warm
            calls = 100
            start = time.perf_counter()
            for _ in range(calls):
                assert len(session.get(url + "/consumer/consume", params=params)
                           .json()["messages"]) == 100
            ms = (time.perf_counter() - start) / calls * 1000
            rows.append((name, f"consume 100 at position {position:,}", ms))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--clients", default="1,4,16", help="comma-separated client counts")
    parser.add_argument("--scale", type=float, default=1.0, help="work per row (1.0 = full)")
    parser.add_argument("--depth", type=int, default=0,
                        help="instead: consume time at position 0 and at this position")
    args = parser.parse_args()
    if args.depth:
        main_depth(args.db, args.depth)
        return
    clients = [int(c) for c in args.clients.split(",")]
    rows: list[tuple] = []
    temp = tempfile.mkdtemp()
    if args.db in ("sqlite", "both"):
        bench_database("sqlite", f"sqlite:///{temp}/bench.db", clients, args.scale, rows)
    if args.db in ("postgresql", "both"):
        with pg_database() as pg_url:
            if pg_url is None:
                raise SystemExit("PostgreSQL did not answer (LQ_BENCH_PG_DSN); try --db sqlite")
            bench_database("postgresql", pg_url, clients, args.scale, rows)
    xadd = redis_xadd_rate(int(100_000 * args.scale))

    print(f"\n{'db':<11}{'clients':>8}  {'operation':<22}{'msg/s':>10}  "
          f"{'ceiling (same run)':<20}{'msg/s':>10}{'ratio':>8}")
    for db, n, op, rate, ceiling, ceiling_rate in rows:
        print(f"{db:<11}{n:>8}  {op:<22}{rate:>10,.0f}  {ceiling:<20}{ceiling_rate:>10,.0f}"
              f"{rate / ceiling_rate:>8.0%}")
    if xadd:
        print(f"\npeer: Redis Streams XADD, pipelined 1,000 per round trip: {xadd:,.0f} msg/s")


def main_depth(db: str, depth: int) -> None:
    rows: list[tuple] = []
    if db in ("sqlite", "both"):
        consume_at_depth("sqlite", f"sqlite:///{tempfile.mkdtemp()}/depth.db", depth, rows)
    if db in ("postgresql", "both"):
        with pg_database() as pg_url:
            if pg_url is None:
                raise SystemExit("PostgreSQL did not answer (LQ_BENCH_PG_DSN); try --db sqlite")
            consume_at_depth("postgresql", pg_url, depth, rows)
    print(f"\n{'db':<11}  {'operation':<36}{'ms/request':>11}")
    for name, op, ms in rows:
        print(f"{name:<11}  {op:<36}{ms:>11.2f}")


if __name__ == "__main__":
    main()
