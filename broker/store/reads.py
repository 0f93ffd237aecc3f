"""Reads of a consumer's position and a topic's messages, shared by consume, fetch, size and
the dialects' take. A missing consumer row raises `RegistrationGone`."""

from __future__ import annotations

from sqlalchemy import Connection

from .caches import RegistrationGone
from .queries import SELECT_CONSUMER_LAG, SELECT_CONSUMER_POSITION, SELECT_MESSAGES
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
