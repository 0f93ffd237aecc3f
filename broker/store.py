"""The only module that knows SQL: topics, messages, producers and consumer positions.

Statements are named module-level constants grouped by noun. Batch is the primitive: an append
is a group of requests written in one transaction (see groupcommit.py). Driver errors stop
here: a database that does not answer becomes `Unavailable`, a constraint becomes a domain
error. Dialect differences (SQLite's single writer, PostgreSQL's row locks) stay here too.
"""

from __future__ import annotations

import functools
import io
import logging
import secrets
import select
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, NamedTuple, NoReturn, TypeVar

from flask import Flask
from sqlalchemy import Connection, Engine, TextClause, bindparam, event, text
from sqlalchemy import exc as sa_exc

from .errors import (
    BadRequest,
    BrokerError,
    NotRegistered,
    TopicExists,
    Unavailable,
    UnknownId,
    UnknownTopic,
)
from .groupcommit import GroupCommit
from .models import SCHEMA_VERSION, db, metadata, schema_version
from .wakeups import Wakeups

log = logging.getLogger("broker.store")
T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")

EXTENSION = "logqueue.store"
MAX_ID = 2**53
RECHECK_SECONDS = 1.0
CACHE_LIMIT = 100_000  # entries per in-process cache
WRITE_LOCK_TIMEOUT = 30.0  # SQLite: the longest a write waits for this process's write slot
SCHEMA_LOCK_KEY = 0x4C51_0001  # pg_advisory_lock key for schema creation
PRUNE_LOCK_KEY = 0x4C51_0002  # one broker at a time prunes
PRUNE_BATCH = 10_000  # messages deleted per pruning transaction
NOTIFY_CHANNEL = "lq_append"
NOTIFY_THROTTLE_SECONDS = 0.005
COPY_THRESHOLD = 4  # rows from which PostgreSQL appends use COPY instead of INSERT

# --- topics --------------------------------------------------------------------------------
INSERT_TOPIC = text(
    "INSERT INTO lq_topics (name, next_offset, first_offset, created_us, retention_ms, "
    "retention_messages) VALUES (:name, 0, 0, :now, :retention_ms, :retention_messages)")
INSERT_TOPIC_IF_MISSING = text(
    "INSERT INTO lq_topics (name, next_offset, first_offset, created_us) "
    "VALUES (:name, 0, 0, :now) ON CONFLICT (name) DO NOTHING")
SELECT_TOPIC_ID = text("SELECT id FROM lq_topics WHERE name = :name")
SELECT_TOPIC_NAMES = text("SELECT name FROM lq_topics ORDER BY id")
SELECT_TOPIC_BOUNDS = text("SELECT first_offset, next_offset FROM lq_topics WHERE id = :topic")
LOCK_TOPIC_COUNTER = {
    "postgresql": text("SELECT next_offset FROM lq_topics WHERE id = :topic FOR UPDATE"),
    "sqlite": text("SELECT next_offset FROM lq_topics WHERE id = :topic"),  # BEGIN IMMEDIATE
}
ADVANCE_TOPIC_COUNTER = text(
    "UPDATE lq_topics SET next_offset = next_offset + :n WHERE id = :topic RETURNING next_offset")
SET_TOPIC_COUNTER = text("UPDATE lq_topics SET next_offset = :next WHERE id = :topic")
SET_TOPIC_RETENTION = text(
    "UPDATE lq_topics SET retention_ms = :retention_ms, retention_messages = :retention_messages "
    "WHERE id = :topic")
SELECT_TOPIC = text(
    "SELECT name, first_offset, next_offset, retention_ms, retention_messages, created_us "
    "FROM lq_topics WHERE id = :topic")
SELECT_TOPIC_CONSUMERS = text(
    "SELECT name, position FROM lq_consumers WHERE topic_id = :topic ORDER BY created_us")
COUNT_TOPIC_PRODUCERS = text("SELECT COUNT(*) FROM lq_producers WHERE topic_id = :topic")
DELETE_TOPIC = [
    text("DELETE FROM lq_messages WHERE topic_id = :topic"),
    text("DELETE FROM lq_producers WHERE topic_id = :topic"),
    text("DELETE FROM lq_consumers WHERE topic_id = :topic"),
    text("DELETE FROM lq_topics WHERE id = :topic"),
]
SELECT_RETAINED_TOPICS = text(
    "SELECT id, first_offset, next_offset, retention_ms, retention_messages FROM lq_topics "
    "WHERE next_offset > first_offset")
SELECT_OFFSET_TIMES = text(
    "SELECT msg_offset, ts_us FROM lq_messages WHERE topic_id = :topic AND msg_offset >= :start "
    "ORDER BY msg_offset LIMIT :limit")
PRUNE_MESSAGES = text(
    "DELETE FROM lq_messages WHERE topic_id = :topic AND msg_offset >= :start "
    "AND msg_offset < :cut")
MOVE_FIRST_OFFSET = text(
    "UPDATE lq_topics SET first_offset = :cut WHERE id = :topic AND first_offset < :cut")
TRY_PRUNE_LOCK = text("SELECT pg_try_advisory_lock(:key)")
PRUNE_UNLOCK = text("SELECT pg_advisory_unlock(:key)")
SELECT_STATS = text(
    "SELECT t.name, t.first_offset, t.next_offset, COUNT(c.id), "
    "       COALESCE(MAX(CASE WHEN c.id IS NULL THEN 0 "
    "                         WHEN c.position > t.first_offset THEN t.next_offset - c.position "
    "                         ELSE t.next_offset - t.first_offset END), 0) "
    "FROM lq_topics t LEFT JOIN lq_consumers c ON c.topic_id = t.id "
    "GROUP BY t.id, t.name, t.first_offset, t.next_offset ORDER BY t.id")

# --- producers -----------------------------------------------------------------------------
INSERT_PRODUCER = text(
    "INSERT INTO lq_producers (id, topic_id, created_us) VALUES (:id, :topic, :now)")
SELECT_PRODUCER_TOPIC = text("SELECT topic_id FROM lq_producers WHERE id = :id")
SELECT_PRODUCER_SEQS = text(
    "SELECT id, last_seq, last_first, last_last FROM lq_producers "
    "WHERE topic_id = :topic AND id IN :ids"
).bindparams(bindparam("ids", expanding=True))
DELETE_PRODUCER = text("DELETE FROM lq_producers WHERE id = :id AND topic_id = :topic")
UPDATE_PRODUCER_SEQ = text(
    "UPDATE lq_producers SET last_seq = :seq, last_first = :first, last_last = :last "
    "WHERE id = :id")

# --- consumers -----------------------------------------------------------------------------
INSERT_CONSUMER = text(
    "INSERT INTO lq_consumers (id, topic_id, name, position, created_us, active_us) "
    "VALUES (:id, :topic, :name, :position, :now, :now)")
TOUCH_CONSUMER = text("UPDATE lq_consumers SET active_us = :now WHERE id = :id")
EXPIRE_CONSUMERS = text(
    "DELETE FROM lq_consumers WHERE name IS NULL AND active_us < :cutoff")
SELECT_CONSUMER_TOPIC = text("SELECT topic_id FROM lq_consumers WHERE id = :id")
SELECT_NAMED_CONSUMER = text(
    "SELECT id FROM lq_consumers WHERE topic_id = :topic AND name = :name")
SELECT_CONSUMER_LAG = text(
    "SELECT c.position, t.first_offset, t.next_offset FROM lq_consumers c "
    "JOIN lq_topics t ON t.id = c.topic_id WHERE c.id = :id")
SET_CONSUMER_POSITION = text("UPDATE lq_consumers SET position = :position WHERE id = :id")
ADVANCE_CONSUMER_POSITION = text(
    "UPDATE lq_consumers SET position = :position WHERE id = :id AND position < :position")
SELECT_CONSUMER_POSITION = text("SELECT position FROM lq_consumers WHERE id = :id")
DELETE_CONSUMER = text("DELETE FROM lq_consumers WHERE id = :id AND topic_id = :topic")

# One round trip on PostgreSQL: lock the position, read the range after it, move it past.
TAKE_MESSAGES_PG = text(
    "WITH cur AS (SELECT position FROM lq_consumers WHERE id = :id FOR UPDATE), "
    "taken AS (SELECT m.msg_offset, m.body, m.ts_us FROM lq_messages m, cur "
    "          WHERE m.topic_id = :topic AND m.msg_offset >= cur.position "
    "          ORDER BY m.msg_offset LIMIT :limit), "
    "moved AS (UPDATE lq_consumers SET position = (SELECT MAX(msg_offset) + 1 FROM taken) "
    "          WHERE id = :id AND EXISTS (SELECT 1 FROM taken)) "
    "SELECT msg_offset, body, ts_us, (SELECT position FROM cur) FROM taken "
    "ORDER BY msg_offset")

# --- messages ------------------------------------------------------------------------------
SELECT_MESSAGES = text(
    "SELECT msg_offset, body, ts_us FROM lq_messages "
    "WHERE topic_id = :topic AND msg_offset >= :start ORDER BY msg_offset LIMIT :limit")

COPY_MESSAGES = "COPY lq_messages (topic_id, msg_offset, body, ts_us) FROM STDIN"
INSERT_MESSAGE_SQLITE = (
    "INSERT INTO lq_messages (topic_id, msg_offset, body, ts_us) VALUES (?, ?, ?, ?)")
INSERT_MESSAGE_PG = (
    "INSERT INTO lq_messages (topic_id, msg_offset, body, ts_us) VALUES (%s, %s, %s, %s)")
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})

# --- wake-ups across processes (PostgreSQL) ----------------------------------------------------
NOTIFY_TOPICS = text(
    "SELECT pg_notify(:channel, CAST(t AS text)) FROM unnest(CAST(:ids AS bigint[])) AS t")

# --- health --------------------------------------------------------------------------------
PING = text("SELECT 1")


class Message(NamedTuple):
    offset: int
    body: str
    ts_us: int


@lru_cache(maxsize=4096)
def iso_time(ts_us: int) -> str:
    """ISO-8601 UTC; cached because a group commit gives many messages one time."""
    return datetime.fromtimestamp(ts_us / 1e6, UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True, slots=True)
class AppendRequest:
    producer_id: int
    bodies: Sequence[str]
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class AppendResult:
    first: int | None
    last: int | None
    duplicate: bool = False
    error: BrokerError | None = None  # this request failed; the rest of its group did not


def _replay(seq: int, last: tuple[int | None, int | None, int | None]) -> AppendResult | None:
    """The idempotence rule: a seq equal to the producer's last applied one gets that
    append's offsets again, a lower one a bare duplicate; a higher one appends."""
    last_seq, last_first, last_last = last
    if last_seq is None or seq > last_seq:
        return None
    if seq == last_seq:
        return AppendResult(last_first, last_last, duplicate=True)
    return AppendResult(None, None, duplicate=True)


@dataclass(frozen=True, slots=True)
class Batch:
    messages: list[Message]
    skipped: int = 0  # messages pruned by retention between the position and the first here


@dataclass(frozen=True, slots=True)
class ConsumerInfo:
    name: str | None
    position: int
    lag: int


@dataclass(frozen=True, slots=True)
class TopicInfo:
    topic: str
    first_offset: int
    next_offset: int
    retention_ms: int | None
    retention_messages: int | None
    created_us: int
    producers: int
    consumers: list[ConsumerInfo]


@dataclass(frozen=True, slots=True)
class TopicStats:
    topic: str
    first_offset: int
    next_offset: int
    consumers: int
    max_lag: int

    @property
    def messages(self) -> int:
        return self.next_offset - self.first_offset


def now_us() -> int:
    return time.time_ns() // 1000


def new_id() -> int:
    """A random positive id below 2**53: unguessable, and an int that JSON keeps exact."""
    return secrets.randbelow(MAX_ID - 1) + 1


def configure_engine(engine: Engine) -> None:
    """SQLite: WAL, a busy timeout, full sync, and `BEGIN IMMEDIATE` for writes."""
    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("lq_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def create_schema(engine: Engine) -> None:
    """Create the tables once (under an advisory lock on PostgreSQL) and record the version."""
    with translate_errors(), engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
        metadata.create_all(conn)
        if conn.execute(schema_version.select()).first() is None:
            conn.execute(schema_version.insert().values(version=SCHEMA_VERSION))


def max_connections(engine: Engine) -> int | None:
    """PostgreSQL's connection limit (None on SQLite), to warn before workers exhaust it."""
    if engine.dialect.name != "postgresql":
        return None
    with translate_errors(), engine.connect() as conn:
        return int(conn.execute(text("SHOW max_connections")).scalar_one())


@contextmanager
def translate_errors() -> Iterator[None]:
    """A database that does not answer is `Unavailable` (503): nothing was acknowledged."""
    try:
        yield
    except (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError,
            sa_exc.TimeoutError) as exc:
        raise Unavailable(f"the database is unavailable: {_first_line(exc)}") from exc
    except sa_exc.DBAPIError as exc:
        if exc.connection_invalidated:
            raise Unavailable(f"the database connection was lost: {_first_line(exc)}") from exc
        raise


def _first_line(exc: sa_exc.StatementError) -> str:
    return str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__


def _remember(cache: dict[K, V], key: K, value: V) -> None:
    """Caches only speed things up: past CACHE_LIMIT entries one starts again, so a
    long-running broker's memory stays bounded however many clients come and go."""
    if len(cache) >= CACHE_LIMIT:
        cache.clear()
    cache[key] = value


class _StaleTopic(UnknownTopic):
    """A cached topic id turned out deleted: the operation is retried once with a fresh lookup."""


class _RegistrationGone(UnknownId):
    """A consumer row is missing: unregistered, or its whole topic deleted meanwhile."""


def _retry_stale_topic(method: Callable[..., T]) -> Callable[..., T]:
    """Retry once when the cached topic id turned out deleted. Decorated methods take the
    topic's name first, so a missing registration can tell "topic gone" from "id gone"."""

    @functools.wraps(method)
    def retry(self: Store, topic: str, *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, topic, *args, **kwargs)
        except _StaleTopic:
            return method(self, topic, *args, **kwargs)
        except _RegistrationGone:
            if not self._cached_topic_is_stale(topic):
                raise
            return method(self, topic, *args, **kwargs)

    return retry


class PgWakeupBridge:
    """Long-poll wake-ups across processes: NOTIFY after appends, LISTEN for everyone's.

    NOTIFY goes out from its own short transaction (inside the append it cost throughput),
    throttled per topic on the trailing edge: one round at most every few milliseconds, and
    always one after the last append. One LISTEN connection per process, opened lazily by the
    first long-poll (after any fork). A notification is only a hint: waiters re-check the
    database at least once a second, so a lost one costs that second.
    """

    def __init__(self, engine: Engine, wakeups: Wakeups) -> None:
        self._engine = engine
        self._wakeups = wakeups
        self._lock = threading.Lock()
        self._pending: set[int] = set()
        self._has_pending = threading.Event()
        self._sender: threading.Thread | None = None
        self._listener: threading.Thread | None = None

    def appended(self, topic_id: int) -> None:
        with self._lock:
            self._pending.add(topic_id)
            if self._sender is None:
                self._sender = self._start(self._send_loop, "lq-notify")
        self._has_pending.set()

    def ensure_listening(self) -> None:
        if self._listener is None:
            with self._lock:
                if self._listener is None:
                    self._listener = self._start(self._listen_loop, "lq-listen")

    @staticmethod
    def _start(target, name: str) -> threading.Thread:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        return thread

    def _send_loop(self) -> None:
        while True:
            self._has_pending.wait()
            self._has_pending.clear()
            with self._lock:
                topics, self._pending = self._pending, set()
            if topics:
                try:
                    with self._engine.begin() as conn:
                        conn.execute(NOTIFY_TOPICS, {"channel": NOTIFY_CHANNEL,
                                                     "ids": sorted(topics)})
                except Exception as exc:  # noqa: BLE001 - a hint only; waiters re-check
                    log.warning("NOTIFY failed: %s", exc)
            time.sleep(NOTIFY_THROTTLE_SECONDS)  # the throttle window, not synchronization

    def _listen_loop(self) -> None:
        while True:
            try:
                self._listen_once()
            except Exception as exc:  # noqa: BLE001 - reconnect; waiters re-check meanwhile
                log.warning("LISTEN connection lost (%s); reconnecting", exc)
            time.sleep(RECHECK_SECONDS)

    def _listen_once(self) -> None:
        proxied = self._engine.raw_connection()
        proxied.detach()  # our own connection, never returned to the pool
        conn = proxied.dbapi_connection
        try:
            conn.autocommit = True
            with conn.cursor() as cursor:
                cursor.execute(f"LISTEN {NOTIFY_CHANNEL}")
            while True:
                if select.select([conn], [], [], 5.0)[0]:
                    conn.poll()
                    while conn.notifies:
                        self._wakeups.notify(int(conn.notifies.pop(0).payload))
                else:
                    conn.poll()  # raises if the connection died quietly
        finally:
            conn.close()


class Store:
    """All reads and writes of one database, plus the in-process structures that speed them up.

    The caches hold what does not change once written (a topic's id, a registration's topic).
    A delete in another process can make an entry stale: every path that depends on one
    meets the database (the counter row, the registration row), notices, evicts the entry
    and retries once, so answers are the database's.
    """

    def __init__(self, engine: Engine, default_retention_ms: int | None = None,
                 consumer_ttl_ms: int | None = None) -> None:
        self.engine = engine
        self.default_retention_ms = default_retention_ms
        self.consumer_ttl_ms = consumer_ttl_ms
        self._touched: dict[int, float] = {}
        self.dialect = engine.dialect.name
        self.wakeups = Wakeups()
        self._topic_ids: dict[str, int] = {}
        self._producer_topics: dict[int, int] = {}
        self._consumer_topics: dict[int, int] = {}
        self._appenders: dict[int, GroupCommit[AppendRequest, AppendResult]] = {}
        self._appenders_lock = threading.Lock()
        # SQLite has one writer per file: queue writers here rather than in its busy handler.
        self._write_lock = threading.Lock() if self.dialect == "sqlite" else None
        self._bridge = (PgWakeupBridge(engine, self.wakeups) if self.dialect == "postgresql"
                        else None)

    # --- plumbing ----------------------------------------------------------------------------
    @contextmanager
    def _transaction(self, write: bool = False) -> Iterator[Connection]:
        with translate_errors():
            if self._write_lock is not None and write:
                if not self._write_lock.acquire(timeout=WRITE_LOCK_TIMEOUT):
                    raise Unavailable("the database is busy: no write slot within "
                                      f"{WRITE_LOCK_TIMEOUT:.0f} s")
            try:
                with self.engine.connect() as conn:
                    conn.execution_options(lq_write=write)
                    with conn.begin():
                        yield conn
            finally:
                if self._write_lock is not None and write:
                    self._write_lock.release()

    def ping(self) -> None:
        with self._transaction() as conn:
            conn.execute(PING)

    # --- topics ------------------------------------------------------------------------------
    def create_topic(self, name: str, retention_ms: int | None = None,
                     retention_messages: int | None = None) -> None:
        try:
            with self._transaction(write=True) as conn:
                conn.execute(INSERT_TOPIC, {"name": name, "now": now_us(),
                                            "retention_ms": retention_ms or None,
                                            "retention_messages": retention_messages or None})
        except sa_exc.IntegrityError:
            raise TopicExists(f"Topic '{name}' already exists") from None

    @_retry_stale_topic
    def set_retention(self, name: str, retention_ms: int | None,
                      retention_messages: int | None) -> None:
        """Change a topic's retention; 0 or None means no limit of that kind."""
        topic_id = self.topic_id(name)
        with self._transaction(write=True) as conn:
            changed = conn.execute(SET_TOPIC_RETENTION, {
                "topic": topic_id, "retention_ms": retention_ms or None,
                "retention_messages": retention_messages or None}).rowcount
        if not changed:
            self._topic_gone(name)

    @_retry_stale_topic
    def describe(self, name: str) -> TopicInfo:
        topic_id = self.topic_id(name)
        with self._transaction() as conn:
            row = conn.execute(SELECT_TOPIC, {"topic": topic_id}).first()
            if row is None:
                self._topic_gone(name)
            consumers = conn.execute(SELECT_TOPIC_CONSUMERS, {"topic": topic_id}).all()
            producers = conn.execute(COUNT_TOPIC_PRODUCERS, {"topic": topic_id}).scalar_one()
        _, first, next_offset, retention_ms, retention_messages, created_us = row
        return TopicInfo(name, first, next_offset, retention_ms, retention_messages, created_us,
                         producers, [ConsumerInfo(n, p, next_offset - max(p, first))
                                     for n, p in consumers])

    @_retry_stale_topic
    def delete_topic(self, name: str) -> None:
        """Delete a topic's messages, registrations and counters; the name can be reused."""
        topic_id = self.topic_id(name)
        with self._transaction(write=True) as conn:
            if conn.execute(LOCK_TOPIC_COUNTER[self.dialect], {"topic": topic_id}).first() is None:
                self._topic_gone(name)
            for statement in DELETE_TOPIC:
                conn.execute(statement, {"topic": topic_id})
        self._forget_topic(name, topic_id)
        self.wakeups.notify(topic_id)  # long-polls on it re-check and find it gone

    def _forget_topic(self, name: str, topic_id: int) -> None:
        self._topic_ids.pop(name, None)
        self._appenders.pop(topic_id, None)
        for cache in (self._producer_topics, self._consumer_topics):
            for reg_id in [r for r, t in cache.items() if t == topic_id]:
                cache.pop(reg_id, None)

    def _topic_gone(self, name: str) -> NoReturn:
        """The cached topic was deleted (perhaps by another process, perhaps re-created)."""
        topic_id = self._topic_ids.get(name)
        if topic_id is not None:
            self._forget_topic(name, topic_id)
            raise _StaleTopic(f"Topic '{name}' does not exist")
        raise UnknownTopic(f"Topic '{name}' does not exist")

    def list_topics(self) -> list[str]:
        with self._transaction() as conn:
            return [row[0] for row in conn.execute(SELECT_TOPIC_NAMES)]

    def topic_id(self, name: str, *, create: bool = False) -> int:
        topic_id = self._topic_ids.get(name)
        if topic_id is not None:
            return topic_id
        with self._transaction() as conn:
            topic_id = conn.execute(SELECT_TOPIC_ID, {"name": name}).scalar()
        if topic_id is None and create:
            with self._transaction(write=True) as conn:
                conn.execute(INSERT_TOPIC_IF_MISSING, {"name": name, "now": now_us()})
                topic_id = conn.execute(SELECT_TOPIC_ID, {"name": name}).scalar()
        if topic_id is None:
            raise UnknownTopic(f"Topic '{name}' does not exist")
        _remember(self._topic_ids, name, topic_id)
        return topic_id

    def stats(self) -> list[TopicStats]:
        with self._transaction() as conn:
            return [TopicStats(*row) for row in conn.execute(SELECT_STATS)]

    # --- registrations -----------------------------------------------------------------------
    @_retry_stale_topic
    def register_producer(self, topic: str) -> int:
        topic_id = self.topic_id(topic, create=True)
        with self._transaction(write=True) as conn:
            # Lock the topic row: a concurrent delete cannot leave this registration behind.
            if conn.execute(LOCK_TOPIC_COUNTER[self.dialect], {"topic": topic_id}).first() is None:
                self._topic_gone(topic)
            producer_id = self._insert_id(conn, INSERT_PRODUCER, {"topic": topic_id})
        _remember(self._producer_topics, producer_id, topic_id)
        return producer_id

    @_retry_stale_topic
    def register_consumer(self, topic: str, name: str | None = None,
                          start: str = "earliest") -> int:
        topic_id = self.topic_id(topic)
        if name is not None:
            existing = self._named_consumer(topic_id, name)
            if existing is not None:
                return existing
        try:
            with self._transaction(write=True) as conn:
                bounds = conn.execute(SELECT_TOPIC_BOUNDS, {"topic": topic_id}).first()
                if bounds is None:
                    self._topic_gone(topic)
                first, next_ = bounds
                position = next_ if start == "latest" else first
                consumer_id = self._insert_id(conn, INSERT_CONSUMER, {
                    "topic": topic_id, "name": name, "position": position})
        except sa_exc.IntegrityError:
            # The same name registered concurrently: that registration won.
            existing = self._named_consumer(topic_id, name) if name is not None else None
            if existing is None:
                raise
            return existing
        _remember(self._consumer_topics, consumer_id, topic_id)
        return consumer_id

    def _named_consumer(self, topic_id: int, name: str) -> int | None:
        with self._transaction() as conn:
            return conn.execute(SELECT_NAMED_CONSUMER, {"topic": topic_id, "name": name}).scalar()

    @staticmethod
    def _insert_id(conn: Connection, statement: TextClause, params: dict) -> int:
        """Insert with a random id; a collision (about 1 in 2**53) retries with another."""
        for _ in range(5):
            new = new_id()
            nested = conn.begin_nested()
            try:
                conn.execute(statement, {**params, "id": new, "now": now_us()})
            except sa_exc.IntegrityError:
                nested.rollback()
                if "name" in params and params["name"] is not None:
                    raise
                continue
            nested.commit()
            return new
        raise RuntimeError("could not find a free random id")

    def _registration_topic(self, cache: dict[int, int], statement: TextClause, reg_id: int,
                            topic_id: int, kind: str) -> None:
        registered = cache.get(reg_id)
        if registered is not None and registered != topic_id:
            cache.pop(reg_id)  # maybe stale (a topic deleted and re-created): ask the database
            registered = None
        if registered is None:
            with self._transaction() as conn:
                registered = conn.execute(statement, {"id": reg_id}).scalar()
            if registered is None:
                raise UnknownId(f"{kind} id {reg_id} is unknown")
            _remember(cache, reg_id, registered)
        if registered != topic_id:
            raise NotRegistered(f"{kind} {reg_id} is not registered for this topic")

    def unregister_producer(self, topic: str, producer_id: int) -> None:
        self._unregister(topic, producer_id, self._producer_topics, DELETE_PRODUCER, "producer")

    def unregister_consumer(self, topic: str, consumer_id: int) -> None:
        self._unregister(topic, consumer_id, self._consumer_topics, DELETE_CONSUMER, "consumer")

    def _unregister(self, topic: str, reg_id: int, cache: dict[int, int], statement: TextClause,
                    kind: str) -> None:
        topic_id = self.topic_id(topic)
        statement_topic = SELECT_PRODUCER_TOPIC if kind == "producer" else SELECT_CONSUMER_TOPIC
        self._registration_topic(cache, statement_topic, reg_id, topic_id, kind)
        with self._transaction(write=True) as conn:
            deleted = conn.execute(statement, {"id": reg_id, "topic": topic_id}).rowcount
        cache.pop(reg_id, None)
        if not deleted:
            raise UnknownId(f"{kind} id {reg_id} is unknown")

    def check_producer(self, topic_id: int, producer_id: int) -> None:
        self._registration_topic(self._producer_topics, SELECT_PRODUCER_TOPIC, producer_id,
                                 topic_id, "producer")

    def check_consumer(self, topic_id: int, consumer_id: int) -> None:
        self._registration_topic(self._consumer_topics, SELECT_CONSUMER_TOPIC, consumer_id,
                                 topic_id, "consumer")
        if self.consumer_ttl_ms:
            self._touch(consumer_id)

    def _touch(self, consumer_id: int) -> None:
        """Record that the consumer is in use: at most every TTL/4 (and 30 s) per process."""
        now = time.monotonic()
        interval = min(30.0, self.consumer_ttl_ms / 4000)
        if now - self._touched.get(consumer_id, -interval) < interval:
            return
        _remember(self._touched, consumer_id, now)
        with self._transaction(write=True) as conn:
            conn.execute(TOUCH_CONSUMER, {"now": now_us(), "id": consumer_id})

    # --- appends -----------------------------------------------------------------------------
    @_retry_stale_topic
    def append(self, topic: str, request: AppendRequest) -> AppendResult:
        """Append one request's messages, grouped with concurrent appends to the same topic."""
        topic_id = self.topic_id(topic)
        self.check_producer(topic_id, request.producer_id)
        appender = self._appenders.get(topic_id)
        if appender is None:
            with self._appenders_lock:
                appender = self._appenders.setdefault(
                    topic_id, GroupCommit(lambda group: self._append_group(topic_id, group),
                                          shared_errors=(Unavailable,)))
        try:
            result = appender.submit(request, len(request.bodies))
        except UnknownTopic:
            self._topic_gone(topic)
        if result.error is not None:
            self._producer_topics.pop(request.producer_id, None)
            raise result.error
        return result

    def _append_group(self, topic_id: int, group: Sequence[AppendRequest]) -> list[AppendResult]:
        stamp = now_us()
        with_seq = any(r.seq is not None for r in group)
        producers = {"topic": topic_id, "ids": sorted({r.producer_id for r in group})}
        results: list[AppendResult] = []
        rows: list[dict] = []
        seq_updates: dict[int, dict] = {}
        with self._transaction(write=True) as conn:
            if with_seq:  # the seq state is read under the counter row's lock
                next_offset = conn.execute(LOCK_TOPIC_COUNTER[self.dialect],
                                           {"topic": topic_id}).scalar()
                last = {row[0]: row[1:] for row in conn.execute(SELECT_PRODUCER_SEQS, producers)}
            else:
                last = {row[0]: row[1:] for row in conn.execute(SELECT_PRODUCER_SEQS, producers)}
                count = sum(len(r.bodies) for r in group if r.producer_id in last)
                advanced = conn.execute(ADVANCE_TOPIC_COUNTER,
                                        {"n": count, "topic": topic_id}).scalar()
                next_offset = None if advanced is None else advanced - count
            if next_offset is None:
                raise UnknownTopic("the topic was deleted")
            offset = next_offset
            for request in group:
                if request.producer_id not in last:  # unregistered meanwhile
                    results.append(AppendResult(None, None, error=UnknownId(
                        f"producer id {request.producer_id} is unknown")))
                    continue
                if request.seq is not None:
                    earlier = _replay(request.seq, last[request.producer_id])
                    if earlier is not None:
                        results.append(earlier)
                        continue
                first = offset
                offset += len(request.bodies)
                rows.extend(zip(range(first, offset), request.bodies, strict=True))
                if request.seq is not None:
                    last[request.producer_id] = (request.seq, first, offset - 1)
                    seq_updates[request.producer_id] = {
                        "id": request.producer_id, "seq": request.seq, "first": first,
                        "last": offset - 1}
                results.append(AppendResult(first, offset - 1))
            if rows:
                self._insert_messages(conn, topic_id, stamp, rows)
            if with_seq:
                conn.execute(SET_TOPIC_COUNTER, {"next": offset, "topic": topic_id})
            if seq_updates:
                conn.execute(UPDATE_PRODUCER_SEQ, list(seq_updates.values()))
        if rows:  # committed: wake-ups are hints and must not fail the append
            try:
                self.wakeups.notify(topic_id)
                if self._bridge is not None:
                    self._bridge.appended(topic_id)
            except Exception as exc:  # noqa: BLE001 - waiters re-check within a second
                log.warning("wake-up after append failed: %s", exc)
        return results

    @_retry_stale_topic
    def replayed(self, topic: str, producer_id: int, seq: int) -> AppendResult | None:
        """The answer an append with ``seq`` got already, or ``None`` when ``seq`` is new.
        For a retry the broker would now refuse (a smaller limit since): the contract says
        an applied seq answers with its offsets, whatever the request holds."""
        topic_id = self.topic_id(topic)
        with self._transaction() as conn:
            row = conn.execute(SELECT_PRODUCER_SEQS,
                               {"topic": topic_id, "ids": [producer_id]}).first()
        return None if row is None else _replay(seq, tuple(row[1:]))

    def _insert_messages(self, conn: Connection, topic_id: int, stamp: int,
                         rows: list[tuple[int, str]]) -> None:
        """Insert (offset, body) rows through the driver: per-row SQLAlchemy parameter
        processing cost more than the insert itself on large batches."""
        cursor = conn.connection.dbapi_connection.cursor()
        dbapi_error = conn.dialect.loaded_dbapi.Error
        try:
            if self.dialect == "sqlite":
                cursor.executemany(INSERT_MESSAGE_SQLITE,
                                   [(topic_id, offset, body, stamp) for offset, body in rows])
            elif len(rows) < COPY_THRESHOLD:
                cursor.executemany(INSERT_MESSAGE_PG,
                                   [(topic_id, offset, body, stamp) for offset, body in rows])
            else:
                prefix, suffix = f"{topic_id}\t", f"\t{stamp}\n"
                buffer = io.StringIO()
                buffer.writelines(f"{prefix}{offset}\t{body.translate(_COPY_ESCAPES)}{suffix}"
                                  for offset, body in rows)
                buffer.seek(0)
                cursor.copy_expert(COPY_MESSAGES, buffer)
        except dbapi_error as exc:  # the driver's own error: as SQLAlchemy would raise it
            raise sa_exc.DBAPIError.instance("INSERT INTO lq_messages", None, exc,
                                             dbapi_error) from exc
        finally:
            cursor.close()

    # --- consuming ---------------------------------------------------------------------------
    @_retry_stale_topic
    def consume(self, topic: str, consumer_id: int, limit: int, wait: float = 0.0) -> Batch:
        """Take up to `limit` messages and move the position past them, waiting up to `wait`."""
        topic_id = self.topic_id(topic)
        self.check_consumer(topic_id, consumer_id)
        return self._wait_for(topic, topic_id, consumer_id, wait,
                              lambda: self._take(topic_id, consumer_id, limit))

    @_retry_stale_topic
    def fetch(self, topic: str, consumer_id: int, limit: int, wait: float = 0.0,
              offset: int | None = None) -> tuple[Batch, int]:
        """Read up to `limit` messages from `offset` (default: the position) without moving it."""
        topic_id = self.topic_id(topic)
        self.check_consumer(topic_id, consumer_id)
        position = 0

        def read() -> Batch:
            nonlocal position
            with self._transaction() as conn:
                position = self._position(conn, consumer_id)
                start = position if offset is None else offset
                found = self._read(conn, topic_id, start, limit)
            return Batch(found, found[0].offset - start if found else 0)

        batch = self._wait_for(topic, topic_id, consumer_id, wait, read)
        return batch, position

    @_retry_stale_topic
    def commit(self, topic: str, consumer_id: int, offset: int) -> int:
        """Move the position forward to `offset` (the next to read); never backward."""
        topic_id = self.topic_id(topic)
        self.check_consumer(topic_id, consumer_id)
        with self._transaction(write=True) as conn:
            bounds = conn.execute(SELECT_TOPIC_BOUNDS, {"topic": topic_id}).first()
            if bounds is None:
                self._topic_gone(topic)
            if offset > bounds[1]:
                raise BadRequest(f"offset {offset} is past the end of the topic ({bounds[1]})")
            conn.execute(ADVANCE_CONSUMER_POSITION, {"position": offset, "id": consumer_id})
            return self._position(conn, consumer_id)

    @_retry_stale_topic
    def size(self, topic: str, consumer_id: int) -> int:
        topic_id = self.topic_id(topic)
        self.check_consumer(topic_id, consumer_id)
        with self._transaction() as conn:
            position, first, next_offset = self._lag(conn, consumer_id)
        return max(0, next_offset - max(position, first))

    def _position(self, conn: Connection, consumer_id: int) -> int:
        position = conn.execute(SELECT_CONSUMER_POSITION, {"id": consumer_id}).scalar()
        if position is None:
            self._consumer_gone(consumer_id)
        return position

    def _lag(self, conn: Connection, consumer_id: int) -> tuple[int, int, int]:
        row = conn.execute(SELECT_CONSUMER_LAG, {"id": consumer_id}).first()
        if row is None:
            self._consumer_gone(consumer_id)
        return row

    def _consumer_gone(self, consumer_id: int) -> NoReturn:
        """Unregistered, or its topic deleted (perhaps by another process)."""
        self._consumer_topics.pop(consumer_id, None)
        raise _RegistrationGone(f"consumer id {consumer_id} is unknown")

    def _cached_topic_is_stale(self, name: str) -> bool:
        cached = self._topic_ids.get(name)
        if cached is None:
            return False
        with self._transaction() as conn:
            current = conn.execute(SELECT_TOPIC_ID, {"name": name}).scalar()
        if current == cached:
            return False
        self._forget_topic(name, cached)
        return True

    def _wait_for(self, topic: str, topic_id: int, consumer_id: int, wait: float,
                  attempt: Callable[[], Batch]) -> Batch:
        deadline = time.monotonic() + wait
        if wait > 0 and self._bridge is not None:
            self._bridge.ensure_listening()
        while True:
            version = self.wakeups.version(topic_id)
            found = attempt()
            if found.messages:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.wakeups.closed:
                # Nothing to read: make sure that is not because the consumer is gone.
                with self._transaction() as conn:
                    self._position(conn, consumer_id)
                return found
            self.wakeups.wait(topic_id, version, min(RECHECK_SECONDS, remaining))

    def _take(self, topic_id: int, consumer_id: int, limit: int) -> Batch:
        params = {"id": consumer_id, "topic": topic_id, "limit": limit}
        if self.dialect == "postgresql":
            with self._transaction(write=True) as conn:
                rows = conn.execute(TAKE_MESSAGES_PG, params).all()
            if not rows:
                return Batch([])
            return Batch([Message(*row[:3]) for row in rows], rows[0][0] - rows[0][3])
        with self._transaction() as conn:
            position, first, next_offset = self._lag(conn, consumer_id)
        if max(position, first) >= next_offset:
            return Batch([])  # nothing to read: no write lock taken
        with self._transaction(write=True) as conn:
            position = self._position(conn, consumer_id)
            found = self._read(conn, topic_id, position, limit)
            if found:
                conn.execute(SET_CONSUMER_POSITION,
                             {"position": found[-1].offset + 1, "id": consumer_id})
        return Batch(found, found[0].offset - position if found else 0)

    @staticmethod
    def _read(conn: Connection, topic_id: int, start: int, limit: int) -> list[Message]:
        rows = conn.execute(SELECT_MESSAGES, {"topic": topic_id, "start": start, "limit": limit})
        return list(map(Message._make, rows.all()))

    # --- retention ---------------------------------------------------------------------------
    def prune(self) -> int:
        """One bounded housekeeping round: retention over every topic, then idle unnamed
        consumers past the TTL. Returns the number of messages deleted.

        On PostgreSQL one broker at a time prunes (an advisory lock); the others skip.
        """
        if self.dialect != "postgresql":
            return self._housekeeping()
        with translate_errors(), self.engine.connect() as lock_conn:
            if not lock_conn.execute(TRY_PRUNE_LOCK, {"key": PRUNE_LOCK_KEY}).scalar():
                return 0
            try:
                return self._housekeeping()
            finally:
                lock_conn.execute(PRUNE_UNLOCK, {"key": PRUNE_LOCK_KEY})
                lock_conn.commit()

    def _housekeeping(self) -> int:
        pruned = self._prune_topics()
        if self.consumer_ttl_ms:
            with self._transaction(write=True) as conn:
                conn.execute(EXPIRE_CONSUMERS, {"cutoff": now_us() - self.consumer_ttl_ms * 1000})
        return pruned

    def _prune_topics(self) -> int:
        pruned = 0
        with self._transaction() as conn:
            topics = conn.execute(SELECT_RETAINED_TOPICS).all()
        for topic_id, first, next_offset, retention_ms, retention_messages in topics:
            retention_ms = retention_ms or self.default_retention_ms
            if not retention_ms and not retention_messages:
                continue
            cut = max(first, next_offset - retention_messages) if retention_messages else first
            cut = min(cut, first + PRUNE_BATCH)
            if retention_ms and cut < first + PRUNE_BATCH:
                cut = self._expired_until(topic_id, cut, first + PRUNE_BATCH - cut,
                                          now_us() - retention_ms * 1000)
            if cut <= first:
                continue
            with self._transaction(write=True) as conn:
                conn.execute(PRUNE_MESSAGES, {"topic": topic_id, "start": first, "cut": cut})
                conn.execute(MOVE_FIRST_OFFSET, {"topic": topic_id, "cut": cut})
            pruned += cut - first
        return pruned

    def _expired_until(self, topic_id: int, start: int, limit: int, cutoff_us: int) -> int:
        """The first offset at or after `start` (within `limit`) not older than the cutoff."""
        with self._transaction() as conn:
            rows = conn.execute(SELECT_OFFSET_TIMES,
                                {"topic": topic_id, "start": start, "limit": limit}).all()
        for offset, ts_us in rows:
            if ts_us >= cutoff_us:
                return offset
        return rows[-1][0] + 1 if rows else start


def init_app(app: Flask) -> None:
    """Bind Flask-SQLAlchemy and a Store to the app; connections open lazily, after any fork."""
    db.init_app(app)
    with app.app_context():
        engine = db.engine
    configure_engine(engine)
    app.extensions[EXTENSION] = Store(engine, app.config.get("LQ_RETENTION_MS"),
                                      app.config.get("LQ_CONSUMER_TTL_MS"))


def get_store(app: Flask) -> Store:
    return app.extensions[EXTENSION]
