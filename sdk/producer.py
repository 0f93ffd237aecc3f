"""The Pythonic :class:`Producer`: registration per topic, seqs, idempotent sends (see
:mod:`sdk.client` for the delivery, threading and fork rules)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from sdk.client import Client, SendResult, TopicLocks, own_client
from sdk.contract import DEFAULT_URL
from sdk.transport import reset_after_fork


def initial_seq() -> int:
    """A time-based first seq: microseconds since the epoch (about 2**51, JSON-safe).

    A producer that reuses a persisted producer id in a new process therefore starts above
    every seq it sent before (as long as it sent fewer than one batch per microsecond).
    """
    return time.time_ns() // 1000


class Producer:
    """Sends messages to topics; registers itself with each topic on first use.

    Args:
        client: a :class:`Client` to share, or broker url(s) for a client this producer owns
            (closed by :meth:`close`).
        topics: topics to register for at once.
        **client_options: for an owned client (``token``, ``retries``, ...).

    Seq. Every produce request carries a ``seq``, increasing per (producer id, topic): the
    larger of :func:`initial_seq` (time-based, in microseconds) and the previous seq + 1, so
    a new ``Producer`` object reusing a persisted producer id still sends increasing seqs.
    A request retried after a lost answer repeats its seq, so the broker appends it once.
    One request per topic is in flight at a time, so seqs reach the broker in order.

    Low level (used by a disk spool that replays after a restart): :meth:`register` gives the
    producer id for a topic, :meth:`next_seq` reserves a seq, and :meth:`send_batch` sends
    with an explicit ``producer_id`` and ``seq``. A replay must use the ids and seqs the batch
    was first sent with; new batches should use a new registration (a new ``Producer``), so
    a replayed old seq is never below a newer one on the same id (the broker would drop it
    as a duplicate).

    Fork. In a forked child the producer forgets the parent's registrations and seqs and
    registers again on its first send to each topic, with a new producer id: the parent's
    stream of seqs stays the parent's. (An explicit ``producer_id`` passed to
    :meth:`send_batch` or :meth:`next_seq` is the caller's to keep to one process.)
    """

    def __init__(self, client: Client | str | Sequence[str] = DEFAULT_URL, *,
                 topics: Iterable[str] = (), **client_options: Any) -> None:
        self.client, self._owns_client = own_client(client, client_options)
        self._transport = self.client.transport
        self._ids: dict[str, int] = {}
        self._seqs: dict[tuple[int, str], int] = {}
        self._locks = TopicLocks()
        reset_after_fork(self)
        for topic in topics:
            self.register(topic)

    @property
    def producer_ids(self) -> dict[str, int]:
        """A copy of topic -> producer id for every registered topic."""
        return dict(self._ids)

    def register(self, topic: str) -> int:
        """Register with ``topic`` (created if missing) once; return the producer id."""
        pid = self._ids.get(topic)
        if pid is None:
            with self._locks[topic]:
                pid = self._register_locked(topic)
        return pid

    def unregister(self, topic: str) -> None:
        """Remove this producer's registration for ``topic`` (if any); the next send to it
        registers again, with a new producer id."""
        with self._locks[topic]:
            pid = self._ids.pop(topic, None)
            if pid is not None:
                self._transport.post("/producer/unregister", {"topic": topic, "producer_id": pid})

    def next_seq(self, topic: str, producer_id: int | None = None) -> int:
        """Reserve and return the next seq for (``producer_id``, ``topic``), by default this
        producer's own id, for :meth:`send_batch` (e.g. to spool a batch before sending it)."""
        with self._locks[topic]:
            pid = self._register_locked(topic) if producer_id is None else producer_id
            return self._take_seq(pid, topic)

    def send(self, topic: str, message: str) -> int:
        """Append one message to ``topic``; return its offset."""
        result = self.send_batch(topic, [message])
        return result.first if result.first is not None else -1

    def send_many(self, topic: str, messages: Sequence[str]) -> tuple[int, int] | None:
        """Append ``messages`` to ``topic`` atomically, in order (at most 10,000 per call);
        return the (first, last) offsets, or ``None`` for an empty list."""
        if not messages:
            return None
        result = self.send_batch(topic, messages)
        if result.first is None or result.last is None:
            return None
        return result.first, result.last

    def send_batch(self, topic: str, messages: Sequence[str], *, producer_id: int | None = None,
                   seq: int | None = None) -> SendResult:
        """Send one atomic batch, optionally with an explicit producer id and seq.

        Args:
            topic: the topic (this producer registers with it when ``producer_id`` is None).
            messages: the batch (1 to 10,000 strings, each at most 1 MiB by default).
            producer_id: the id to send with, e.g. the one a spooled batch was first sent with.
            seq: the seq to send with; by default the next one (see the class docstring).

        Returns:
            A :class:`SendResult`; ``duplicate`` is true when the broker had applied the seq
            already (then ``first``/``last`` are the stored offsets, or ``None`` when a later
            seq has been applied since).

        Raises:
            TooLarge, BadRequest, NotRegistered, UnknownId, BrokerUnavailable, ...
        """
        if isinstance(messages, str):
            raise TypeError("messages must be a sequence of str, not a str")
        with self._locks[topic]:
            pid = self._register_locked(topic) if producer_id is None else producer_id
            if seq is None:
                seq = self._take_seq(pid, topic)
            elif seq > self._seqs.get((pid, topic), -1):
                self._seqs[(pid, topic)] = seq
            fields: dict[str, Any] = {"topic": topic, "producer_id": pid, "seq": seq}
            if len(messages) == 1:
                fields["message"] = messages[0]
            else:
                fields["messages"] = list(messages)
            body = self._transport.post("/producer/produce", fields)
        offsets = body.get("offsets")
        first, last = (offsets[0], offsets[1]) if offsets else (None, None)
        return SendResult(pid, seq, first, last, bool(body.get("duplicate", False)))

    def close(self) -> None:
        """Close the client if this producer created it."""
        if self._owns_client:
            self.client.close()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals (call with the topic's lock held) -------------------------------------

    def _after_fork(self) -> None:
        """In a forked child: forget the parent's registrations, seqs and locks."""
        self._ids = {}
        self._seqs = {}
        self._locks = TopicLocks()

    def _register_locked(self, topic: str) -> int:
        pid = self._ids.get(topic)
        if pid is None:
            pid = int(self._transport.post("/producer/register", {"topic": topic})["producer_id"])
            self._ids[topic] = pid
        return pid

    def _take_seq(self, producer_id: int, topic: str) -> int:
        key = (producer_id, topic)
        seq = max(initial_seq(), self._seqs.get(key, -1) + 1)
        self._seqs[key] = seq
        return seq


__all__ = ["Producer", "initial_seq"]
