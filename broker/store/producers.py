"""Producers: registrations and appends.

Batch is the primitive: concurrent appends to one topic in one process share a transaction
(groupcommit.py), whose statements run on the driver's own connection in two round trips
(appends.py). The idempotence rule lives here too: an append with a seq the producer already
applied answers with that append's offsets, whatever it holds now.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from ..errors import BrokerError, Unavailable, UnknownId, UnknownTopic
from ..groupcommit import GroupCommit
from . import queries as q
from .appends import LastSeq, SeqUpdate, append_sql
from .caches import Caches, retry_stale_topic
from .database import Database
from .records import AppendRequest, AppendResult, now_us
from .topics import Topics

log = logging.getLogger("broker.store")


def replay(seq: int, last: LastSeq) -> AppendResult | None:
    """The idempotence rule: a seq equal to the producer's last applied one gets that
    append's offsets again, a lower one a bare duplicate; a higher one appends."""
    last_seq, last_first, last_last = last
    if last_seq is None or seq > last_seq:
        return None
    if seq == last_seq:
        return AppendResult(last_first, last_last, duplicate=True)
    return AppendResult(None, None, duplicate=True)


class _Plan:
    """One group's offsets, rows and seq updates, worked out under the counter's lock."""

    def __init__(self, next_offset: int, last: dict[int, LastSeq]) -> None:
        self.offset = next_offset
        self.last = last
        self.rows: list[tuple[int, str]] = []
        self.seq_updates: dict[int, SeqUpdate] = {}  # by producer: the last of the group's
        self.results: list[AppendResult] = []

    def add(self, request: AppendRequest) -> None:
        if request.producer_id not in self.last:  # unregistered meanwhile
            self.results.append(AppendResult(None, None, error=UnknownId(
                f"producer id {request.producer_id} is unknown")))
            return
        if request.seq is not None:
            earlier = replay(request.seq, self.last[request.producer_id])
            if earlier is not None:
                self.results.append(earlier)
                return
        first = self.offset
        self.offset += len(request.bodies)
        last = self.offset - 1
        self.rows.extend(zip(range(first, self.offset), request.bodies, strict=True))
        if request.seq is not None:
            self.last[request.producer_id] = (request.seq, first, last)
            self.seq_updates[request.producer_id] = (request.producer_id, request.seq, first, last)
        self.results.append(AppendResult(first, last))


class Producers:
    def __init__(self, db: Database, caches: Caches, topics: Topics,
                 appended: Callable[[int], None]) -> None:
        """`appended(topic_id)`: called after each commit that added messages (wake-ups)."""
        self.db = db
        self.caches = caches
        self.topics = topics
        self._appended = appended
        self._sql = append_sql(db.dialect)
        self._appenders: dict[int, GroupCommit[AppendRequest, AppendResult]] = {}
        self._appenders_lock = threading.Lock()
        caches.on_forget_topic(lambda topic_id: self._appenders.pop(topic_id, None))

    @retry_stale_topic
    def register(self, topic: str) -> int:
        """Register a producer, creating the topic if it is missing: one transaction."""
        with self.db.transaction(write=True) as conn:
            topic_id = self.topics.ensure(topic, conn)
            # The topic row locked: a concurrent delete cannot leave this registration behind.
            self.topics.lock_counter(topic, topic_id, conn)
            producer_id = self.db.insert_with_new_id(conn, q.INSERT_PRODUCER, {"topic": topic_id})
        self.caches.producers.remember(producer_id, topic_id)
        return producer_id

    @retry_stale_topic
    def unregister(self, topic: str, producer_id: int) -> None:
        self.caches.producers.unregister(self.caches.topic_id(topic), producer_id)

    @retry_stale_topic
    def append(self, topic: str, request: AppendRequest,
               refusal: BrokerError | None = None) -> AppendResult:
        """Append one request's messages, grouped with concurrent appends to the same topic.

        `refusal`: why the broker will not store this content now (too large since a
        restart with a smaller limit, say). A retry of an applied seq still gets that
        append's answer (else it would be stored again, split, under new seqs); any other
        request gets the refusal.
        """
        if refusal is not None:
            earlier = None if request.seq is None else self._replayed(topic, request)
            if earlier is None:
                raise refusal
            return earlier
        topic_id = self.caches.topic_id(topic)
        self.caches.producers.check(request.producer_id, topic_id)
        try:
            result = self._appender(topic_id).submit(request, len(request.bodies))
        except UnknownTopic:
            self.caches.topic_gone(topic)
        if result.error is not None:
            self.caches.producers.forget(request.producer_id)
            raise result.error
        return result

    def _replayed(self, topic: str, request: AppendRequest) -> AppendResult | None:
        topic_id = self.caches.topic_id(topic)
        with self.db.transaction() as conn:
            row = conn.execute(q.SELECT_PRODUCER_SEQ,
                               {"topic": topic_id, "id": request.producer_id}).first()
        return None if row is None else replay(request.seq, tuple(row[1:]))

    def _appender(self, topic_id: int) -> GroupCommit[AppendRequest, AppendResult]:
        appender = self._appenders.get(topic_id)
        if appender is None:
            with self._appenders_lock:
                appender = self._appenders.setdefault(
                    topic_id, GroupCommit(lambda group: self._append_group(topic_id, group),
                                          shared_errors=(Unavailable,),
                                          timeout=self.db.timeout))
        return appender

    def _append_group(self, topic_id: int, group: Sequence[AppendRequest]) -> list[AppendResult]:
        """One transaction for the group: the counter row locked, the seqs read under the
        lock, the rows inserted, the counter and the seqs moved, committed (appends.py)."""
        stamp = now_us()
        producer_ids = sorted({r.producer_id for r in group})
        with self.db.driver_connection(write=True) as conn, self._sql.session(conn):
            next_offset, last = self._sql.lock_and_read(conn, topic_id, producer_ids)
            if next_offset is None:
                raise UnknownTopic("the topic was deleted")
            plan = _Plan(next_offset, last)
            for request in group:
                plan.add(request)
            self._sql.write_and_commit(conn, topic_id, stamp, plan.rows, plan.offset,
                                       list(plan.seq_updates.values()))
        if plan.rows:  # committed: wake-ups are hints and must not fail the append
            try:
                self._appended(topic_id)
            except Exception as exc:  # noqa: BLE001 - waiters re-check the database anyway
                log.warning("wake-up after append failed: %s", exc)
        return plan.results
