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
