"""Consumers: registrations, positions, and reads that may wait (long-poll)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

from sqlalchemy import Connection

from ..wakeups import Wakeups
from . import queries as q
from . import reads
from .caches import Caches, remember, retry_stale_topic
from .database import Database
from .driver import NameTaken, driver_cursor
from .positions import position_sql
from .records import Batch, now_us

if TYPE_CHECKING:
    from ..pgwakeups import PgWakeupBridge

TOUCH_EVERY_MAX = 30.0  # seconds: the longest between two touches of a consumer in use


class Found(Protocol):
    """What a long-poll attempt finds: a Batch, a LeasedBatch."""

    @property
    def messages(self) -> list: ...


F = TypeVar("F", bound=Found)


class Consumers:
    def __init__(self, db: Database, caches: Caches, wakeups: Wakeups,
                 bridge: PgWakeupBridge | None, recheck_interval: float,
                 ttl_ms: int | None = None) -> None:
        """`recheck_interval`: the longest a long-poll waits for a wake-up before it reads
        the database again (a wake-up can be lost: another process's append, a dropped
        NOTIFY). `ttl_ms`: unnamed consumers unused this long are expired (pruning.py)."""
        self.db = db
        self.caches = caches
        self.wakeups = wakeups
        self.bridge = bridge
        self.recheck_interval = recheck_interval
        self.ttl_ms = ttl_ms
        self._touched: dict[int, float] = {}
        self._positions = position_sql(db)  # fetch's read and commit's move (positions.py)

    # --- registrations -----------------------------------------------------------------------
    @retry_stale_topic
    def register(self, topic: str, name: str | None = None,
                 start: str | int = "earliest") -> int:
        """A new consumer at the topic's start, end, or first message appended at or after
        a time (`start` in microseconds); a named one already there is resumed. One
        transaction."""
        try:
            with self.db.transaction(write=True) as conn:
                topic_id = self.caches.topic_id(topic, conn)
                existing = self._named(conn, topic_id, name)
                if existing is not None:
                    return existing
                position = reads.start_offset(conn, topic_id, start)
                if position is None:
                    self.caches.topic_gone(topic)
                consumer_id = self.db.insert_with_new_id(conn, q.INSERT_CONSUMER, {
                    "topic": topic_id, "name": name, "position": position})
        except NameTaken:  # the same name registered concurrently: that registration won
            with self.db.transaction() as conn:
                existing = self._named(conn, self.caches.topic_id(topic), name)
            if existing is None:
                raise
            return existing
        self.caches.consumers.remember(consumer_id, topic_id)
        return consumer_id

    @staticmethod
    def _named(conn: Connection, topic_id: int, name: str | None) -> int | None:
        if name is None:
            return None
        return conn.execute(q.SELECT_NAMED_CONSUMER, {"topic": topic_id, "name": name}).scalar()

    @retry_stale_topic
    def unregister(self, topic: str, consumer_id: int) -> None:
        self.caches.consumers.unregister(self.caches.topic_id(topic), consumer_id)
        with self.db.transaction(write=True) as conn:
            conn.execute(q.DELETE_CONSUMER_LEASES, {"consumer": consumer_id})

    def check(self, topic: str, consumer_id: int) -> int:
        """The topic's id, once `consumer_id` is registered for it (and marked in use)."""
        topic_id = self.caches.topic_id(topic)
        self.caches.consumers.check(consumer_id, topic_id)
        self._touch(consumer_id)
        return topic_id

    def _touch(self, consumer_id: int) -> None:
        """Record that the consumer is in use (its last activity, and what its TTL counts
        from): at most every TTL/4 (and 30 s) per process."""
        now = time.monotonic()
        interval = min(TOUCH_EVERY_MAX, self.ttl_ms / 4000) if self.ttl_ms else TOUCH_EVERY_MAX
        if now - self._touched.get(consumer_id, -interval) < interval:
            return
        remember(self._touched, consumer_id, now)
        with self.db.transaction(write=True) as conn:
            conn.execute(q.TOUCH_CONSUMER, {"now": now_us(), "id": consumer_id})

    # --- reads -------------------------------------------------------------------------------
    @retry_stale_topic
    def consume(self, topic: str, consumer_id: int, limit: int, wait: float = 0.0,
                max_bytes: int | None = None) -> Batch:
        """Take up to `limit` messages (and `max_bytes` of text, at least one message) and move
        the position past them, waiting up to `wait`."""
        topic_id = self.check(topic, consumer_id)
        with self.db.transaction() as conn, driver_cursor(conn) as cursor:
            reads.registration(cursor, consumer_id)  # refuses a registration with leases out
        return self.wait_for(topic_id, consumer_id, wait, lambda: self.db.dialect.take(
            self.db, topic_id, consumer_id, limit, max_bytes))

    @retry_stale_topic
    def fetch(self, topic: str, consumer_id: int, limit: int, wait: float = 0.0,
              offset: int | None = None, start: str | int | None = None,
              max_bytes: int | None = None) -> tuple[Batch, int]:
        """Read up to `limit` messages (and `max_bytes` of text, at least one) from `offset`
        (default: where `start` is now, as on register, else the position) without moving
        the position."""
        topic_id = self.check(topic, consumer_id)
        position = 0
        if offset is None and start is not None:
            with self.db.transaction() as conn:
                offset = reads.start_offset(conn, topic_id, start)
            if offset is None:
                self.caches.topic_gone(topic)

        def read() -> Batch:
            nonlocal position
            position, found = self._positions.read(topic_id, consumer_id, offset, limit,
                                                   max_bytes)
            start = position if offset is None else offset
            return Batch(found, found[0][0] - start if found else 0)

        batch = self.wait_for(topic_id, consumer_id, wait, read)
        return batch, position

    @retry_stale_topic
    def commit(self, topic: str, consumer_id: int, offset: int) -> int:
        """Move the position forward to `offset` (the next to read); never backward. One
        statement on PostgreSQL, a write transaction on SQLite (positions.py)."""
        self.check(topic, consumer_id)
        return self._positions.commit(consumer_id, offset)

    @retry_stale_topic
    def size(self, topic: str, consumer_id: int) -> int:
        """How many messages wait at or after the position."""
        self.check(topic, consumer_id)
        with self.db.transaction() as conn:
            position, first, next_offset = reads.lag(conn, consumer_id)
        return max(0, next_offset - max(position, first))

    def wait_for(self, topic_id: int, consumer_id: int, wait: float,
                 attempt: Callable[[], F]) -> F:
        """`_poll`, holding a long-poll slot (wakeups.py) for the wait, or not waiting."""
        with self.wakeups.slot(wait) as allowed:
            return self._poll(topic_id, consumer_id, allowed, attempt)

    def _poll(self, topic_id: int, consumer_id: int, wait: float,
              attempt: Callable[[], F]) -> F:
        """`attempt()` until it finds messages or `wait` seconds pass. Between attempts, wait
        for a wake-up, or at most the re-check interval."""
        deadline = time.monotonic() + wait
        if wait > 0 and self.bridge is not None:
            self.bridge.ensure_listening()
        while True:
            version = self.wakeups.version(topic_id)
            found = attempt()
            if found.messages:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.wakeups.closed:
                # Nothing to read: make sure that is not because the consumer is gone.
                with self.db.transaction() as conn:
                    reads.position(conn, consumer_id)
                return found
            self.wakeups.wait(topic_id, version, min(self.recheck_interval, remaining))
