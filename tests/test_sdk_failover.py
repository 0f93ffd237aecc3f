"""Retry safety and failover, against real broker processes.

* A produce whose answer is lost (a proxy forwards the request, then drops the connection
  before the answer) is retried and appended once.
* Two brokers on one PostgreSQL, one killed mid-stream: the client goes on through the
  other, nothing lost, nothing duplicated.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import BrokerProcess, wait_until

from sdk import Client, Message


class DroppingProxy:
    """A TCP proxy to ``upstream`` that loses the answer to the ``drop_at``-th request whose
    first bytes are ``trigger``.

    Each client connection is piped both ways. When that request passes, the next answer
    from the broker on that connection (which proves the broker has handled the request) is
    not forwarded: both sockets are closed instead.
    """

    def __init__(self, upstream_port: int, trigger: bytes, drop_at: int = 1) -> None:
        self.upstream_port = upstream_port
        self.trigger = trigger
        self.drop_at = drop_at
        self.dropped = threading.Event()
        self.requests_seen = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            state = {"drop_next_answer": False}
            threading.Thread(target=self._up, args=(client, upstream, state), daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client, state),
                             daemon=True).start()

    def _up(self, client: socket.socket, upstream: socket.socket, state: dict) -> None:
        try:
            while data := client.recv(65536):
                if data.startswith(self.trigger):
                    with self._lock:
                        self.requests_seen += 1
                        if self.requests_seen == self.drop_at:
                            state["drop_next_answer"] = True
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            _close(upstream)

    def _down(self, upstream: socket.socket, client: socket.socket, state: dict) -> None:
        try:
            while data := upstream.recv(65536):
                if state["drop_next_answer"]:
                    self.dropped.set()
                    break
                client.sendall(data)
        except OSError:
            pass
        finally:
            _close(client)
            _close(upstream)

    def close(self) -> None:
        self._listener.close()


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


@pytest.fixture(scope="module")
def sqlite_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    path = tmp_path_factory.mktemp("retry") / "lq.db"
    with BrokerProcess(f"sqlite:///{path}", log_path=path.with_suffix(".log")) as proc:
        yield proc


@pytest.mark.parametrize("batch", [1, 3])
def test_lost_answer_is_retried_and_appended_once(sqlite_broker: BrokerProcess,
                                                  batch: int) -> None:
    topic = f"r-{uuid.uuid4().hex[:10]}"
    proxy = DroppingProxy(sqlite_broker.port, b"POST /producer/produce", drop_at=2)
    try:
        with Client(f"127.0.0.1:{proxy.port}", retries=3, backoff=0.01) as client:
            producer = client.producer()
            producer.register(topic)
            assert producer.send(topic, "before") == 0
            proxy_dropped_before = proxy.dropped.is_set()
            messages = [f"once {i}" for i in range(batch)]
            result = producer.send_batch(topic, messages)
            assert proxy.dropped.is_set() and not proxy_dropped_before
            assert proxy.requests_seen == 3  # before, the lost one, its retry
            assert result.duplicate  # the retry found the seq applied
            assert (result.first, result.last) == (1, batch)
            assert producer.send(topic, "after") == batch + 1
            consumer = client.consumer()
            got = [m.value for m in consumer.receive(topic, max=100)]
            assert got == ["before", *messages, "after"]
    finally:
        proxy.close()


def _produce(client: Client, topic: str, total: int, sent: list[str],
             errors: list[BaseException]) -> None:
    """``total`` sends, every third a batch of two; what was acknowledged goes to ``sent``."""
    try:
        producer = client.producer()
        for i in range(total):
            msg = f"msg {i}"
            if i % 3 == 0:
                producer.send_many(topic, [msg + "a", msg + "b"])
                sent.extend([msg + "a", msg + "b"])
            else:
                producer.send(topic, msg)
                sent.append(msg)
    except BaseException as exc:  # noqa: BLE001 - reported by the test's thread
        errors.append(exc)


def test_failover_between_two_brokers(pg_url: str,
                                      start_broker: Callable[..., BrokerProcess],
                                      tmp_path: Path) -> None:
    first = start_broker(pg_url)
    second = start_broker(pg_url)
    topic = f"f-{uuid.uuid4().hex[:10]}"
    total = 600  # iterations; every third sends a batch of two
    expected = total + (total + 2) // 3
    sent: list[str] = []
    received: list[Message] = []
    errors: list[BaseException] = []
    client = Client([first.url, second.url], retries=6, backoff=0.02, read_timeout=5)
    client.create_topic(topic)
    assert client.transport.url == first.url

    def consume() -> None:
        try:
            # Unnamed: a position read and committed in order (a named consumer shares its
            # topic through leases, whose order holds only within a batch: test_sdk_leases.py).
            consumer = client.consumer()
            for msg in consumer.stream(topic, batch=50, wait=0.5):
                received.append(msg)
                if len(received) >= expected or errors:
                    break  # the stream commits up to, not including, the message in hand
            if received:
                consumer.commit(topic, received[-1].offset + 1)  # done with it too
        except BaseException as exc:  # noqa: BLE001 - reported by the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=_produce, args=(client, topic, total, sent, errors)),
               threading.Thread(target=consume)]
    for th in threads:
        th.start()
    # Kill the broker both threads are using while they are mid-stream.
    wait_until(lambda: len(sent) >= 200 and len(received) >= 100 or errors, timeout=30,
               message="traffic through the first broker")
    at_kill = (len(sent), len(received))
    first.kill()
    for th in threads:
        th.join(60)
    assert not errors, errors
    assert not any(th.is_alive() for th in threads)
    assert at_kill[0] < expected and at_kill[1] < expected  # killed mid-stream
    assert client.transport.url == second.url  # sticky on the one that works
    assert len(sent) == expected
    assert [m.value for m in received] == sent  # nothing lost, nothing duplicated, in order
    assert [m.offset for m in received] == list(range(expected))
    stats = {s.topic: s for s in client.stats()}[topic]
    assert stats.next_offset == expected and stats.max_lag == 0
    client.close()
