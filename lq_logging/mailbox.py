"""What the caller's side and the sender share: the queue (records as dicts, flush marks, a
stop), the wake-up, the counters."""

from __future__ import annotations

import logging
import sys
import threading
from collections import deque
from typing import Any

#: ``Mailbox.wake_at`` while the sender is busy: no record needs to wake it.
BUSY = sys.maxsize
#: In a queued record (a dict, see ``LogQueueHandler.prepare``): its class, when it is not
#: ``logging.LogRecord`` (a ``setLogRecordFactory`` subclass).
RECORD_CLASS = "_lq_record_class"


def restore(attrs: dict[str, Any]) -> logging.LogRecord:
    """The record a queued dict was made from (for the formatter)."""
    cls = attrs.pop(RECORD_CLASS, logging.LogRecord)
    record = cls.__new__(cls)
    record.__dict__ = attrs
    return record


class FlushMark:
    """Put in the queue by ``flush()``; set once everything before it is settled."""

    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = threading.Event()


class Stop:
    """Put in the queue by ``close()``."""


class Mailbox:
    """What the callers and the sender share: the queue, and how to wake the sender.

    A caller wakes the sender (an ``Event.set``, which takes a lock) only when the queue
    reaches ``wake_at`` records: 0 while the sender sleeps with nothing to do, a batch's
    worth while it gathers a batch for the spool, :data:`BUSY` while it works."""

    __slots__ = ("queue", "wake", "wake_at", "space", "blocked", "flushes")

    def __init__(self) -> None:
        self.queue: deque[Any] = deque()
        self.wake = threading.Event()
        self.wake_at = BUSY
        self.space = threading.Condition(threading.Lock())
        self.blocked = 0
        self.flushes = 0


class Counters:
    """``sent``, ``dropped``, ``retries`` and the last error, for ``stats()``.

    ``last_error`` of kind ``"broker"`` clears when the broker answers again, of kind
    ``"spool"`` when the spool takes a write again; a reason for dropped records stays.
    ``drop_error``, quoted when the drops are reported, is the error current while drops
    wait to be reported: the latest one, not the first."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent = self.dropped = self.unreported = self.retries = 0
        self.last_error: str | None = None
        self.drop_error: str | None = None
        self._kind: str | None = None

    def error(self, text: str, kind: str | None = None) -> None:
        self.last_error, self._kind = text, kind
        if self.unreported:
            self.drop_error = text

    def clear(self, kind: str) -> None:
        if self._kind == kind:
            self.last_error = self._kind = None

    def drop(self, count: int, reason: str | None = None) -> None:
        with self.lock:
            self.dropped += count
            self.unreported += count
            if reason:
                self.error(reason)
            self.drop_error = self.last_error or self.drop_error

    def take_unreported(self) -> tuple[int, str | None]:
        with self.lock:
            count, reason = self.unreported, self.drop_error
            self.unreported, self.drop_error = 0, None
            return count, reason


__all__ = ["BUSY", "RECORD_CLASS", "Counters", "FlushMark", "Mailbox", "Stop", "restore"]
