"""Leases of a named consumer (consumer groups): the :class:`Lease` record, and the
:class:`LeaseKeeper` that extends leases in the background while their holder works.

Several processes using one consumer name share a topic's work: each asks for a lease (a
contiguous range of offsets, held for ``lease_ms``), works on its messages and acks it. A
lease whose holder dies is handed out again once it expires; the holder's late ack then
raises :class:`~sdk.exceptions.LeaseLost`. A slow holder keeps its lease with extends, which
:class:`LeaseKeeper` sends for it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sdk.client import Message, messages_from, parse_ts
from sdk.exceptions import LeaseLost, LogQueueError

if TYPE_CHECKING:
    from sdk.consumer import Consumer

DEFAULT_LEASE_MS = 30_000


@dataclass(slots=True)
class Lease:
    """A range of one topic's offsets handed to this holder until ``expires``.

    Attributes:
        topic: the topic.
        id: the lease id (a redelivery has a new one).
        first, last: the range's first and last offsets (inclusive).
        expires: when another holder may get it, unless extended.
        deliveries: 1 at the first hand-out, more for a redelivery.
        messages: the range's messages (fewer than the range when retention pruned some).
        skipped: messages retention removed before they could be delivered.
    """

    topic: str
    id: int
    first: int
    last: int
    expires: datetime | None
    deliveries: int
    messages: list[Message] = field(default_factory=list)
    skipped: int = 0

    @classmethod
    def from_reply(cls, topic: str, body: dict[str, Any]) -> Lease | None:
        raw = body.get("lease")
        if not raw:
            return None
        return cls(topic, int(raw["id"]), int(raw["first"]), int(raw["last"]),
                   parse_ts(raw.get("expires")), int(raw.get("deliveries", 1)),
                   messages_from(topic, body.get("messages", [])), int(body.get("skipped") or 0))


class LeaseKeeper:
    """Extends the leases it holds, on one daemon thread, until they are dropped.

    A lease held longer than a third of ``lease_ms`` is extended by ``lease_ms`` every third
    of ``lease_ms``, so a holder that works slowly keeps it, and one that dies loses it
    within ``lease_ms``. A lease found lost is remembered (:meth:`lost`); a broker that does
    not answer is tried again at the next turn.
    """

    def __init__(self, consumer: Consumer, lease_ms: int = DEFAULT_LEASE_MS) -> None:
        self.consumer = consumer
        self.lease_ms = lease_ms
        self._held: dict[int, tuple[Lease, float]] = {}
        self._lost: set[int] = set()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def hold(self, lease: Lease) -> None:
        with self._changed:
            self._held[lease.id] = (lease, time.monotonic())
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="lq-lease-keeper",
                                                daemon=True)
                self._thread.start()

    def drop(self, lease: Lease) -> bool:
        """Stop extending ``lease``; whether it was still the holder's at the last extend."""
        with self._changed:
            self._held.pop(lease.id, None)
            lost = lease.id in self._lost
            self._lost.discard(lease.id)
            return not lost

    def lost(self, lease: Lease) -> bool:
        with self._changed:
            return lease.id in self._lost

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._held.clear()
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        interval = self.lease_ms / 3000
        while True:
            with self._changed:
                self._changed.wait(interval)
                if self._closed:
                    return
                due = [lease for lease, since in self._held.values()
                       if time.monotonic() - since >= interval]
            for lease in due:
                self._extend(lease)

    def _extend(self, lease: Lease) -> None:
        try:
            self.consumer.extend(lease, self.lease_ms)
        except LeaseLost:
            with self._changed:
                if lease.id in self._held:
                    self._held.pop(lease.id)
                    self._lost.add(lease.id)
        except LogQueueError:
            pass  # the broker is away: the next turn tries again, within the lease


__all__ = ["DEFAULT_LEASE_MS", "Lease", "LeaseKeeper"]
