"""What the store hands back and takes in: plain records, no database handles."""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import NamedTuple

from ..errors import BrokerError

MAX_ID = 2**53
HOLDERS_WINDOW_US = 60_000_000  # "holders seen in the last minute"


#: A message as the driver returns it: (offset, body, ts_us). The hot reads hand these on
#: as they are: a named tuple per message cost more than the query that read it.
Row = tuple[int, str, int]


class Message(NamedTuple):
    """A Row with names, where a few messages are handled one by one (leases)."""

    offset: int
    body: str
    ts_us: int


@lru_cache(maxsize=4096)
def iso_time(ts_us: int) -> str:
    """ISO-8601 UTC; cached because a group commit gives many messages one time."""
    return datetime.fromtimestamp(ts_us / 1e6, UTC).isoformat(timespec="microseconds")


def now_us() -> int:
    return time.time_ns() // 1000


def new_id() -> int:
    """A random positive id below 2**53: unguessable, and an int that JSON keeps exact."""
    return secrets.randbelow(MAX_ID - 1) + 1


@dataclass(frozen=True, slots=True)
class AppendRequest:
    producer_id: int
    bodies: Sequence[str]
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class AppendResult:
    first: int | None
    last: int | None
    duplicate: bool = False
    error: BrokerError | None = None  # this request failed; the rest of its group did not


@dataclass(frozen=True, slots=True)
class Batch:
    messages: list[Row]
    skipped: int = 0  # messages pruned by retention between the position and the first here


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    id: int
    first: int
    last: int
    expires_us: int
    deliveries: int


@dataclass(frozen=True, slots=True)
class LeasedBatch:
    """A lease and its messages, or no lease (and no messages) when there was no work."""

    lease: LeaseInfo | None
    messages: list[Row]  # (offset, body, ts_us)
    skipped: int = 0  # messages of the range (or before it) pruned by retention


@dataclass(frozen=True, slots=True)
class ConsumerInfo:
    name: str | None
    position: int
    lag: int
    active_us: int | None = None  # last use, to within TOUCH_EVERY_MAX (consumers.py)
    leases: int = 0  # outstanding
    holders: int = 0  # seen asking for leases in the last HOLDERS_WINDOW_US


@dataclass(frozen=True, slots=True)
class TopicInfo:
    topic: str
    first_offset: int
    next_offset: int
    retention_ms: int | None
    retention_messages: int | None
    created_us: int
    producers: int
    consumers: list[ConsumerInfo]


@dataclass(frozen=True, slots=True)
class TopicStats:
    topic: str
    first_offset: int
    next_offset: int
    consumers: int
    max_lag: int
    registrations: tuple[ConsumerInfo, ...] = ()

    @property
    def messages(self) -> int:
        return self.next_offset - self.first_offset
