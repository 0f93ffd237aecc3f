"""LogQueue next to the brokers a Python user would pick instead, and next to PostgreSQL itself.

    python bench/bench_peers.py                  # the full table, median of 3 (a few minutes)
    python bench/bench_peers.py --scale 0.2      # a quick look (under a minute)
    python bench/bench_peers.py --columns lq-pg,raw-pg --runs 5

One payload everywhere: a 300-byte JSON log record. Each peer goes through its official Python
client and is configured as durably as it can be here; where it is not durable, its column
says so:

- LogQueue on PostgreSQL and on SQLite, through the SDK (``sdk.Client``) as a user would call
  it; a success reply means committed (``synchronous_commit`` on, SQLite ``synchronous=FULL``).
- NATS JetStream (``nats-py``, 127.0.0.1:4222): a file-backed stream; the server acknowledges
  a publish before it fsyncs (``sync_interval``), so an acknowledged message can be lost.
- RabbitMQ (``pika``, 127.0.0.1:5672 guest/guest): a durable queue, persistent messages,
  publisher confirms (a confirm is sent once the message is on disk).
- Redis Streams (``redis``, 127.0.0.1:6379): in memory unless the server has an AOF; the
  column reads the server's settings and says which.
- Raw PostgreSQL (psycopg2) on a table shaped like LogQueue's: INSERT + COMMIT per message,
  one multi-row INSERT of 1,000, SELECT of 1,000 rows + the position UPDATE. The ceiling.

Rows: one message per round trip (1 client); batches of 1,000 (1 client); batches of 1,000
from 4 client processes to one target; consume batches of 1,000 and commit/ack each batch.
Every cell is the median of ``--runs`` runs on a fresh target; the runs interleave the peers so
all see the same machine load. A peer that cannot be reached is shown as "n/a (reason)".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import secrets
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from harness import broker, pg_database

from sdk import Client

PAYLOAD_BYTES = 300
BATCH = 1000
CLIENTS = 4
#: Messages per case at --scale 1.
SIZES = {"each": 1000, "batches": 20_000, "batches4": 40_000, "consume": 20_000}


def log_records(n: int) -> list[str]:
    """``n`` distinct JSON log records of exactly PAYLOAD_BYTES bytes each."""
    records = []
    for i in range(n):
        record = {"ts": "2026-01-01T12:00:00.000000+00:00", "level": "INFO",
                  "logger": "shop.orders", "host": "web-3", "pid": 4242, "seq": i,
                  "message": f"order {i} created for customer {i * 7919 % 100_000}", "pad": ""}
        text = json.dumps(record, separators=(",", ":"))
        record["pad"] = "x" * (PAYLOAD_BYTES - len(text))
        records.append(json.dumps(record, separators=(",", ":")))
    return records


def chunks(items: list[str], size: int = BATCH) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


# --- the peers: one connection to one target -----------------------------------------------
class Peer:
    """One client of one system, bound to one target (topic, stream, queue or table).

    ``create``/``drop`` make and remove a fresh target; ``check`` raises when the system is
    unreachable and returns what the column's label should add (e.g. "not durable")."""

    def __init__(self, conf: dict[str, Any], target: str, client_no: int = 0) -> None:
        self.conf, self.target, self.client_no = conf, target, client_no

    @classmethod
    def check(cls, conf: dict[str, Any]) -> str:
        return ""

    @classmethod
    def create(cls, conf: dict[str, Any]) -> str:
        raise NotImplementedError

    @classmethod
    def drop(cls, conf: dict[str, Any], target: str) -> None:
        """Remove the target (systems the benchmark did not start keep nothing of it)."""

    def send_each(self, messages: list[str]) -> None:
        raise NotImplementedError

    def send_batches(self, messages: list[str]) -> None:
        raise NotImplementedError

    def consume(self, n: int) -> int:
        """Read ``n`` messages in batches of BATCH, committing/acking each batch."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class LogQueue(Peer):
    """Through the SDK, as a user would: one Client, its producer and consumer."""

    def __init__(self, conf: dict[str, Any], target: str, client_no: int = 0) -> None:
        super().__init__(conf, target, client_no)
        self.client = Client(conf["url"])
        self.producer = self.client.producer([target])

    @classmethod
    def check(cls, conf: dict[str, Any]) -> str:
        with Client(conf["url"], retries=0) as client:
            if not client.healthy():
                raise RuntimeError("the broker is not healthy")
        return ""

    @classmethod
    def create(cls, conf: dict[str, Any]) -> str:
        topic = f"bench-{secrets.token_hex(4)}"
        with Client(conf["url"]) as client:
            client.create_topic(topic)
        return topic

    def send_each(self, messages: list[str]) -> None:
        for message in messages:
            self.producer.send(self.target, message)

    def send_batches(self, messages: list[str]) -> None:
        for chunk in chunks(messages):
            self.producer.send_many(self.target, chunk)

    def consume(self, n: int) -> int:
        consumer = self.client.consumer([self.target])
        got = 0
        while got < n:
            batch, _position = consumer.fetch(self.target, max=BATCH)
            if not batch:
                raise RuntimeError(f"the topic ran dry after {got} of {n} messages")
            consumer.commit(self.target, batch[-1].offset + 1)
            got += len(batch)
        return got

    def close(self) -> None:
        self.client.close()


class RawPostgres(Peer):
    """psycopg2 straight into a table shaped like LogQueue's ``lq_messages``."""

    def __init__(self, conf: dict[str, Any], target: str, client_no: int = 0) -> None:
        super().__init__(conf, target, client_no)
        import psycopg2

        self.conn = psycopg2.connect(conf["dsn"])
        self.next_offset = client_no * 10**9  # each client writes its own offset range

    @classmethod
    def check(cls, conf: dict[str, Any]) -> str:
        if not conf.get("dsn"):
            raise RuntimeError("no PostgreSQL server answered")
        return ""

    @classmethod
    def create(cls, conf: dict[str, Any]) -> str:
        import psycopg2

        table = f"raw_{secrets.token_hex(4)}"
        with contextlib.closing(psycopg2.connect(conf["dsn"])) as conn, conn.cursor() as cur:
            cur.execute(f"CREATE TABLE {table} (topic_id BIGINT, msg_offset BIGINT, body TEXT "
                        "NOT NULL, ts_us BIGINT NOT NULL, PRIMARY KEY (topic_id, msg_offset))")
            cur.execute(f"CREATE TABLE {table}_pos (id INT PRIMARY KEY, position BIGINT)")
            cur.execute(f"INSERT INTO {table}_pos VALUES (1, 0)")
            conn.commit()
        return table

    @classmethod
    def drop(cls, conf: dict[str, Any], target: str) -> None:
        import psycopg2

        with contextlib.closing(psycopg2.connect(conf["dsn"])) as conn, conn.cursor() as cur:
            cur.execute(f"DROP TABLE {target}, {target}_pos")
            conn.commit()

    def _rows(self, messages: list[str]) -> list[tuple]:
        now = time.time_ns() // 1000
        start, self.next_offset = self.next_offset, self.next_offset + len(messages)
        return [(1, start + i, m, now) for i, m in enumerate(messages)]

    def send_each(self, messages: list[str]) -> None:
        sql = f"INSERT INTO {self.target} VALUES (%s, %s, %s, %s)"
        with self.conn.cursor() as cur:
            for message in messages:
                cur.execute(sql, self._rows([message])[0])
                self.conn.commit()

    def send_batches(self, messages: list[str]) -> None:
        from psycopg2.extras import execute_values

        sql = f"INSERT INTO {self.target} VALUES %s"
        with self.conn.cursor() as cur:
            for chunk in chunks(messages):
                execute_values(cur, sql, self._rows(chunk), page_size=BATCH)
                self.conn.commit()

    def consume(self, n: int) -> int:
        select = (f"SELECT msg_offset, body, ts_us FROM {self.target} WHERE topic_id = 1 "
                  f"AND msg_offset >= %s ORDER BY msg_offset LIMIT {BATCH}")
        update = f"UPDATE {self.target}_pos SET position = %s WHERE id = 1"
        got, position = 0, 0
        with self.conn.cursor() as cur:
            while got < n:
                cur.execute(select, (position,))
                rows = cur.fetchall()
                if not rows:
                    raise RuntimeError(f"the table ran dry after {got} of {n} rows")
                position = rows[-1][0] + 1
                cur.execute(update, (position,))
                self.conn.commit()
                got += len(rows)
        return got

    def close(self) -> None:
        self.conn.close()


class Nats(Peer):
    """nats-py on a file-backed JetStream stream; the client's asyncio loop is run here."""

    def __init__(self, conf: dict[str, Any], target: str, client_no: int = 0) -> None:
        super().__init__(conf, target, client_no)
        self.loop = asyncio.new_event_loop()
        self.nc = self.loop.run_until_complete(self._connect(conf))
        self.js = self.nc.jetstream()
        self.subject = f"{target}.logs"

    @staticmethod
    async def _connect(conf: dict[str, Any]):
        import nats

        async def quiet(_error: Exception) -> None:
            """connect() raises what matters; the default callback prints every retry."""

        # max_reconnect_attempts=0 would retry the first connect forever (nats-py counts only
        # from 1), so: one retry, soon, then NoServersError.
        return await nats.connect(conf["url"], connect_timeout=2, max_reconnect_attempts=1,
                                  reconnect_time_wait=0.2, allow_reconnect=False,
                                  error_cb=quiet)

    @classmethod
    def _admin(cls, conf: dict[str, Any], action: Callable[[Any], Any]) -> Any:
        async def run() -> Any:
            nc = await cls._connect(conf)
            try:
                return await action(nc.jetstream())
            finally:
                await nc.close()

        return asyncio.run(run())

    @classmethod
    def check(cls, conf: dict[str, Any]) -> str:
        cls._admin(conf, lambda js: js.account_info())
        return "acks before fsync"

    @classmethod
    def create(cls, conf: dict[str, Any]) -> str:
        from nats.js.api import StorageType

        name = f"lqbench_{secrets.token_hex(4)}"
        cls._admin(conf, lambda js: js.add_stream(name=name, subjects=[f"{name}.logs"],
                                                  storage=StorageType.FILE))
        return name

    @classmethod
    def drop(cls, conf: dict[str, Any], target: str) -> None:
        cls._admin(conf, lambda js: js.delete_stream(target))

    def send_each(self, messages: list[str]) -> None:
        async def run() -> None:
            for message in messages:
                await self.js.publish(self.subject, message.encode())

        self.loop.run_until_complete(run())

    def send_batches(self, messages: list[str]) -> None:
        async def run() -> None:
            for chunk in chunks(messages):
                acks = [await self.js.publish_async(self.subject, m.encode()) for m in chunk]
                await asyncio.gather(*acks)  # raises if any publish failed

        self.loop.run_until_complete(run())

    def consume(self, n: int) -> int:
        from nats.js.api import AckPolicy, ConsumerConfig

        async def run() -> int:
            config = ConsumerConfig(ack_policy=AckPolicy.ALL, max_ack_pending=2 * BATCH)
            sub = await self.js.pull_subscribe(self.subject, durable="bench", config=config)
            got = 0
            while got < n:
                batch = await sub.fetch(min(BATCH, n - got), timeout=5)
                await batch[-1].ack_sync()  # acks the whole batch (AckPolicy.ALL)
                got += len(batch)
            return got

        return self.loop.run_until_complete(run())

    def close(self) -> None:
        self.loop.run_until_complete(self.nc.close())
        self.loop.close()


class Rabbit(Peer):
    """pika on a durable queue, persistent messages, publisher confirms."""

    def __init__(self, conf: dict[str, Any], target: str, client_no: int = 0) -> None:
        import pika

        super().__init__(conf, target, client_no)
        self.conn = pika.BlockingConnection(pika.URLParameters(conf["url"]))
        self.channel = self.conn.channel()
        self.channel.confirm_delivery()  # basic_publish now waits for the broker's confirm
        self.props = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
        self.confirmed = 0
        self.published = 0
        self.batch_channel: Any = None

    @classmethod
    def check(cls, conf: dict[str, Any]) -> str:
        import pika

        pika.BlockingConnection(pika.URLParameters(conf["url"])).close()
        return ""

    @classmethod
    def create(cls, conf: dict[str, Any]) -> str:
        import pika

        name = f"lqbench-{secrets.token_hex(4)}"
        with contextlib.closing(pika.BlockingConnection(pika.URLParameters(conf["url"]))) as c:
            c.channel().queue_declare(name, durable=True)
        return name

    @classmethod
    def drop(cls, conf: dict[str, Any], target: str) -> None:
        import pika

        with contextlib.closing(pika.BlockingConnection(pika.URLParameters(conf["url"]))) as c:
            c.channel().queue_delete(target)

    def send_each(self, messages: list[str]) -> None:
        for message in messages:
            self.channel.basic_publish("", self.target, message, self.props)

    def _on_confirm(self, frame: Any) -> None:
        import pika

        if isinstance(frame.method, pika.spec.Basic.Nack):
            raise RuntimeError(f"RabbitMQ refused message {frame.method.delivery_tag}")
        # One queue confirms in order, so an ack of tag N confirms everything up to N.
        self.confirmed = max(self.confirmed, frame.method.delivery_tag)
        if self.confirmed >= self.published:  # wake process_data_events: the batch is in
            self.conn.add_callback_threadsafe(lambda: None)

    def send_batches(self, messages: list[str]) -> None:
        """Confirms in flight for a whole batch. pika's BlockingChannel waits for each confirm
        in turn, so the batch goes out on its underlying asynchronous channel, as pika's
        asynchronous publisher example does; the last confirm wakes the connection's loop."""
        if self.batch_channel is None:
            self.batch_channel = self.conn.channel()._impl
            self.batch_channel.confirm_delivery(self._on_confirm)
        for chunk in chunks(messages):
            for message in chunk:
                self.batch_channel.basic_publish("", self.target, message, self.props)
            self.published += len(chunk)
            while self.confirmed < self.published:
                self.conn.process_data_events(time_limit=30)

    def consume(self, n: int) -> int:
        channel = self.conn.channel()
        channel.basic_qos(prefetch_count=BATCH)
        got = in_batch = 0
        for method, _props, _body in channel.consume(self.target, inactivity_timeout=5):
            if method is None:
                raise RuntimeError(f"the queue ran dry after {got} of {n} messages")
            got += 1
            in_batch += 1
            if in_batch == BATCH or got == n:
                channel.basic_ack(method.delivery_tag, multiple=True)
                in_batch = 0
            if got == n:
                break
        channel.cancel()
        return got

    def close(self) -> None:
        self.conn.close()


class RedisStreams(Peer):
    """redis-py: XADD, a pipeline of XADDs, XREADGROUP + XACK."""

    def __init__(self, conf: dict[str, Any], target: str, client_no: int = 0) -> None:
        import redis

        super().__init__(conf, target, client_no)
        self.r = redis.Redis.from_url(conf["url"], socket_connect_timeout=2)

    @classmethod
    def check(cls, conf: dict[str, Any]) -> str:
        import redis

        with redis.Redis.from_url(conf["url"], socket_connect_timeout=2) as r:
            aof = r.config_get("appendonly").get("appendonly")
            fsync = r.config_get("appendfsync").get("appendfsync")
            save = r.config_get("save").get("save")
        if aof == "yes":
            return "" if fsync == "always" else f"AOF fsync {fsync}"
        return "not durable" if not save else "snapshots only"

    @classmethod
    def create(cls, conf: dict[str, Any]) -> str:
        import redis

        key = f"lqbench:{secrets.token_hex(4)}"
        with redis.Redis.from_url(conf["url"]) as r:
            r.xgroup_create(key, "bench", id="0", mkstream=True)
        return key

    @classmethod
    def drop(cls, conf: dict[str, Any], target: str) -> None:
        import redis

        with redis.Redis.from_url(conf["url"]) as r:
            r.delete(target)

    def send_each(self, messages: list[str]) -> None:
        for message in messages:
            self.r.xadd(self.target, {"m": message})

    def send_batches(self, messages: list[str]) -> None:
        for chunk in chunks(messages):
            pipe = self.r.pipeline(transaction=False)
            for message in chunk:
                pipe.xadd(self.target, {"m": message})
            pipe.execute()

    def consume(self, n: int) -> int:
        got = 0
        while got < n:
            reply = self.r.xreadgroup("bench", "c1", {self.target: ">"}, count=BATCH)
            if not reply:
                raise RuntimeError(f"the stream ran dry after {got} of {n} messages")
            entries = reply[0][1]
            self.r.xack(self.target, "bench", *(entry_id for entry_id, _ in entries))
            got += len(entries)
        return got

    def close(self) -> None:
        self.r.close()


# --- measuring -----------------------------------------------------------------------------
@dataclass
class Column:
    key: str
    title: str
    short: str  # in the ratio table's headings
    peer: type[Peer]
    conf: dict[str, Any] = field(default_factory=dict)
    unavailable: str = ""  # the reason, when the peer cannot be measured


@dataclass(frozen=True)
class Case:
    title: str
    op: str  # "each", "batches" or "consume"
    clients: int
    size: str  # the key in SIZES


CASES = (Case("one message per round trip, 1 client", "each", 1, "each"),
         Case("batches of 1,000, 1 client", "batches", 1, "batches"),
         Case("batches of 1,000, 4 clients, one target", "batches", CLIENTS, "batches4"),
         Case("consume batches of 1,000 + commit/ack", "consume", 1, "consume"))


def _run_op(peer: Peer, op: str, messages: list[str]) -> None:
    if op == "each":
        peer.send_each(messages)
    elif op == "batches":
        peer.send_batches(messages)
    else:
        peer.consume(len(messages))


def _client_process(column: Column, target: str, client_no: int, op: str,
                    messages: list[str], barrier: Any, results: Any) -> None:
    """One of several client processes: connect, start with the others, report its times."""
    peer = column.peer(column.conf, target, client_no)
    try:
        barrier.wait(60)
        start = time.perf_counter()  # CLOCK_MONOTONIC: comparable between processes
        _run_op(peer, op, messages)
        results.put((start, time.perf_counter()))
    finally:
        peer.close()


def _timed_clients(column: Column, target: str, case: Case, messages: list[str]) -> float:
    ctx = mp.get_context("fork")
    barrier, results = ctx.Barrier(case.clients), ctx.Queue()
    share = len(messages) // case.clients
    procs = [ctx.Process(target=_client_process,
                         args=(column, target, i, case.op, messages[i * share:(i + 1) * share],
                               barrier, results))
             for i in range(case.clients)]
    for proc in procs:
        proc.start()
    times = []
    try:
        for _ in procs:
            times.append(results.get(timeout=600))
    finally:
        for proc in procs:
            proc.join(10)
    if any(proc.exitcode for proc in procs):
        raise RuntimeError("a client process failed")
    return share * case.clients / (max(t[1] for t in times) - min(t[0] for t in times))


def measure(column: Column, case: Case, messages: list[str]) -> float:
    """msg/s of one case on a fresh target."""
    target = column.peer.create(column.conf)
    try:
        if case.clients > 1:
            return _timed_clients(column, target, case, messages)
        peer = column.peer(column.conf, target)
        try:
            if case.op == "consume":
                peer.send_batches(messages)  # fill the target first, untimed
            start = time.perf_counter()
            _run_op(peer, case.op, messages)
            return len(messages) / (time.perf_counter() - start)
        finally:
            peer.close()
    finally:
        column.peer.drop(column.conf, target)


def message_counts(scale: float) -> dict[str, int]:
    """Messages per case: whole batches, at least two per client."""
    counts = {key: max(round(n * scale / BATCH), 2 * (CLIENTS if key == "batches4" else 1))
              * BATCH for key, n in SIZES.items()}
    counts["each"] = max(round(SIZES["each"] * scale), 50)
    return counts


def run_all(columns: list[Column], runs: int, scale: float,
            cases: tuple[Case, ...] = CASES) -> dict[tuple[str, str], list]:
    """Every (case, column) ``runs`` times, interleaved; a failed run keeps its error."""
    counts = message_counts(scale)
    messages = log_records(max(counts.values()))
    cells: dict[tuple[str, str], list] = {}
    for run in range(runs):
        for case in cases:
            for column in (c for c in columns if not c.unavailable):
                try:
                    result: float | str = measure(column, case, messages[:counts[case.size]])
                    shown = f"{result:>10,.0f} msg/s"
                except Exception as exc:  # noqa: BLE001 - a failing peer is shown, not fatal
                    result = shown = f"n/a ({reason(exc)})"
                cells.setdefault((case.title, column.key), []).append(result)
                print(f"run {run + 1}/{runs}  {case.title:<42} {column.title:<30} {shown}",
                      file=sys.stderr, flush=True)
    return cells


# --- the table -----------------------------------------------------------------------------
def median(cells: dict[tuple[str, str], list], case: Case, column: Column) -> float | str:
    if column.unavailable:
        return f"n/a ({column.unavailable})"
    values = cells.get((case.title, column.key), ["n/a (not run)"])
    rates = [v for v in values if not isinstance(v, str)]
    return statistics.median(rates) if rates else values[0]


RAW_NOTES = {"each": " (INSERT+COMMIT)", "batches": " (multi-row INSERT)",
             "consume": " (SELECT + position UPDATE)"}


NOTES = {
    "lq-pg": "through sdk.Client; a reply means committed (synchronous_commit on).",
    "lq-sqlite": "through sdk.Client; a reply means committed (synchronous=FULL).",
    "nats": "file storage, but the server acknowledges before fsync (sync_interval).",
    "rabbitmq": "durable queue, persistent messages, a confirm per message (batches: 1,000 "
                "confirms in flight); consume: prefetch 1,000, one multiple-ack per batch.",
    "redis": "XADD / pipelined XADD / XREADGROUP + XACK; durability as the server's "
             "appendonly/appendfsync/save settings say (in the column's title).",
    "raw-pg": "psycopg2 on a table shaped like lq_messages, one connection per client, "
              "synchronous_commit on.",
}


def print_tables(columns: list[Column], cells: dict, runs: int,
                 cases: tuple[Case, ...] = CASES) -> None:
    print(f"\nmsg/s, median of {runs}; payload {PAYLOAD_BYTES}-byte JSON log records\n")
    print("| case | " + " | ".join(c.title for c in columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for case in cases:
        row = []
        for column in columns:
            value = median(cells, case, column)
            text = value if isinstance(value, str) else f"{value:,.0f}"
            if column.key == "raw-pg" and case.clients == 1 and not isinstance(value, str):
                text += RAW_NOTES[case.op]
            row.append(text)
        print(f"| {case.title} | " + " | ".join(row) + " |")
    print()
    for column in columns:
        if column.key in NOTES and not column.unavailable:
            print(f"- {column.title}: {NOTES[column.key]}")
    print_ratios(columns, cells, cases)


def print_ratios(columns: list[Column], cells: dict, cases: tuple[Case, ...] = CASES) -> None:
    ours = [c for c in columns if c.peer is LogQueue]
    others = [c for c in columns if c.peer is not LogQueue]
    if not ours or not others:
        return
    heads = [f"{o.short} / {p.short}" for o in ours for p in others]
    print("\nRatios (same run): LogQueue's rate divided by the other's\n")
    print("| case | " + " | ".join(heads) + " |")
    print("|---|" + "---:|" * len(heads))
    for case in cases:
        row = []
        for o in ours:
            for p in others:
                a, b = median(cells, case, o), median(cells, case, p)
                row.append("n/a" if isinstance(a, str) or isinstance(b, str) else f"{a / b:.2f}")
        print(f"| {case.title} | " + " | ".join(row) + " |")


def reason(exc: BaseException) -> str:
    """The exception in a table cell: its type, and its message when it has one."""
    message = str(exc).strip()[:60]
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


# --- main ----------------------------------------------------------------------------------
def check_columns(columns: list[Column]) -> None:
    for column in columns:
        if column.unavailable:
            continue
        try:
            note = column.peer.check(column.conf)
        except Exception as exc:  # noqa: BLE001 - an unreachable peer is a column of n/a
            column.unavailable = reason(exc)
            continue
        if note:
            column.title += f" ({note})"


@contextlib.contextmanager
def started_columns(wanted: set[str]) -> Iterator[list[Column]]:
    """The columns, with the LogQueue brokers and the raw database started for the run."""
    with contextlib.ExitStack() as stack:
        lq_pg_db = stack.enter_context(pg_database()) if "lq-pg" in wanted else None
        raw_db = stack.enter_context(pg_database()) if "raw-pg" in wanted else None
        columns = []
        if "lq-pg" in wanted:
            columns.append(Column("lq-pg", "LogQueue PG", "LQ PG", LogQueue, unavailable=(
                "" if lq_pg_db else "no PostgreSQL server answered")))
            if lq_pg_db:
                columns[-1].conf["url"] = stack.enter_context(broker(lq_pg_db))
        if "lq-sqlite" in wanted:
            columns.append(Column("lq-sqlite", "LogQueue SQLite", "LQ SQLite", LogQueue,
                                  {"url": stack.enter_context(broker())}))
        peers = [("nats", "NATS JetStream", "NATS", Nats, {"url": "nats://127.0.0.1:4222"}),
                 ("rabbitmq", "RabbitMQ (confirms)", "RabbitMQ", Rabbit,
                  {"url": "amqp://guest:guest@127.0.0.1:5672/%2F"}),
                 ("redis", "Redis Streams", "Redis", RedisStreams,
                  {"url": "redis://127.0.0.1:6379/0"}),
                 ("raw-pg", "raw PostgreSQL", "raw PG", RawPostgres, {"dsn": raw_db})]
        columns += [Column(*peer) for peer in peers if peer[0] in wanted]
        check_columns(columns)
        yield columns


ALL_COLUMNS = "lq-pg,lq-sqlite,nats,rabbitmq,redis,raw-pg"
ALL_CASES = "1,2,3,4"


def load_average() -> str:
    """The machine's load (other jobs share its 2 cores): part of every result."""
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per cell (median reported)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply the message counts (0.2: under a minute)")
    parser.add_argument("--columns", default=ALL_COLUMNS, help=f"a subset of {ALL_COLUMNS}")
    parser.add_argument("--cases", default=ALL_CASES,
                        help=f"a subset of {ALL_CASES} (1, 2, 3, 4: the table's rows)")
    args = parser.parse_args()
    cases = tuple(CASES[int(n) - 1] for n in args.cases.split(",")
                  if n.strip() in ("1", "2", "3", "4"))
    if not cases:
        parser.error(f"--cases: pick from {ALL_CASES}")
    wanted = set(args.columns.split(","))
    unknown = wanted - set(ALL_COLUMNS.split(","))
    if unknown:
        parser.error(f"unknown columns: {', '.join(sorted(unknown))}")
    with started_columns(wanted) as columns:
        print(f"load average at the start: {load_average()}", file=sys.stderr)
        cells = run_all(columns, args.runs, args.scale, cases)
        print(f"load average at the end: {load_average()}", file=sys.stderr)
    print_tables(columns, cells, args.runs, cases)
    print(f"\nload average at the end (1, 5, 15 min): {load_average()}")


if __name__ == "__main__":
    main()
