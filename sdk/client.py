"""The Pythonic API: :class:`Client`, :class:`Producer`, :class:`Consumer`, :class:`Message`.

::

    from sdk import Client

    with Client("localhost:5000") as client:
        producer = client.producer()
        producer.send("orders", "order 1 created")
        producer.send_many("orders", ["order 2 created", "order 3 created"])

        consumer = client.consumer(name="billing")
        for msg in consumer.stream("orders", until_empty=True):
            print(msg.offset, msg.value)

Delivery. ``send``/``send_many`` are idempotent under retries: every request carries a
``seq`` and the broker appends a repeated seq once. ``receive`` moves the consumer's position
as it returns (at most once); ``stream`` fetches, yields, and commits after the batch (at
least once).

Threading. A :class:`Client` and its producers and consumers may be shared between threads.
A producer sends at most one request at a time per topic (per-topic lock), so sends from many
threads to one topic are serialized in a single order, and sends to different topics run in
parallel. One ``stream`` iterator belongs to one thread.

Fork. A forked child may go on using the client, producers and consumers it inherited; it
sends over connections of its own (see :mod:`sdk.transport`). A producer in the child
registers afresh, so the child never shares the parent's (producer id, seq) stream: the two
processes' seqs would interleave and the broker would drop the lower ones as duplicates. A
consumer in the child keeps the parent's consumer ids, so the two processes share its
positions, as threads sharing one consumer do. Locks are new in the child (a thread of the
parent may have held one at the fork).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sdk.contract import DEFAULT_URL
from sdk.exceptions import LogQueueError, TopicExists
from sdk.transport import Transport, reset_after_fork

Start = Literal["earliest", "latest"]


@dataclass(slots=True)
class Message:
    """One message read from a topic (a plain record: not frozen, which makes it 2.5 times
    cheaper to build, and a consumer builds many).

    Attributes:
        topic: the topic it was read from.
        offset: its position in the topic (0, 1, 2, ... without gaps).
        value: the message text.
        ts: when the broker appended it (UTC), when the endpoint reports it.
    """

    topic: str
    offset: int
    value: str
    ts: datetime | None = None


@dataclass(frozen=True, slots=True)
class SendResult:
    """What the broker answered to one produce request.

    Attributes:
        producer_id: the producer id the batch was sent with.
        seq: the seq it was sent with.
        first: offset of the first message, or ``None`` for an already-superseded duplicate.
        last: offset of the last message, or ``None`` likewise.
        duplicate: ``True`` when the broker had already applied this seq (nothing appended).
    """

    producer_id: int
    seq: int
    first: int | None
    last: int | None
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class TopicStats:
    """One topic's line of ``GET /stats``."""

    topic: str
    messages: int
    first_offset: int
    next_offset: int
    consumers: int
    max_lag: int


@dataclass(frozen=True, slots=True)
class ConsumerLag:
    """One registration in :meth:`Client.describe`: its name (``None`` when unnamed),
    position (the next offset it will read) and lag (messages at or after the position)."""

    name: str | None
    position: int
    lag: int


@dataclass(frozen=True, slots=True)
class TopicDescription:
    """``GET /topics/describe``: one topic's offsets, retention, producers and consumers.

    ``retention_ms`` and ``retention_messages`` are ``None`` when the topic has no limit of
    its own (the broker's default then applies).
    """

    topic: str
    messages: int
    first_offset: int
    next_offset: int
    created: datetime | None
    producers: int
    consumers: tuple[ConsumerLag, ...]
    retention_ms: int | None = None
    retention_messages: int | None = None


def initial_seq() -> int:
    """A time-based first seq: microseconds since the epoch (about 2**51, JSON-safe).

    A producer that reuses a persisted producer id in a new process therefore starts above
    every seq it sent before (as long as it sent fewer than one batch per microsecond).
    """
    return time.time_ns() // 1000


def _parse_ts(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return None


def _messages(topic: str, items: Iterable[dict[str, Any]]) -> list[Message]:
    try:  # the hot path: every item has a valid ISO-8601 ts
        parse = datetime.fromisoformat
        return [Message(topic, item["offset"], item["message"], parse(item["ts"]))
                for item in items]
    except (KeyError, TypeError, ValueError):
        return [Message(topic, item["offset"], item["message"], _parse_ts(item.get("ts")))
                for item in items]


class Client:
    """A connection to one LogQueue cluster: topics, stats, and a factory for producers and
    consumers that share its transport (one pooled session).

    Args:
        urls: one broker url, a comma-separated string, or a sequence (failover in order);
            the scheme is optional.
        token: the broker's token, if it requires one.
        transport: an existing :class:`~sdk.transport.Transport` to share (``urls``,
            ``token`` and ``transport_options`` are then ignored, and :meth:`close` does not
            close it).
        **transport_options: passed to :class:`~sdk.transport.Transport` (``retries``,
            ``connect_timeout``, ``read_timeout``, ``backoff``, ...).
    """

    def __init__(self, urls: str | Sequence[str] = DEFAULT_URL, *, token: str | None = None,
                 transport: Transport | None = None, **transport_options: Any) -> None:
        self._owns_transport = transport is None
        self.transport: Transport = transport or Transport(urls, token=token,
                                                           **transport_options)

    def create_topic(self, topic: str, *, exist_ok: bool = False, retention_ms: int | None = None,
                     retention_messages: int | None = None) -> None:
        """Create ``topic``, optionally with its own retention (0 = no limit).

        Raises:
            TopicExists: it exists already (unless ``exist_ok``).
            BadRequest: the name is invalid (``^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$``).
        """
        try:
            self.transport.post("/topics", {"topic_name": topic, "retention_ms": retention_ms,
                                            "retention_messages": retention_messages})
        except TopicExists:
            if not exist_ok:
                raise

    def delete_topic(self, topic: str) -> None:
        """Delete ``topic``: its messages, registrations and counters (the name can be reused).

        Raises:
            UnknownTopic: no such topic.
        """
        self.transport.request("DELETE", "/topics", {"topic": topic})

    def set_retention(self, topic: str, *, retention_ms: int | None = None,
                      retention_messages: int | None = None) -> None:
        """Set ``topic``'s retention: both limits are replaced, and ``0`` or ``None`` means no
        limit of that kind (read :meth:`describe` first to keep one of them)."""
        self.transport.request("PATCH", "/topics", {"topic": topic, "retention_ms": retention_ms,
                                                    "retention_messages": retention_messages})

    def describe(self, topic: str) -> TopicDescription:
        """``topic``'s offsets, retention, producer count and consumers (names, positions, lags).

        Raises:
            UnknownTopic: no such topic.
        """
        body = self.transport.get("/topics/describe", {"topic": topic})
        return TopicDescription(
            topic=body["topic"], messages=body["messages"], first_offset=body["first_offset"],
            next_offset=body["next_offset"], created=_parse_ts(body.get("created")),
            producers=body.get("producers", 0),
            consumers=tuple(ConsumerLag(c.get("name"), c["position"], c["lag"])
                            for c in body.get("consumers", ())),
            retention_ms=body.get("retention_ms"),
            retention_messages=body.get("retention_messages"))

    def topics(self) -> list[str]:
        """Every topic's name."""
        return list(self.transport.get("/topics")["topics"])

    def stats(self) -> list[TopicStats]:
        """Per topic: message count, first and next offsets, consumers, largest lag."""
        return [TopicStats(**{f: t[f] for f in TopicStats.__slots__})
                for t in self.transport.get("/stats")["topics"]]

    def healthy(self) -> bool:
        """``True`` when the current broker and its database answer (``GET /status``)."""
        try:
            self.transport.request("GET", "/status", retry=False)
        except Exception:  # noqa: BLE001 - any failure means "not healthy"
            return False
        return True

    def producer(self, topics: Iterable[str] = ()) -> Producer:
        """A new :class:`Producer` on this client, registered for ``topics`` now (others are
        registered on first send)."""
        return Producer(self, topics=topics)

    def consumer(self, topics: Iterable[str] = (), *, name: str | None = None,
                 start: Start = "earliest") -> Consumer:
        """A new :class:`Consumer` on this client.

        Args:
            topics: topics to register for now (others are registered on first use).
            name: a durable name: the same (name, topic) always gets the same consumer id, so
                a restarted consumer resumes at its committed position.
            start: where a new registration starts: ``"earliest"`` or ``"latest"``. A topic
                is registered at its first use, so with ``"latest"`` pass ``topics`` to start
                from the end as of now.
        """
        return Consumer(self, topics=topics, name=name, start=start)

    def close(self) -> None:
        """Close the transport (if this client created it)."""
        if self._owns_transport:
            self.transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({list(self.transport.urls)!r})"


def _own_client(client: Client | str | Sequence[str], options: dict[str, Any]) -> tuple[Client,
                                                                                         bool]:
    if isinstance(client, Client):
        return client, False
    return Client(client, **options), True


class _TopicLocks:
    """One lock per topic, created on first use."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def __getitem__(self, topic: str) -> threading.Lock:
        lock = self._locks.get(topic)
        if lock is None:
            with self._guard:
                lock = self._locks.setdefault(topic, threading.Lock())
        return lock


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
        self.client, self._owns_client = _own_client(client, client_options)
        self._transport = self.client.transport
        self._ids: dict[str, int] = {}
        self._seqs: dict[tuple[int, str], int] = {}
        self._locks = _TopicLocks()
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
        self._locks = _TopicLocks()

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


class Consumer:
    """Reads topics; registers itself with each topic on first use.

    Args:
        client: a :class:`Client` to share, or broker url(s) for a client this consumer owns.
        topics: topics to register for at once (each must exist: ``UnknownTopic``).
        name: a durable name: the same (name, topic) gets the same consumer id, so a restarted
            consumer resumes at its committed position.
        start: ``"earliest"`` (default) or ``"latest"``: where a new registration starts.
        **client_options: for an owned client (``token``, ``retries``, ...).

    Three ways to read:

    * :meth:`receive` / :meth:`receive_one`: the broker moves the position as it answers
      (at most once: a message in a lost answer is not redelivered).
    * :meth:`fetch` + :meth:`commit`: read without moving, then move explicitly.
    * :meth:`stream`: an iterator over fetch/commit (at least once).

    Fork. In a forked child the consumer keeps the parent's consumer ids, so both processes
    read from the same positions (each message :meth:`receive` returns goes to one of
    them, as with threads sharing a consumer); a ``stream`` iterator stays the parent's. For
    a position of its own, a child creates a new ``Consumer``.
    """

    def __init__(self, client: Client | str | Sequence[str] = DEFAULT_URL, *,
                 topics: Iterable[str] = (), name: str | None = None, start: Start = "earliest",
                 **client_options: Any) -> None:
        if start not in ("earliest", "latest"):
            raise ValueError("start must be 'earliest' or 'latest'")
        self.client, self._owns_client = _own_client(client, client_options)
        self._transport = self.client.transport
        self.name = name
        self.start: Start = start
        self._ids: dict[str, int] = {}
        self._locks = _TopicLocks()
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
        return _messages(topic, body["messages"])

    def receive_one(self, topic: str) -> Message:
        """Take the next message (the classic consume; no wait).

        Raises:
            QueueEmpty: no message is waiting.
        """
        params = {"topic": topic, "consumer_id": self.register(topic)}
        body = self._transport.get("/consumer/consume", params)
        value = body["message"] if "message" in body else body["log_message"]
        return Message(topic, int(body.get("offset", -1)), value, _parse_ts(body.get("ts")))

    def fetch(self, topic: str, *, offset: int | None = None, max: int = 100,
              wait: float = 0.0) -> tuple[list[Message], int]:
        """Read up to ``max`` messages from ``offset`` (default: the consumer's position)
        without moving the position; return ``(messages, position)``."""
        params = {"topic": topic, "consumer_id": self.register(topic), "offset": offset,
                  "max": max, "wait_ms": int(wait * 1000)}
        body = self._transport.get("/consumer/fetch", params, wait=wait)
        return _messages(topic, body["messages"]), int(body["position"])

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

    def stream(self, topic: str, batch: int = 100, wait: float = 1.0, *,
               until_empty: bool = False) -> Iterator[Message]:
        """Iterate over ``topic``'s messages from the position, at least once.

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
        """
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
        self._locks = _TopicLocks()

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


__all__ = ["Client", "Consumer", "ConsumerLag", "Message", "Producer", "SendResult",
           "TopicDescription", "TopicStats", "initial_seq"]
