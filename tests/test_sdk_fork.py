"""The SDK across ``fork``: a child keeps using the objects it inherited, next to its parent.

The child must get its own HTTP connections (not the parent's pooled sockets) and its own
producer registration (not the parent's producer id and seq counter, which the broker's
idempotence would turn into dropped "duplicates"). Every message either process sends must
arrive exactly once, in each process's order.
"""

from __future__ import annotations

import multiprocessing
import uuid
from collections.abc import Iterator
from multiprocessing.process import BaseProcess
from multiprocessing.queues import SimpleQueue
from multiprocessing.synchronize import Barrier

import pytest
from support import BrokerProcess

from sdk import Client, Message, Producer

FORK = multiprocessing.get_context("fork")
SENDS = 150  # per process, concurrently: enough for their requests to interleave


@pytest.fixture
def topic() -> str:
    return f"fork-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def client(broker: BrokerProcess) -> Iterator[Client]:
    with Client(broker.url, retries=0) as c:  # no retry may hide a garbled exchange
        yield c


def _read_all(client: Client, topic: str) -> list[str]:
    consumer = client.consumer([topic])
    messages: list[Message] = []
    while batch := consumer.receive(topic, max=1000):
        messages.extend(batch)
    return [m.value for m in messages]


def _join(child: BaseProcess, timeout: float = 60) -> int | None:
    """The child's exit code; a child still running after ``timeout`` is killed (``None``)."""
    child.join(timeout)
    if child.exitcode is None:
        child.kill()
        child.join()
        return None
    return child.exitcode


def _send_in_child(producer: Producer, topic: str, start: Barrier, report: SimpleQueue) -> None:
    report.put(producer.producer_ids)  # before any send: nothing registered in this process
    start.wait()
    for i in range(SENDS):
        producer.send(topic, f"child-{i}")
    report.put(producer.register(topic))


def test_parent_and_forked_child_share_a_producer(client: Client, topic: str) -> None:
    producer = client.producer([topic])
    producer.send(topic, "parent-before")  # a pooled connection and a seq counter in use
    parent_id = producer.register(topic)

    start, report = FORK.Barrier(2, timeout=30), FORK.SimpleQueue()
    child = FORK.Process(target=_send_in_child, args=(producer, topic, start, report))
    child.start()
    try:
        start.wait()
        for i in range(SENDS):
            producer.send(topic, f"parent-{i}")
    finally:
        exitcode = _join(child)
    assert exitcode == 0, "the child failed (traceback in the captured stderr) or hung"
    assert report.get() == {}
    child_id = report.get()
    assert child_id != parent_id
    assert producer.register(topic) == parent_id  # the parent keeps its registration

    values = _read_all(client, topic)
    assert [v for v in values if v.startswith("parent")] == [
        "parent-before", *(f"parent-{i}" for i in range(SENDS))]
    assert [v for v in values if v.startswith("child")] == [f"child-{i}" for i in range(SENDS)]
    assert len(values) == 1 + 2 * SENDS


def _send_once(client: Client, producer: Producer, topic: str) -> None:
    client.topics()
    producer.send(topic, "from-child")


def test_fork_while_another_thread_holds_the_sdk_locks(client: Client, topic: str) -> None:
    """A fork while a parent thread is mid-send (holding the producer's topic lock and the
    transport's lock) must not leave the child blocked on a lock nobody will release."""
    producer = client.producer([topic])
    producer.send(topic, "parent")
    with producer._locks[topic], client.transport._lock:  # as a sending thread would
        child = FORK.Process(target=_send_once, args=(client, producer, topic))
        child.start()
    assert _join(child) == 0, "the child hung or failed"
    assert _read_all(client, topic) == ["parent", "from-child"]
