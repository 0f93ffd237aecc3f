"""The Pythonic SDK against real brokers: send/receive, seq, fetch/commit, stream, threads."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from support import BrokerProcess, free_port

from sdk import (
    BadRequest,
    BrokerUnavailable,
    Client,
    Consumer,
    LogQueueError,
    Message,
    NotRegistered,
    Producer,
    QueueEmpty,
    TopicExists,
    Unauthorized,
)
from sdk.exceptions import ERRORS_BY_CODE, error_from_response
from sdk.transport import normalize_url, parse_urls


@pytest.fixture
def topic() -> str:
    return f"p-{uuid.uuid4().hex[:12]}"


def _drain(consumer: Consumer, topic: str) -> list[Message]:
    out: list[Message] = []
    while batch := consumer.receive(topic, max=1000):
        out.extend(batch)
    return out


# --- no broker needed -------------------------------------------------------------------

def test_message_ts_is_parsed_on_first_use() -> None:
    text = "2026-01-01T12:00:00.123456+00:00"
    lazy = Message("t", 3, "v", text)
    parsed = Message("t", 3, "v", datetime.fromisoformat(text))
    assert lazy == parsed and lazy != Message("t", 3, "v", None)
    assert lazy.ts == datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)
    assert lazy.ts is lazy.ts  # parsed once
    assert repr(lazy) == repr(parsed) == (
        "Message(topic='t', offset=3, value='v', ts=datetime.datetime(2026, 1, 1, 12, 0, 0, "
        "123456, tzinfo=datetime.timezone.utc))")
    assert Message("t", 0, "v", "not a time").ts is None and Message("t", 0, "v").ts is None
    lazy.ts, lazy.value = None, "w"  # a plain, mutable record
    assert (lazy.ts, lazy.value) == (None, "w")
    match lazy:
        case Message(topic, offset, value, ts):
            assert (topic, offset, value, ts) == ("t", 3, "w", None)


def test_url_parsing() -> None:
    assert normalize_url("localhost:5000") == "http://localhost:5000"
    assert normalize_url(" https://h:1/ ") == "https://h:1"
    assert parse_urls("a:1, b:2") == ("http://a:1", "http://b:2")
    assert parse_urls(["a:1", "http://b:2/"]) == ("http://a:1", "http://b:2")
    with pytest.raises(ValueError):
        parse_urls("")
    for bad in ("http//127.0.0.1:5000", "ftp://h:1", "h:port", " "):
        with pytest.raises(ValueError, match="not a broker url"):
            normalize_url(bad)
    with pytest.raises(ValueError, match="not a broker url"):
        Client("127.0.0.1:5000,http//127.0.0.1:5001")


def test_error_mapping() -> None:
    for code, cls in ERRORS_BY_CODE.items():
        err = error_from_response(cls.status or 503, {"status": "failure", "error": code,
                                                      "message": "m"})
        assert type(err) is cls and err.code == code and err.message == "m"
        assert isinstance(err, LogQueueError)
    assert isinstance(error_from_response(502, None), BrokerUnavailable)
    unknown = error_from_response(418, {"status": "failure", "error": "teapot"})
    assert type(unknown) is LogQueueError and unknown.code == "teapot"


def test_unavailable_is_connection_error() -> None:
    with Client(f"127.0.0.1:{free_port()}", retries=1, backoff=0.01) as c:
        with pytest.raises(ConnectionError):
            c.topics()
        assert not c.healthy()


# --- against the module's broker --------------------------------------------------------

def test_topics_and_stats(client: Client, topic: str) -> None:
    client.create_topic(topic)
    with pytest.raises(TopicExists):
        client.create_topic(topic)
    client.create_topic(topic, exist_ok=True)
    assert topic in client.topics()
    client.producer().send_many(topic, ["a", "b", "c"])
    client.consumer([topic]).receive(topic, max=1)
    stats = {s.topic: s for s in client.stats()}[topic]
    assert (stats.messages, stats.first_offset, stats.next_offset) == (3, 0, 3)
    assert (stats.consumers, stats.max_lag) == (1, 2)
    assert client.healthy()


def test_send_receive(client: Client, topic: str) -> None:
    producer = client.producer()
    assert producer.send(topic, "m0") == 0
    assert producer.send_many(topic, ["m1", "m2", "m3"]) == (1, 3)
    assert producer.send_many(topic, []) is None
    consumer = client.consumer()
    assert consumer.size(topic) == 4
    got = consumer.receive(topic, max=3)
    assert [(m.topic, m.offset, m.value) for m in got] == [
        (topic, 0, "m0"), (topic, 1, "m1"), (topic, 2, "m2")]
    assert all(m.ts is not None and m.ts.utcoffset() is not None for m in got)
    one = consumer.receive_one(topic)
    assert (one.offset, one.value) == (3, "m3")
    with pytest.raises(QueueEmpty):
        consumer.receive_one(topic)
    assert consumer.receive(topic, max=10, wait=0.05) == []


def test_receive_long_poll_wakes_on_send(client: Client, topic: str) -> None:
    producer = client.producer([topic])
    consumer = client.consumer([topic])
    result: list[Message] = []
    started = threading.Event()

    def wait() -> None:
        started.set()
        result.extend(consumer.receive(topic, max=10, wait=20))

    th = threading.Thread(target=wait)
    th.start()
    started.wait(5)
    producer.send(topic, "wake up")
    th.join(15)
    assert not th.is_alive()
    assert [m.value for m in result] == ["wake up"]


def test_seq_makes_retries_idempotent(client: Client, topic: str) -> None:
    producer = client.producer()
    pid = producer.register(topic)
    seq = producer.next_seq(topic)
    first = producer.send_batch(topic, ["a", "b"], producer_id=pid, seq=seq)
    assert (first.first, first.last, first.duplicate) == (0, 1, False)
    again = producer.send_batch(topic, ["a", "b"], producer_id=pid, seq=seq)
    assert (again.first, again.last, again.duplicate) == (0, 1, True)
    older = producer.send_batch(topic, ["old"], producer_id=pid, seq=seq - 1)
    assert older.duplicate and older.first is None
    # The producer's own seq continues above the explicit one.
    assert producer.send(topic, "c") == 2
    assert [m.value for m in _drain(client.consumer(), topic)] == ["a", "b", "c"]


def test_replay_with_persisted_producer_id(client: Client, topic: str) -> None:
    """A spool replays a batch after a restart with the id and seq it was first sent with."""
    first_process = client.producer()
    pid = first_process.register(topic)
    seq = first_process.next_seq(topic)
    first_process.send_batch(topic, ["spooled 1", "spooled 2"], producer_id=pid, seq=seq)
    restarted = client.producer()  # a new process: new object, new registration
    replay = restarted.send_batch(topic, ["spooled 1", "spooled 2"], producer_id=pid, seq=seq)
    assert replay.duplicate and (replay.first, replay.last) == (0, 1)
    # A new producer object reusing the persisted id: its time-based seq is above the old one.
    reused = client.producer()
    assert reused.send_batch(topic, ["new"], producer_id=pid).first == 2
    assert [m.value for m in _drain(client.consumer(), topic)] == [
        "spooled 1", "spooled 2", "new"]


def test_fetch_and_commit(client: Client, topic: str) -> None:
    client.producer().send_many(topic, [str(i) for i in range(5)])
    consumer = client.consumer()
    msgs, position = consumer.fetch(topic, max=3)
    assert position == 0 and [m.offset for m in msgs] == [0, 1, 2]
    msgs, _ = consumer.fetch(topic, max=3)  # fetch does not move
    assert [m.offset for m in msgs] == [0, 1, 2]
    msgs, _ = consumer.fetch(topic, offset=3)
    assert [m.value for m in msgs] == ["3", "4"]
    assert consumer.commit(topic, 3) == 3
    assert consumer.size(topic) == 2
    assert consumer.commit(topic, 1) == 3  # only forward
    with pytest.raises(BadRequest):
        consumer.commit(topic, 6)
    assert consumer.fetch(topic)[1] == 3


def test_named_consumer_resumes_and_latest(client: Client, topic: str) -> None:
    producer = client.producer()
    producer.send_many(topic, ["a", "b", "c"])
    name = f"svc-{uuid.uuid4().hex[:6]}"
    first = client.consumer(name=name)
    assert [m.value for m in first.receive(topic, max=2)] == ["a", "b"]
    again = client.consumer(name=name)
    assert again.register(topic) == first.register(topic)
    assert [m.value for m in again.receive(topic)] == ["c"]
    latest = client.consumer(start="latest")
    latest.register(topic)
    producer.send(topic, "d")
    assert [m.value for m in latest.receive(topic)] == ["d"]


def test_owned_client_context_managers(broker: BrokerProcess, topic: str) -> None:
    with Producer(broker.url) as producer:
        producer.send(topic, "x")
    with Consumer(broker.url, topics=[topic]) as consumer:
        assert [m.value for m in consumer.receive(topic)] == ["x"]
    with pytest.raises(LogQueueError):
        producer.send(topic, "after close")


def test_stream_interrupted_redelivers_only_unacked_leases(client: Client, topic: str) -> None:
    """A named stream reads in leases (consumer groups): a batch is acked when the loop asks
    for the message after it, and a batch left unfinished comes back whole."""
    values = [f"v{i}" for i in range(25)]
    client.producer().send_many(topic, values)
    name = f"stream-{uuid.uuid4().hex[:6]}"

    # 1. Stuck mid-batch: 15 messages taken (batch 1 acked when the 11th was asked for);
    #    batch 2's lease is still held (and extended while its holder lives).
    stuck = client.consumer(name=name).stream(topic, batch=10, wait=0.1)
    assert [next(stuck).value for _ in range(15)] == values[:15]
    assert client.consumer(name=name).size(topic) == 15

    # 2. A graceful stop (break) mid-batch releases that batch's lease; batch 2 is not given
    #    to a second holder while the first still holds it.
    resumed = client.consumer(name=name)
    got = []
    for msg in resumed.stream(topic, batch=10, wait=0.1):
        got.append(msg.value)
        if len(got) == 3:
            break
    assert got == values[20:23]
    assert resumed.size(topic) == 15

    # 3. The stuck holder stops too: every unacked batch comes again, whole, then the end.
    stuck.close()
    rest = [m.value for m in client.consumer(name=name).stream(topic, batch=10, wait=0.1,
                                                               until_empty=True)]
    assert rest == values[10:]
    assert client.consumer(name=name).size(topic) == 0


def test_an_unnamed_stream_commits_what_the_loop_finished(client: Client, topic: str) -> None:
    values = [f"v{i}" for i in range(25)]
    client.producer().send_many(topic, values)
    consumer = client.consumer()
    got = []
    for msg in consumer.stream(topic, batch=10, wait=0.1):
        got.append(msg.value)
        if len(got) == 13:
            break
    assert got == values[:13]
    assert consumer.size(topic) == 13, "the loop finished 12 messages, not the 13th"
    rest = [m.value for m in consumer.stream(topic, batch=10, wait=0.1, until_empty=True)]
    assert rest == values[12:]


def test_unauthorized(start_broker: Callable[..., BrokerProcess], tmp_path: Path) -> None:
    proc = start_broker(f"sqlite:///{tmp_path / 'auth.db'}", token="s3cret")
    with Client(proc.url) as anonymous, Client(proc.url, token="wrong") as wrong:
        for c in (anonymous, wrong):
            with pytest.raises(Unauthorized) as info:
                c.topics()
            assert info.value.status == 401
    with Client(proc.url, token="s3cret") as c:
        c.create_topic("secured")
        assert c.topics() == ["secured"]


# --- threads ------------------------------------------------------------------------------

def _run(threads: list[threading.Thread], errors: list[BaseException]) -> None:
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors, errors
    assert not any(th.is_alive() for th in threads)


def test_threads_share_one_client(client: Client, topic: str) -> None:
    """Per-request state is per call: each thread gets its own answers through one Session."""
    n_threads, n = 8, 60
    offsets: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            producer = client.producer()
            offsets[i] = [producer.send(f"{topic}-{i}", f"{i}:{k}") for k in range(n)]
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    _run([threading.Thread(target=work, args=(i,)) for i in range(n_threads)], errors)
    consumer = client.consumer()
    for i in range(n_threads):
        assert offsets[i] == list(range(n))
        assert [m.value for m in _drain(consumer, f"{topic}-{i}")] == [
            f"{i}:{k}" for k in range(n)]


def test_producers_and_consumers_in_threads(client: Client, topic: str) -> None:
    """4 producer threads (2 share one Producer), 2 consumers: complete, per-producer order."""
    n_producers, n = 4, 150
    client.create_topic(topic)
    shared = client.producer()
    errors: list[BaseException] = []
    received: dict[int, list[str]] = {0: [], 1: []}
    total = n_producers * n

    def produce(i: int) -> None:
        try:
            producer = shared if i < 2 else client.producer()
            for k in range(0, n, 5):
                if k % 10 == 0:
                    for j in range(k, k + 5):
                        producer.send(topic, f"{i}:{j}")
                else:
                    producer.send_many(topic, [f"{i}:{j}" for j in range(k, k + 5)])
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def consume(c: int) -> None:
        try:
            consumer = client.consumer(name=f"c{c}-{topic}")
            while len(received[c]) < total:
                batch = consumer.receive(topic, max=100, wait=5)
                if not batch:
                    raise AssertionError(f"consumer {c} stalled at {len(received[c])}")
                received[c].extend(m.value for m in batch)
            assert consumer.receive(topic, max=100) == []
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=consume, args=(c,)) for c in received]
    threads += [threading.Thread(target=produce, args=(i,)) for i in range(n_producers)]
    _run(threads, errors)
    for got in received.values():
        assert len(got) == total and len(set(got)) == total
        for i in range(n_producers):
            assert [m for m in got if m.startswith(f"{i}:")] == [f"{i}:{j}" for j in range(n)]
    assert received[0] == received[1]


def test_classic_not_registered_is_client_side(client: Client, topic: str) -> None:
    from sdk.classic import Producer as ClassicProducer

    with pytest.raises(NotRegistered):
        ClassicProducer(client).enqueue("m", topic)
    assert topic not in client.topics()
