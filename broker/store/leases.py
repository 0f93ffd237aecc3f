"""Leases: a registration's work handed out in contiguous offset ranges (consumer groups).

Several processes using one registration each ask for a lease, work on its messages and ack
it. A hand-out locks the registration's row (the dialect's `lock_consumer`), so hand-outs of
one registration serialize across processes and brokers: it gives the oldest expired lease
again (a redelivery, under a new id: the old holder's ack then finds nothing, `lease_lost`),
else the next range after the dispatch cursor (the registration's `position` column), and
moves the cursor past it. Ack deletes the lease; the registration's position as everyone
else sees it is the first offset of its oldest lease, or the cursor (queries.POSITION_OF_C).

A lease request may carry the ack of the asker's previous lease (`ack`): it is done in the
hand-out's transaction, so a holder that goes lease by lease pays one request and one synced
commit per range, as fetch + commit does, instead of two.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import LeaseLost
from . import queries as q
from . import reads
from .caches import Caches, RegistrationGone, remember, retry_stale_topic
from .consumers import Consumers
from .database import ID_ATTEMPTS, Database
from .driver import DriverCursor, driver_cursor
from .records import LeasedBatch, LeaseInfo, new_id, now_us

NOTHING = LeasedBatch(None, [])
HOLDER_SEEN_EVERY = 10.0  # seconds between two records of one holder asking, per process


class Leases:
    def __init__(self, db: Database, caches: Caches, consumers: Consumers,
                 released: Callable[[int], None]) -> None:
        """`released(topic_id)` wakes askers waiting on the topic, in every process."""
        self.db = db
        self.caches = caches
        self.consumers = consumers
        self.released = released
        self._seen_at: dict[tuple[int, str], float] = {}

    @retry_stale_topic
    def lease(self, topic: str, consumer_id: int, limit: int, lease_ms: int, wait: float = 0.0,
              holder: str | None = None, max_bytes: int | None = None,
              ack: int | None = None) -> LeasedBatch:
        """A lease of up to `limit` messages (and `max_bytes` of text, at least one) for
        `lease_ms`, waiting up to `wait` seconds for work (appends wake the wait; expiries are
        found at the next re-check). A redelivered range is the range it was. `ack`: a lease
        acked first, in the first hand-out's transaction (committed even when nothing is
        handed out); LeaseLost, and nothing handed out, when it is no longer this
        registration's."""
        topic_id = self.consumers.check(topic, consumer_id)
        self._seen(consumer_id, holder or "")
        grant = _Grant(topic_id, consumer_id, limit, lease_ms, holder, max_bytes)
        pending = ack

        def attempt() -> LeasedBatch:
            nonlocal pending
            found = self._hand_out(grant, pending)
            pending = None  # acked (committed) by the first attempt
            return found

        return self.consumers.wait_for(topic_id, consumer_id, wait, attempt)

    @retry_stale_topic
    def ack(self, topic: str, consumer_id: int, lease_id: int) -> int:
        """The lease's range is done; the registration's position after it."""
        self.consumers.check(topic, consumer_id)
        with self.db.transaction(write=True) as conn:
            params = {"lease": lease_id, "consumer": consumer_id}
            if not conn.execute(q.ACK_LEASE, params).rowcount:
                raise _lost(lease_id)
            return reads.lag(conn, consumer_id)[0]

    @retry_stale_topic
    def extend(self, topic: str, consumer_id: int, lease_id: int, lease_ms: int) -> LeaseInfo:
        """Keep the lease `lease_ms` from now: the holder is still at work."""
        self.consumers.check(topic, consumer_id)
        expires = now_us() + lease_ms * 1000
        with self.db.transaction(write=True) as conn:
            row = conn.execute(q.EXTEND_LEASE, {"lease": lease_id, "consumer": consumer_id,
                                                "expires": expires}).first()
        if row is None:
            raise _lost(lease_id)
        first, last, deliveries = row
        return LeaseInfo(lease_id, first, last, expires, deliveries)

    @retry_stale_topic
    def release(self, topic: str, consumer_id: int, lease_id: int) -> None:
        """Give the lease back unfinished: it is handed out again at once."""
        topic_id = self.consumers.check(topic, consumer_id)
        with self.db.transaction(write=True) as conn:
            params = {"lease": lease_id, "consumer": consumer_id}
            if not conn.execute(q.RELEASE_LEASE, params).rowcount:
                raise _lost(lease_id)
        self.released(topic_id)

    def _seen(self, consumer_id: int, holder: str) -> None:
        """Record that `holder` asks for this registration's leases (for /stats), at most
        every HOLDER_SEEN_EVERY seconds per process."""
        now = time.monotonic()
        key = (consumer_id, holder)
        if now - self._seen_at.get(key, -HOLDER_SEEN_EVERY) < HOLDER_SEEN_EVERY:
            return
        remember(self._seen_at, key, now)
        with self.db.transaction(write=True) as conn:
            conn.execute(q.SEEN_HOLDER, {"consumer": consumer_id, "holder": holder,
                                         "now": now_us()})

    # --- hand-outs -----------------------------------------------------------------------------
    def _hand_out(self, grant: _Grant, ack: int | None = None) -> LeasedBatch:
        """One write transaction on the driver's cursor (a hand-out is the hot path of a group:
        SQLAlchemy's statement machinery cost more than the statements): the locked look at
        the registration, the ack, an expired lease when one is due, else the next range."""
        if ack is None and not self._may_find_work(grant.consumer_id):
            return NOTHING  # the common idle poll: no write lock taken
        with self.db.transaction(write=True) as conn, driver_cursor(conn) as cursor:
            row = cursor.execute(self.db.dialect.lock_consumer,
                                 {"id": grant.consumer_id}).fetchone()
            if row is None:  # unregistered, or the topic deleted (then retried: caches.py)
                raise RegistrationGone("consumer", grant.consumer_id)
            position, kept, next_offset, soonest = row
            if ack is not None and not cursor.execute(
                    q.ACK_LEASE, {"lease": ack, "consumer": grant.consumer_id}).rowcount:
                raise _lost(ack)
            skipped = 0
            now = now_us()
            if soonest is not None and soonest <= now:
                skipped, found = self._redeliver(cursor, grant, kept, now)
                if found is not None:
                    return LeasedBatch(found.lease, found.messages, skipped)
            start = max(position, kept)
            if start >= next_offset:
                return LeasedBatch(None, [], skipped)
            messages = self.db.dialect.page(cursor, grant.topic_id, start, grant.limit,
                                            grant.max_bytes)
            if not messages:
                return LeasedBatch(None, [], skipped)
            first, last = messages[0][0], messages[-1][0]
            cursor.execute(q.SET_CONSUMER_POSITION, {"position": last + 1,
                                                     "id": grant.consumer_id})
            lease = self._insert(cursor, grant, first, last, 1, now)
            return LeasedBatch(lease, messages, skipped + first - position)

    def _may_find_work(self, consumer_id: int) -> bool:
        """Whether the cursor is behind the topic's end or a lease has expired."""
        with self.db.transaction() as conn, driver_cursor(conn) as cursor:
            row = cursor.execute(q.SELECT_LEASE_WORK, {"id": consumer_id}).fetchone()
        if row is None:
            raise RegistrationGone("consumer", consumer_id)
        cursor_at, next_offset, soonest = row
        return cursor_at < next_offset or (soonest is not None and soonest <= now_us())

    def _redeliver(self, cursor: DriverCursor, grant: _Grant, kept: int,
                   now: int) -> tuple[int, LeasedBatch | None]:
        """The oldest expired lease again, under a new id with `deliveries` + 1; a range that
        retention pruned whole is dropped and counted as skipped. (skipped, the lease)."""
        skipped = 0
        params = {"consumer": grant.consumer_id, "now": now}
        while (row := cursor.execute(q.SELECT_EXPIRED_LEASE, params).fetchone()) is not None:
            old_id, first, last, deliveries = row
            if not cursor.execute(q.TAKE_EXPIRED_LEASE, {"lease": old_id, "now": now}).rowcount:
                continue  # acked or extended by its holder meanwhile (another process)
            start = max(first, kept)
            skipped += start - first if start <= last else last - first + 1
            if start > last:
                continue
            messages = self.db.dialect.page(cursor, grant.topic_id, start, last - start + 1)
            lease = self._insert(cursor, grant, start, last, deliveries + 1, now)
            return skipped, LeasedBatch(lease, messages)
        return skipped, None

    def _insert(self, cursor: DriverCursor, grant: _Grant, first: int, last: int,
                deliveries: int, now: int) -> LeaseInfo:
        """The lease row, under a new random id (a taken one inserts nothing: another)."""
        expires = now + grant.lease_ms * 1000
        params = {"consumer": grant.consumer_id, "topic": grant.topic_id, "first": first,
                  "last": last, "expires": expires, "deliveries": deliveries,
                  "holder": grant.holder, "now": now}
        for _ in range(ID_ATTEMPTS):
            params["id"] = lease_id = new_id()
            if cursor.execute(q.INSERT_LEASE, params).rowcount:
                return LeaseInfo(lease_id, first, last, expires, deliveries)
        raise RuntimeError("could not find a free random id")


@dataclass(frozen=True, slots=True)
class _Grant:
    """What one lease request asks for."""

    topic_id: int
    consumer_id: int
    limit: int
    lease_ms: int
    holder: str | None
    max_bytes: int | None = None  # a new range stops there (at least one message)


def _lost(lease_id: int) -> LeaseLost:
    return LeaseLost(f"lease {lease_id} is no longer yours: it expired and was handed out "
                     "again, or it was acked or released already")
