"""Reads of a consumer's position and a topic's messages, shared by consume, fetch, size,
leases and the dialects' take. A missing consumer row raises `RegistrationGone`. The pages
of messages themselves are the dialect's (Dialect.page): how to bound one by its size
differs between the databases."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from sqlalchemy import Connection

from ..errors import Leased
from .caches import RegistrationGone
from .driver import DriverCursor, driver_cursor
from .queries import (
    SELECT_CONSUMER_LAG,
    SELECT_CONSUMER_POSITION,
    SELECT_CONSUMER_READ,
    SELECT_OFFSET_TIMES,
    SELECT_TOPIC_BOUNDS,
)
from .records import Message, Row

if TYPE_CHECKING:
    from .dialect import Dialect  # which imports this module

UNBOUNDED = 2**62  # a byte bound no page reaches


def position(conn: Connection, consumer_id: int) -> int:
    found = conn.execute(SELECT_CONSUMER_POSITION, {"id": consumer_id}).scalar()
    if found is None:
        raise RegistrationGone("consumer", consumer_id)
    return found


def lag(conn: Connection, consumer_id: int) -> tuple[int, int, int]:
    """The consumer's position and its topic's first and next offsets."""
    row = conn.execute(SELECT_CONSUMER_LAG, {"id": consumer_id}).first()
    if row is None:
        raise RegistrationGone("consumer", consumer_id)
    return tuple(row)


def start_offset(conn: Connection, topic_id: int, start: str | int) -> int | None:
    """Where `start` ('earliest', 'latest' or a time in microseconds) is in the topic now;
    None when the topic is gone."""
    bounds = conn.execute(SELECT_TOPIC_BOUNDS, {"topic": topic_id}).first()
    if bounds is None:
        return None
    first, end = bounds
    if start == "earliest":
        return first
    if start == "latest":
        return end
    return offset_at(conn, topic_id, int(start), first, end)


def offset_at(conn: Connection, topic_id: int, ts_us: int, first: int, end: int) -> int:
    """The offset of the first message appended at or after `ts_us` (`end` if none was).

    A binary search on offsets: each step is one primary-key probe, (topic_id, msg_offset)
    >= mid LIMIT 1. EXPLAIN on 200,000 messages: PostgreSQL "Limit -> Index Scan using
    lq_messages_pkey, Index Cond: topic_id = 1 AND msg_offset >= 100000" (0.04 ms); SQLite
    "SEARCH lq_messages USING INDEX sqlite_autoindex_lq_messages_1 (topic_id=? AND
    msg_offset>?)". So about log2(messages) index probes, and no index on time that every
    append would pay for. Append times rise
    with offsets: a group takes its time just before it takes its offsets, so only groups
    committed within the same moment by different processes can be out of order, and the
    answer is then at most that moment's messages off.
    """
    lo, hi = first, end
    while lo < hi:
        mid = (lo + hi) // 2
        row = conn.execute(SELECT_OFFSET_TIMES, {"topic": topic_id, "start": mid,
                                                 "limit": 1}).first()
        if row is None or row[1] >= ts_us:
            hi = mid
        else:
            lo = row[0] + 1  # offsets between mid and row[0] were pruned meanwhile
    return lo
def registration(cursor: DriverCursor, consumer_id: int) -> int:
    """The consumer's position, once it is known to hand out no leases (consume, fetch and
    commit would pass messages handed out in leases: one registration is drained one way at
    a time)."""
    row = cursor.execute(SELECT_CONSUMER_READ, {"id": consumer_id}).fetchone()
    if row is None:
        raise RegistrationGone("consumer", consumer_id)
    position, leased = row
    if leased:
        raise refusal(consumer_id)
    return position


def refusal(consumer_id: int) -> Leased:
    return Leased(f"consumer {consumer_id} hands out its messages in leases: use "
                  "/consumer/lease and /consumer/ack (or another consumer name)")


def messages(dialect: Dialect, conn: Connection, topic_id: int, start: int, limit: int,
             max_bytes: int | None = None) -> list[Message]:
    """Up to `limit` messages from `start`, at most `max_bytes` of text (Dialect.page), as
    named tuples."""
    with driver_cursor(conn) as cursor:
        return list(map(Message._make, dialect.page(cursor, topic_id, start, limit, max_bytes)))


def within(found: Iterable[Row], max_bytes: int) -> list[Row]:
    """The longest prefix of `found` with at most `max_bytes` of text, and at least one."""
    page: list[Row] = []
    total = 0
    for row in found:
        body = row[1]
        total += len(body) if body.isascii() else len(body.encode("utf-8"))
        if page and total > max_bytes:
            break
        page.append(row)
    return page
