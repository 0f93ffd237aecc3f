"""The Pythonic :class:`Consumer`: receive (at most once), fetch and commit, stream (at least
once); see :mod:`sdk.client` for the threading and fork rules."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from sdk.client import Client, Message, Start, TopicLocks, messages_from, own_client, parse_ts
from sdk.contract import DEFAULT_URL
from sdk.exceptions import LogQueueError
from sdk.transport import reset_after_fork


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
        self.client, self._owns_client = own_client(client, client_options)
        self._transport = self.client.transport
        self.name = name
        self.start: Start = start
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
        return Message(topic, int(body.get("offset", -1)), value, parse_ts(body.get("ts")))

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
        self._locks = TopicLocks()

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


__all__ = ["Consumer"]
