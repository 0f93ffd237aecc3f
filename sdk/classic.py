"""The classic API, exactly as this project's existing users call it.

::

    from sdk import MyQueue

    q = MyQueue("localhost:5000")
    q.createTopic("T-1")
    producer = q.createProducer(["T-1"])
    producer.enqueue("hello", "T-1")
    consumer = q.createConsumer(["T-1"])
    consumer.dequeue("T-1")        # 'hello'; raises QueueEmpty when nothing is waiting
    consumer.getSize("T-1")        # 0

A thin layer: every method delegates to the Pythonic :mod:`sdk.client` and adds only the
camelCase names and the registration check (``enqueue``, ``dequeue`` and ``getSize`` on a
topic never registered raise :class:`~sdk.exceptions.NotRegistered`). Sends are idempotent
under retries like the Pythonic producer's. The classic ``Producer`` and ``Consumer`` live
here only; ``from sdk import Producer`` is the Pythonic one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sdk.client import Client
from sdk.consumer import Consumer as PythonicConsumer
from sdk.exceptions import NotRegistered, QueueEmpty
from sdk.producer import Producer as PythonicProducer


class MyQueue:
    """The entry point of the classic API.

    Args:
        url: the broker url; the scheme is optional (``"localhost:5000"``). A
            comma-separated list gives failover.
        token: the broker's token, if it requires one.
        verify: for an ``https://`` url, the CA file of the broker's certificate (or
            ``False`` to skip the check).
        **options: passed to :class:`~sdk.client.Client` (``retries``, ``read_timeout``, ...).
    """

    def __init__(self, url: str, *, token: str | None = None, verify: bool | str | None = True,
                 **options: Any) -> None:
        self.client = Client(url, token=token, verify=verify, **options)

    def createTopic(self, topicName: str) -> None:
        """Create a topic. Raises ``TopicExists`` if it exists, ``BadRequest`` if the name is
        invalid."""
        self.client.create_topic(topicName)

    def get_all_topics(self) -> list[str]:
        """Every topic's name."""
        return self.client.topics()

    def createProducer(self, topicNames: Iterable[str]) -> Producer:
        """A producer registered with each of ``topicNames`` (topics are created if missing)."""
        return Producer(self.client, topicNames)

    def createConsumer(self, topicNames: Iterable[str]) -> Consumer:
        """A consumer registered with each of ``topicNames``. Raises ``UnknownTopic`` for a
        topic that does not exist."""
        return Consumer(self.client, topicNames)

    def close(self) -> None:
        """Close the connections."""
        self.client.close()

    def __enter__(self) -> MyQueue:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Producer:
    """A classic producer; create it with :meth:`MyQueue.createProducer`."""

    def __init__(self, client: Client, topicNames: Iterable[str] = ()) -> None:
        self._producer = PythonicProducer(client, topics=topicNames)

    def registerTopic(self, topicName: str) -> None:
        """Register with another topic (created if missing)."""
        self._producer.register(topicName)

    def enqueue(self, msg: str, topicName: str) -> None:
        """Append ``msg`` to ``topicName``.

        Raises:
            NotRegistered: this producer never registered with ``topicName``.
        """
        if topicName not in self._producer.producer_ids:
            raise NotRegistered(f"producer is not registered for topic {topicName!r}")
        self._producer.send(topicName, msg)


class Consumer:
    """A classic consumer; create it with :meth:`MyQueue.createConsumer`."""

    def __init__(self, client: Client, topicNames: Iterable[str] = ()) -> None:
        self._consumer = PythonicConsumer(client, topics=topicNames)

    def registerTopic(self, topicName: str) -> None:
        """Register with another topic. Raises ``UnknownTopic`` if it does not exist."""
        self._consumer.register(topicName)

    def dequeue(self, topicName: str) -> str:
        """Take the next message of ``topicName``.

        Raises:
            QueueEmpty: no message is waiting.
            NotRegistered: this consumer never registered with ``topicName``.
        """
        self._check(topicName)
        return self._consumer.receive_one(topicName).value

    def getSize(self, topicName: str) -> int:
        """How many messages of ``topicName`` this consumer has not read yet."""
        self._check(topicName)
        return self._consumer.size(topicName)

    def _check(self, topic: str) -> None:
        if topic not in self._consumer.consumer_ids:
            raise NotRegistered(f"consumer is not registered for topic {topic!r}")


__all__ = ["Consumer", "MyQueue", "Producer", "QueueEmpty"]
