"""Reads of a consumer's position and a topic's messages, shared by consume, fetch, size and
the dialects' take. A missing consumer row raises `RegistrationGone`."""

from __future__ import annotations

from sqlalchemy import Connection

from .caches import RegistrationGone
from .queries import (
    SELECT_CONSUMER_LAG,
    SELECT_CONSUMER_POSITION,
    SELECT_MESSAGES,
    SELECT_OFFSET_TIMES,
    SELECT_TOPIC_BOUNDS,
)
from .records import Message


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


def messages(conn: Connection, topic_id: int, start: int, limit: int) -> list[Message]:
    rows = conn.execute(SELECT_MESSAGES, {"topic": topic_id, "start": start, "limit": limit})
    return list(map(Message._make, rows.all()))


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
