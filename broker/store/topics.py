"""Topics: create, find, change, describe, delete, list."""

from __future__ import annotations

from sqlalchemy import Connection

from ..errors import UnknownTopic
from ..wakeups import Wakeups
from . import queries as q
from .caches import Caches, retry_stale_topic
from .database import Database
from .records import HOLDERS_WINDOW_US, ConsumerInfo, TopicInfo, TopicStats, now_us


class Topics:
    def __init__(self, db: Database, caches: Caches, wakeups: Wakeups) -> None:
        self.db = db
        self.caches = caches
        self.wakeups = wakeups

    def create(self, name: str, retention_ms: int | None = None,
               retention_messages: int | None = None) -> None:
        """TopicExists when the name is taken (driver.py maps the constraint)."""
        with self.db.transaction(write=True) as conn, self.db.translated(name=name):
            conn.execute(q.INSERT_TOPIC, {"name": name, "now": now_us(),
                                          "retention_ms": retention_ms or None,
                                          "retention_messages": retention_messages or None})

    def ensure(self, name: str, conn: Connection) -> int:
        """The topic's id, creating the topic if it is missing, in the caller's write
        transaction."""
        try:
            return self.caches.topic_id(name, conn)
        except UnknownTopic:
            pass
        conn.execute(q.INSERT_TOPIC_IF_MISSING, {"name": name, "now": now_us()})
        return self.caches.topic_id(name, conn)

    def lock_counter(self, name: str, topic_id: int, conn: Connection) -> int:
        """Lock the topic's counter row for the caller's write transaction (an append, a
        registration or a delete), so none of them interleave; its next offset."""
        next_offset = conn.execute(self.db.dialect.lock_topic_counter, {"topic": topic_id}
                                   ).scalar()
        if next_offset is None:
            self.caches.topic_gone(name)
        return next_offset

    @retry_stale_topic
    def set_retention(self, name: str, retention_ms: int | None,
                      retention_messages: int | None) -> None:
        """Change a topic's retention; 0 or None means no limit of that kind."""
        topic_id = self.caches.topic_id(name)
        with self.db.transaction(write=True) as conn:
            changed = conn.execute(q.SET_TOPIC_RETENTION, {
                "topic": topic_id, "retention_ms": retention_ms or None,
                "retention_messages": retention_messages or None}).rowcount
        if not changed:
            self.caches.topic_gone(name)

    @retry_stale_topic
    def describe(self, name: str) -> TopicInfo:
        topic_id = self.caches.topic_id(name)
        with self.db.transaction() as conn:
            row = conn.execute(q.SELECT_TOPIC, {"topic": topic_id}).first()
            if row is None:
                self.caches.topic_gone(name)
            consumers = conn.execute(q.SELECT_TOPIC_CONSUMERS, {
                "topic": topic_id, "since": now_us() - HOLDERS_WINDOW_US}).all()
            producers = conn.execute(q.COUNT_TOPIC_PRODUCERS, {"topic": topic_id}).scalar_one()
        _, first, next_offset, retention_ms, retention_messages, created_us = row
        return TopicInfo(name, first, next_offset, retention_ms, retention_messages, created_us,
                         producers, [_registration(row, first, next_offset)
                                     for row in consumers])

    @retry_stale_topic
    def delete(self, name: str) -> None:
        """Delete a topic's messages, registrations and counters; the name can be reused."""
        topic_id = self.caches.topic_id(name)
        with self.db.transaction(write=True) as conn:
            self.lock_counter(name, topic_id, conn)
            for statement in q.DELETE_TOPIC:
                conn.execute(statement, {"topic": topic_id})
        self.caches.forget_topic(name, topic_id)
        self.wakeups.notify(topic_id)  # long-polls on it re-check and find it gone

    def names(self) -> list[str]:
        with self.db.transaction() as conn:
            return [row[0] for row in conn.execute(q.SELECT_TOPIC_NAMES)]

    def stats(self, active_ms: int | None = None) -> list[TopicStats]:
        """Every topic's counts, and its registrations. With `active_ms`, only the
        registrations used within that long count (lag is not distorted by ones nobody
        uses any more)."""
        now = now_us()
        active_since = max(0, now - active_ms * 1000) if active_ms else 0
        with self.db.transaction() as conn:
            topics = conn.execute(q.SELECT_STATS).all()
            rows = conn.execute(q.SELECT_REGISTRATIONS, {
                "since": now - HOLDERS_WINDOW_US, "active_since": active_since}).all()
        by_topic: dict[str, list[tuple]] = {}
        for name, *row in rows:
            by_topic.setdefault(name, []).append(row)
        found = []
        for name, first, next_offset in topics:
            regs = tuple(_registration(r, first, next_offset) for r in by_topic.get(name, ()))
            found.append(TopicStats(name, first, next_offset, len(regs),
                                    max((r.lag for r in regs), default=0), regs))
        return found


def _registration(row: tuple, first: int, next_offset: int) -> ConsumerInfo:
    name, position, active_us, leases, holders = row
    return ConsumerInfo(name, position, next_offset - max(position, first), active_us, leases,
                        holders)
