"""The Pythonic API: :class:`Client` and the records it returns (:class:`Message`, ...);
:class:`~sdk.producer.Producer` and :class:`~sdk.consumer.Consumer` have modules of their own.

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

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sdk.contract import DEFAULT_URL, Start
from sdk.exceptions import LogQueueError, TopicExists
from sdk.transport import Transport

if TYPE_CHECKING:
    from sdk.consumer import Consumer
    from sdk.producer import Producer


class Message:
    """One message read from a topic: a plain, mutable record (a consumer builds many, so it
    is a slotted class with as little work per message as can be).

    Attributes:
        topic: the topic it was read from.
        offset: its position in the topic (0, 1, 2, ... without gaps).
        value: the message text.
        ts: when the broker appended it (UTC), when the endpoint reports it. Given as the
            broker's ISO-8601 text, it is parsed on first use: a sink that never looks at it
            never pays for it (most of the cost of building a batch of messages).
    """

    __slots__ = ("offset", "topic", "value", "_ts")
    __match_args__ = ("topic", "offset", "value", "ts")
    __hash__ = None  # type: ignore[assignment] # mutable, compared by value

    def __init__(self, topic: str, offset: int, value: str,
                 ts: datetime | str | None = None) -> None:
        self.topic = topic
        self.offset = offset
        self.value = value
        self._ts = ts

    @property
    def ts(self) -> datetime | None:
        ts = self._ts
        if ts.__class__ is str:
            ts = self._ts = parse_ts(ts)
        return ts  # type: ignore[return-value]

    @ts.setter
    def ts(self, value: datetime | str | None) -> None:
        self._ts = value

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return (self.topic, self.offset, self.value, self.ts) == (
            other.topic, other.offset, other.value, other.ts)  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return (f"Message(topic={self.topic!r}, offset={self.offset!r}, value={self.value!r}, "
                f"ts={self.ts!r})")


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
class TokenInfo:
    """One token of :meth:`Client.tokens` (the broker never shows a token again after
    :meth:`Client.create_token`). ``token`` is set only in what ``create_token`` returns."""

    name: str
    produce: tuple[str, ...]
    consume: tuple[str, ...]
    admin: bool
    created: datetime | None = None
    last_used: datetime | None = None
    token: str | None = None


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


def parse_ts(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return None


def messages_from(topic: str, items: Iterable[dict[str, Any]]) -> list[Message]:
    """The Messages of a reply's ``messages``; each ``ts`` is parsed when first read."""
    try:  # the hot path: every item has its ts
        return [Message(topic, item["offset"], item["message"], item["ts"]) for item in items]
    except KeyError:
        return [Message(topic, item["offset"], item["message"], item.get("ts"))
                for item in items]


class Client:
    """A connection to one LogQueue cluster: topics, stats, and a factory for producers and
    consumers that share its transport (one pooled session).

    Args:
        urls: one broker url, a comma-separated string, or a sequence (failover in order);
            the scheme is optional.
        token: the broker's token, if it requires one.
        verify: for ``https://`` urls, the CA file that signs the broker's certificate,
            ``False`` to skip the check, or ``True`` (the system's CAs).
        transport: an existing :class:`~sdk.transport.Transport` to share (``urls``,
            ``token`` and ``transport_options`` are then ignored, and :meth:`close` does not
            close it).
        **transport_options: passed to :class:`~sdk.transport.Transport` (``retries``,
            ``connect_timeout``, ``read_timeout``, ``backoff``, ``compress``, ...). By default
            (``compress=None``) replies come compressed, except from a broker on a loopback
            address (``localhost``, 127.0.0.0/8, ``::1``), where compressing costs more CPU
            than the bytes save; ``compress=True`` or ``False`` decides for every broker.
    """

    def __init__(self, urls: str | Sequence[str] = DEFAULT_URL, *, token: str | None = None,
                 verify: bool | str | None = True, transport: Transport | None = None,
                 **transport_options: Any) -> None:
        self._owns_transport = transport is None
        self.transport: Transport = transport or Transport(urls, token=token, verify=verify,
                                                           **transport_options)

    def create_topic(self, topic: str, *, exist_ok: bool = False, retention_ms: int | None = None,
                     retention_messages: int | None = None) -> None:
        """Create ``topic``, optionally with its own retention (0 = no limit).

        Raises:
            TopicExists: it exists already (unless ``exist_ok``).
            BadRequest: the name is invalid (:data:`sdk.contract.TOPIC_RULE`).
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
            next_offset=body["next_offset"], created=parse_ts(body.get("created")),
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

    def create_token(self, *, name: str | None = None, produce: Iterable[str] = (),
                     consume: Iterable[str] = (), admin: bool = False) -> TokenInfo:
        """A new token that may produce to the ``produce`` topic globs, read the ``consume``
        ones, and with ``admin`` do everything. Its ``token`` is shown this once (the broker
        keeps only its SHA-256). Needs an admin token."""
        body = self.transport.post("/tokens", {"name": name, "produce": list(produce),
                                               "consume": list(consume), "admin": admin})
        return TokenInfo(body["name"], tuple(body["produce"]), tuple(body["consume"]),
                         body["admin"], token=body["token"])

    def tokens(self) -> list[TokenInfo]:
        """Every token's name, scopes, creation and last use (never the token itself)."""
        return [TokenInfo(t["name"], tuple(t["produce"]), tuple(t["consume"]), t["admin"],
                          parse_ts(t.get("created")), parse_ts(t.get("last_used")))
                for t in self.transport.get("/tokens")["tokens"]]

    def revoke_token(self, name: str) -> None:
        """Revoke the token named ``name``: every broker refuses it within a second."""
        self.transport.request("DELETE", "/tokens", {"name": name})

    def healthy(self) -> bool:
        """``True`` when the current broker and its database answer (``GET /status``)."""
        try:
            self.transport.request("GET", "/status", retry=False)
        except LogQueueError:  # the transport turns every failure into one
            return False
        return True

    def producer(self, topics: Iterable[str] = ()) -> Producer:
        """A new :class:`Producer` on this client, registered for ``topics`` now (others are
        registered on first send)."""
        from sdk.producer import Producer  # sdk.producer imports this module

        return Producer(self, topics=topics)

    def consumer(self, topics: Iterable[str] = (), *, name: str | None = None,
                 start: Start = "earliest") -> Consumer:
        """A new :class:`Consumer` on this client.

        Args:
            topics: topics to register for now (others are registered on first use).
            name: a durable name: the same (name, topic) always gets the same consumer id, so
                a restarted consumer resumes at its committed position.
            start: where a new registration starts: ``"earliest"``, ``"latest"``, or a time
                (a datetime, an ISO-8601 string, or a duration back from now such as
                ``"10m"`` or a timedelta): the first message appended at or after it. A topic
                is registered at its first use, so with ``"latest"`` or a time pass ``topics``
                to register at once.
        """
        from sdk.consumer import Consumer  # sdk.consumer imports this module

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


def own_client(client: Client | str | Sequence[str], options: dict[str, Any]) -> tuple[Client,
                                                                                         bool]:
    if isinstance(client, Client):
        return client, False
    return Client(client, **options), True


class TopicLocks:
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


__all__ = ["Client", "ConsumerLag", "Message", "SendResult", "TokenInfo", "TopicDescription",
           "TopicStats"]
