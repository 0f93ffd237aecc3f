"""Reads of a topic's past that take no registration: the web page's live tail and its
appends-per-second history. Nothing here writes, so reading never moves a consumer or
registers one."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection

from . import queries as q
from . import reads
from .caches import Caches, retry_stale_topic
from .database import Database
from .records import Message, now_us

US = 1_000_000
#: Up to this many messages in the window, the counts are exact (one bounded range scan).
EXACT_MAX = 20_000
#: Past EXACT_MAX, this many evenly spaced messages are read and each counts for its share.
SAMPLES = 1_000


@dataclass(frozen=True, slots=True)
class Tail:
    first_offset: int
    next_offset: int
    messages: list[Message]


@dataclass(frozen=True, slots=True)
class Appends:
    """Appends per second, oldest first: `counts[i]` for the second starting `start_s + i`
    (UTC, in seconds since the epoch); the last second is the one under way."""

    start_s: int
    counts: list[int]
    exact: bool
    next_offset: int


class History:
    def __init__(self, db: Database, caches: Caches) -> None:
        self.db = db
        self.caches = caches

    def _bounds(self, conn: Connection, topic: str, topic_id: int) -> tuple[int, int]:
        bounds = conn.execute(q.SELECT_TOPIC_BOUNDS, {"topic": topic_id}).first()
        if bounds is None:
            self.caches.topic_gone(topic)
        return bounds

    @retry_stale_topic
    def tail(self, topic: str, offset: int | None, limit: int, max_bytes: int) -> Tail:
        """Up to `limit` messages (and `max_bytes` of text, at least one) from `offset`, or
        without one the last `limit`; an offset retention removed reads from the first kept."""
        topic_id = self.caches.topic_id(topic)
        with self.db.transaction() as conn:
            first, end = self._bounds(conn, topic, topic_id)
            start = max(first, end - limit if offset is None else offset)
            found = (reads.messages(self.db.dialect, conn, topic_id, start, limit, max_bytes)
                     if start < end else [])
        return Tail(first, end, found)

    @retry_stale_topic
    def appends(self, topic: str, seconds: int) -> Appends:
        """How many messages were appended in each of the last `seconds` seconds, by their
        append times. Bounded: the window's first offset by a binary search (reads.offset_at),
        then one range scan of at most EXACT_MAX rows, or SAMPLES probes past that (then
        each second's count is an estimate, within a sample's share of the window)."""
        topic_id = self.caches.topic_id(topic)
        start_s = now_us() // US - seconds + 1
        with self.db.transaction() as conn:
            first, end = self._bounds(conn, topic, topic_id)
            lo = reads.offset_at(conn, topic_id, start_s * US, first, end)
            exact = end - lo <= EXACT_MAX
            if exact:
                per_second = conn.execute(q.SELECT_APPENDS_PER_SECOND, {
                    "topic": topic_id, "start": lo, "stop": end}).all()
            else:
                per_second = _sampled(conn, topic_id, lo, end)
        counts = [0] * seconds
        for second, count in per_second:
            # A time past now (another broker's clock runs ahead) counts as this second.
            index = min(int(second) - start_s, seconds - 1)
            if index >= 0:
                counts[index] += int(count)
        return Appends(start_s, counts, exact, end)


def _sampled(conn: Connection, topic_id: int, lo: int, end: int) -> list[tuple[int, int]]:
    """(second, messages) estimated from SAMPLES evenly spaced offsets of [lo, end): each
    sample stands for the messages up to the next one, so the counts add up to end - lo."""
    span = end - lo
    offsets = sorted({lo + span * i // SAMPLES for i in range(SAMPLES)})
    times = dict(conn.execute(q.SELECT_TIMES_AT, {"topic": topic_id, "offsets": offsets}).all())
    per_second: dict[int, int] = {}
    found = [o for o in offsets if o in times]
    for offset, following in zip(found, [*found[1:], end], strict=True):
        second = times[offset] // US
        per_second[second] = per_second.get(second, 0) + following - offset
    return list(per_second.items())
