"""The systems bench_peers.py compares, each through its official Python client: one class per
peer, bound to one target (topic, stream, queue or table), and the payload they all send.

The durability each peer is configured with, and where it falls short, is in bench_peers.py's
docstring and in the notes of its table.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

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

    def filled(self) -> None:
        """The target was just filled for a consume case (untimed)."""

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

    def filled(self) -> None:
        """With ``analyze`` in the conf, the planner gets the table's statistics, as
        autovacuum gives a table within a minute: without them its SELECT reads and sorts
        every row after the position (the issue's figure was taken so)."""
        if self.conf.get("analyze"):
            with self.conn.cursor() as cur:
                cur.execute(f"ANALYZE {self.target}")
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
