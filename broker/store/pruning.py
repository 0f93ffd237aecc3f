"""Pruning: retention over every topic, then idle unnamed consumers past their TTL (and the
leases of registrations that are gone).

Each round is bounded (PRUNE_BATCH messages per topic and transaction), so it never holds a
lock an append needs for long; broker/retention.py runs rounds in the background. On
PostgreSQL one broker at a time prunes (the dialect's advisory lock); the others skip.
"""

from __future__ import annotations

from . import queries as q
from .database import Database
from .records import now_us

PRUNE_BATCH = 10_000  # messages deleted per pruning transaction
HOLDERS_KEPT_US = 3600 * 1_000_000  # lease holders not seen for an hour are forgotten


class Pruner:
    def __init__(self, db: Database, default_retention_ms: int | None = None,
                 consumer_ttl_ms: int | None = None) -> None:
        self.db = db
        self.default_retention_ms = default_retention_ms
        self.consumer_ttl_ms = consumer_ttl_ms

    def prune(self) -> int:
        """One bounded round; the number of messages deleted (0: nothing left to do)."""
        with self.db.dialect.prune_turn(self.db.engine) as mine:
            return self._housekeeping() if mine else 0

    def _housekeeping(self) -> int:
        pruned = self._prune_topics()
        with self.db.transaction(write=True) as conn:
            if self.consumer_ttl_ms:
                conn.execute(q.EXPIRE_CONSUMERS,
                             {"cutoff": now_us() - self.consumer_ttl_ms * 1000})
            conn.execute(q.DELETE_ORPHAN_LEASES)
            conn.execute(q.PRUNE_HOLDERS, {"cutoff": now_us() - HOLDERS_KEPT_US})
        return pruned

    def _prune_topics(self) -> int:
        pruned = 0
        with self.db.transaction() as conn:
            topics = conn.execute(q.SELECT_RETAINED_TOPICS).all()
        for topic_id, first, next_offset, retention_ms, retention_messages in topics:
            cut = self._cut(topic_id, first, next_offset,
                            retention_ms or self.default_retention_ms, retention_messages)
            if cut <= first:
                continue
            with self.db.transaction(write=True) as conn:
                conn.execute(q.PRUNE_MESSAGES, {"topic": topic_id, "start": first, "cut": cut})
                conn.execute(q.MOVE_FIRST_OFFSET, {"topic": topic_id, "cut": cut})
            pruned += cut - first
        return pruned

    def _cut(self, topic_id: int, first: int, next_offset: int, retention_ms: int | None,
             retention_messages: int | None) -> int:
        """The first offset to keep after this round (at most PRUNE_BATCH past `first`)."""
        if not retention_ms and not retention_messages:
            return first
        cut = max(first, next_offset - retention_messages) if retention_messages else first
        cut = min(cut, first + PRUNE_BATCH)
        if retention_ms and cut < first + PRUNE_BATCH:
            cut = self._expired_until(topic_id, cut, first + PRUNE_BATCH - cut,
                                      now_us() - retention_ms * 1000)
        return cut

    def _expired_until(self, topic_id: int, start: int, limit: int, cutoff_us: int) -> int:
        """The first offset at or after `start` (within `limit`) not older than the cutoff."""
        with self.db.transaction() as conn:
            rows = conn.execute(q.SELECT_OFFSET_TIMES,
                                {"topic": topic_id, "start": start, "limit": limit}).all()
        for offset, ts_us in rows:
            if ts_us >= cutoff_us:
                return offset
        return rows[-1][0] + 1 if rows else start
