"""Reads of a consumer's position and a topic's messages, shared by consume, fetch, size and
the dialects' take. A missing consumer row raises `RegistrationGone`."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection

from .caches import RegistrationGone
from .queries import (
    SELECT_CONSUMER_LAG,
    SELECT_CONSUMER_POSITION,
    SELECT_MESSAGES,
    SELECT_MESSAGES_WITHIN_PG,
    SELECT_OFFSET_TIMES,
    SELECT_TOPIC_BOUNDS,
)
from .records import Message

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
def messages(conn: Connection, topic_id: int, start: int, limit: int,
             max_bytes: int | None = None) -> list[Message]:
    """Up to `limit` messages from `start`; with `max_bytes`, only as many as carry at most
    that much text (UTF-8), and always the first, so a reply stays bounded."""
    params = {"topic": topic_id, "start": start, "limit": limit}
    if max_bytes is None:
        return list(map(Message._make, conn.execute(SELECT_MESSAGES, params).all()))
    if conn.dialect.name == "postgresql":  # the driver fetches every row: bound them in SQL
        rows = conn.execute(SELECT_MESSAGES_WITHIN_PG, {**params, "max_bytes": max_bytes})
        return list(map(Message._make, rows.all()))
    # SQLite steps a row at a time: the rows past the bound are never read.
    result = conn.execute(SELECT_MESSAGES, params)
    try:
        return within(map(Message._make, result), max_bytes)
    finally:
        result.close()


def within(found: Iterable[Message], max_bytes: int) -> list[Message]:
    """The longest prefix of `found` with at most `max_bytes` of text, and at least one."""
    page: list[Message] = []
    total = 0
    for message in found:
        body = message.body
        total += len(body) if body.isascii() else len(body.encode("utf-8"))
        if page and total > max_bytes:
            break
        page.append(message)
    return page
