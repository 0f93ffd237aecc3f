"""The Pythonic :class:`Consumer`: receive (at most once), fetch and commit, stream (at least
once); see :mod:`sdk.client` for the threading and fork rules."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from sdk.client import Client, Message, TopicLocks, messages_from, own_client, parse_ts
from sdk.contract import DEFAULT_URL, Start, start_point
from sdk.exceptions import LeaseLost, LogQueueError
from sdk.leases import DEFAULT_LEASE_MS, Lease, LeaseKeeper
from sdk.transport import reset_after_fork


class Consumer:
    """Reads topics; registers itself with each topic on first use.

    Args:
        client: a :class:`Client` to share, or broker url(s) for a client this consumer owns.
        topics: topics to register for at once (each must exist: ``UnknownTopic``).
        name: a durable name: the same (name, topic) gets the same consumer id, so a restarted
            consumer resumes at its committed position.
        start: where a new registration starts: ``"earliest"`` (default), ``"latest"``, or
            a time: a datetime or an ISO-8601 string (UTC unless it carries an offset), or a
            duration back from now (``"10m"``, a timedelta): the first message appended at
            or after it. ValueError for anything else.
        **client_options: for an owned client (``token``, ``retries``, ...).

    Three ways to read:

    * :meth:`receive` / :meth:`receive_one`: the broker moves the position as it answers
      (at most once: a message in a lost answer is not redelivered).
    * :meth:`fetch` + :meth:`commit`: read without moving, then move explicitly.
    * :meth:`stream`: an iterator over fetch/commit (at least once); for a named consumer,
      over leases, so processes sharing the name share the work.
    * :meth:`lease` + :meth:`ack` (and :meth:`extend`, :meth:`release`): the leases by hand.

    Fork. In a forked child the consumer keeps the parent's consumer ids, so both processes
    read from the same positions (each message :meth:`receive` returns goes to one of
    them, as with threads sharing a consumer); a ``stream`` iterator stays the parent's. For
    a position of its own, a child creates a new ``Consumer``.
    """

    def __init__(self, client: Client | str | Sequence[str] = DEFAULT_URL, *,
                 topics: Iterable[str] = (), name: str | None = None, start: Start = "earliest",
                 **client_options: Any) -> None:
        self.start = start_point(start)  # the broker's `from` text
        self.client, self._owns_client = own_client(client, client_options)
        self._transport = self.client.transport
        self.name = name
        self._ids: dict[str, int] = {}
        self._locks = TopicLocks()
        reset_after_fork(self)
        for topic in topics:
            self.register(topic)

    @property
    def consumer_ids(self) -> dict[str, int]:
        """A copy of topic -> consumer id for every registered topic."""
        return dict(self._ids)

    def register(self, topic: str) -> int:
        """Register with ``topic`` once; return the consumer id.

        Raises:
            UnknownTopic: the topic does not exist.
        """
        cid = self._ids.get(topic)
        if cid is None:
            with self._locks[topic]:
                cid = self._ids.get(topic)
                if cid is None:
                    fields = {"topic": topic, "consumer_name": self.name, "from": self.start}
                    cid = int(self._transport.post("/consumer/register", fields)["consumer_id"])
                    self._ids[topic] = cid
        return cid

    def unregister(self, topic: str) -> None:
        """Remove this consumer's registration (and its position) for ``topic``, if any; a
        named consumer loses its committed position."""
        with self._locks[topic]:
            cid = self._ids.pop(topic, None)
            if cid is not None:
                self._transport.post("/consumer/unregister", {"topic": topic, "consumer_id": cid})

    def receive(self, topic: str, max: int = 100, wait: float = 0.0) -> list[Message]:
        """Take up to ``max`` (<= 1,000) messages, waiting up to ``wait`` seconds (<= 30) for
        the first; an empty list on timeout. The position moves past them."""
        params = {"topic": topic, "consumer_id": self.register(topic), "max": max,
                  "wait_ms": int(wait * 1000)}
        body = self._transport.get("/consumer/consume", params, wait=wait)
        return messages_from(topic, body["messages"])

    def receive_one(self, topic: str) -> Message:
        """Take the next message (the classic consume; no wait).

        Raises:
            QueueEmpty: no message is waiting.
        """
        params = {"topic": topic, "consumer_id": self.register(topic)}
        body = self._transport.get("/consumer/consume", params)
        value = body["message"] if "message" in body else body["log_message"]
        return Message(topic, int(body.get("offset", -1)), value, body.get("ts"))

    def fetch(self, topic: str, *, offset: int | None = None, max: int = 100,
              wait: float = 0.0) -> tuple[list[Message], int]:
        """Read up to ``max`` messages from ``offset`` (default: the consumer's position)
        without moving the position; return ``(messages, position)``."""
        params = {"topic": topic, "consumer_id": self.register(topic), "offset": offset,
                  "max": max, "wait_ms": int(wait * 1000)}
        body = self._transport.get("/consumer/fetch", params, wait=wait)
        return messages_from(topic, body["messages"]), int(body["position"])

    def commit(self, topic: str, offset: int) -> int:
        """Move the position forward to ``offset`` (the next message to read); return the
        position. A lower offset leaves it where it is.

        Raises:
            BadRequest: ``offset`` is past the end of the topic.
        """
        params = {"topic": topic, "consumer_id": self.register(topic), "offset": offset}
        return int(self._transport.post("/consumer/commit", params)["position"])

    def size(self, topic: str) -> int:
        """How many messages are at or after the position (the lag)."""
        params = {"topic": topic, "consumer_id": self.register(topic)}
        return int(self._transport.get("/size", params)["size"])

    # --- leases (consumer groups) -----------------------------------------------------------
    def lease(self, topic: str, max: int = 100, wait: float = 0.0,
              lease_ms: int = DEFAULT_LEASE_MS, ack: Lease | None = None) -> Lease | None:
        """A lease of up to ``max`` messages for ``lease_ms``, long-polling up to ``wait``
        seconds; None when there was no work. Processes sharing this consumer's name share
        the work: each range goes to one holder at a time (see :mod:`sdk.leases`).

        ``ack``: a finished lease of this topic, acked in the same request (and the broker's
        same transaction) before the hand-out: one round trip per range instead of two.

        Raises:
            LeaseLost: ``ack`` expired and went to another holder; nothing was handed out.
        """
        params = {"topic": topic, "consumer_id": self.register(topic), "max": max,
                  "wait_ms": int(wait * 1000), "lease_ms": lease_ms, "holder": _holder()}
        if ack is not None:
            params["ack"] = ack.id
        body = self._transport.post("/consumer/lease", params, wait=wait)
        got = Lease.from_reply(topic, body)
        if ack is not None and body.get("acked") != ack.id:
            self._ack_apart(ack, got)  # an older broker ignores `ack` (as any extra field)
        return got

    def _ack_apart(self, ack: Lease, got: Lease | None) -> None:
        """Ack ``ack`` in a request of its own, after a lease request whose broker ignored the
        field. When that fails, the lease just handed out (``got``) is released, so a
        failing :meth:`lease` still hands out nothing."""
        try:
            self.ack(ack)
        except BaseException:
            if got is not None:
                with contextlib.suppress(LogQueueError):
                    self.release(got)
            raise

    def ack(self, lease: Lease) -> int:
        """The lease's messages are done; return the consumer's position.

        Raises:
            LeaseLost: the lease expired and went to another holder (the work is redone).
        """
        return int(self._transport.post("/consumer/ack", self._lease_ref(lease))["position"])

    def extend(self, lease: Lease, lease_ms: int = DEFAULT_LEASE_MS) -> Lease:
        """Keep ``lease`` for ``lease_ms`` from now (raises LeaseLost when it is gone)."""
        body = self._transport.post("/consumer/extend",
                                    {**self._lease_ref(lease), "lease_ms": lease_ms})
        lease.expires = parse_ts(body["lease"].get("expires"))
        return lease

    def release(self, lease: Lease) -> None:
        """Give ``lease`` back unfinished: it is handed out again at once."""
        self._transport.post("/consumer/release", self._lease_ref(lease))

    def _lease_ref(self, lease: Lease) -> dict[str, Any]:
        return {"topic": lease.topic, "consumer_id": self.register(lease.topic),
                "lease": lease.id}

    def stream(self, topic: str, batch: int = 100, wait: float = 1.0, *,
               until_empty: bool = False, lease_ms: int = DEFAULT_LEASE_MS) -> Iterator[Message]:
        """Iterate over ``topic``'s messages from the position, at least once.

        A named consumer takes leases, so processes sharing its name share the work: each
        batch is a lease, extended in the background while the loop works on it and acked
        when the loop asks for the next message after it, by the request for the next lease
        (one request per batch). Closed early, the stream acks a lease the loop had finished
        and releases one it had not (redelivered whole). Order holds within a batch, not
        across processes.

        Fetches up to ``batch`` messages (long-polling up to ``wait`` seconds), yields them,
        and commits after the last one when the loop asks for the next message. When the
        iterator is closed early (``break``, an exception in the loop, ``close()``), it
        commits the messages the loop had finished with (every message before the last one
        yielded), so a restart redelivers only from the interrupted message. A process that
        dies mid-batch commits nothing of that batch: it is redelivered whole.

        Args:
            topic: the topic.
            batch: messages per fetch (<= 1,000).
            wait: seconds to long-poll when nothing is waiting (<= 30).
            until_empty: stop when a fetch finds nothing after waiting (instead of polling on).
            lease_ms: a named consumer's lease time: a holder that dies loses its batch to
                another within it.
        """
        if self.name is not None:
            return self._stream_leases(topic, batch, wait, until_empty, lease_ms)
        return self._stream_positions(topic, batch, wait, until_empty)

    def _stream_leases(self, topic: str, batch: int, wait: float, until_empty: bool,
                       lease_ms: int) -> Iterator[Message]:
        """One request per batch: the lease the loop has finished is acked by the request for
        the next one (the broker acks it in the hand-out's transaction; a broker that ignores
        the field gets an ack of its own, :meth:`lease`). Until that request returns, the
        keeper goes on extending the finished lease."""
        keeper = LeaseKeeper(self, lease_ms)
        lease: Lease | None = None  # in the loop's hands
        done: Lease | None = None  # finished by the loop, not acked yet
        try:
            while True:
                lease = self._next_lease(topic, batch, wait, keeper, done)
                done = None
                if lease is None:
                    if until_empty:
                        return
                    continue
                keeper.hold(lease)
                yield from lease.messages
                done, lease = lease, None  # the loop asked for the message after the last
        finally:
            keeper.close()
            quiet = sys.exc_info()[1]
            if lease is not None:
                self._settle(keeper, lease, False, quiet)
            if done is not None:
                self._settle(keeper, done, True, quiet)

    def _next_lease(self, topic: str, batch: int, wait: float, keeper: LeaseKeeper,
                    done: Lease | None) -> Lease | None:
        """The next lease, acking ``done`` in the same request. A lost ``done`` is someone
        else's now (its messages are delivered again): the lease is asked for without it."""
        ask = {"max": batch, "wait": wait, "lease_ms": keeper.lease_ms}
        if done is None:
            return self.lease(topic, **ask)
        try:
            lease = self.lease(topic, ack=done, **ask)
        except LeaseLost:
            keeper.drop(done)
            return self.lease(topic, **ask)
        keeper.drop(done)
        return lease

    def _settle(self, keeper: LeaseKeeper, lease: Lease, finished: bool,
                quiet: BaseException | None = None) -> None:
        """Ack a finished lease, release another (closing the stream). A lost lease is someone
        else's now (its messages are delivered again); while another error stops the stream,
        a failure here is not raised over it."""
        keeper.drop(lease)
        try:
            if finished:
                self.ack(lease)
            else:
                self.release(lease)
        except LeaseLost:
            pass
        except LogQueueError:
            if quiet is None or isinstance(quiet, GeneratorExit):
                raise

    def _stream_positions(self, topic: str, batch: int, wait: float,
                          until_empty: bool) -> Iterator[Message]:
        self.register(topic)
        offset: int | None = None
        committed: int | None = None
        done: int | None = None  # the offset up to which the loop has finished
        try:
            while True:
                messages, position = self.fetch(topic, offset=offset, max=batch, wait=wait)
                if committed is None:
                    committed = position
                if offset is None:
                    offset = position
                if not messages:
                    if until_empty:
                        return
                    continue
                for msg in messages:
                    yield msg
                    done = msg.offset + 1
                offset = done
                committed = self.commit(topic, offset)
        finally:
            if done is not None and committed is not None and done > committed:
                try:
                    self.commit(topic, done)
                except LogQueueError:
                    # Keep the error that stopped the stream (e.g. the broker is down) rather
                    # than this one; the messages will simply be delivered again.
                    if sys.exc_info()[1] is None or isinstance(sys.exc_info()[1], GeneratorExit):
                        raise

    def close(self) -> None:
        """Close the client if this consumer created it."""
        if self._owns_client:
            self.client.close()

    def _after_fork(self) -> None:
        """In a forked child: new locks (the consumer ids, and so the positions, are kept)."""
        self._locks = TopicLocks()

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _holder() -> str:
    """Who holds a lease, as /stats shows it: this host and process (asked of the system once
    per process: two system calls per lease otherwise)."""
    if not _HOLDER:
        _HOLDER.append(f"{socket.gethostname()}:{os.getpid()}"[:200])
    return _HOLDER[0]


_HOLDER: list[str] = []  # [holder], emptied in a forked child
os.register_at_fork(after_in_child=_HOLDER.clear)


__all__ = ["Consumer"]
