"""Several broker processes (gunicorn workers, or whole brokers) on one PostgreSQL.

Offsets come from the database, positions move atomically, wake-ups cross processes: the
same guarantees as one process. Every test checks each message, its order and its count.
"""

from __future__ import annotations

import itertools
import threading
from collections import defaultdict

import pytest
from lqhttp import Api, Brokers, first_answer, longpoll_waiters, warm_up_long_polls
from support import wait_until

TOPICS = ("alpha", "beta")
PRODUCERS = 8
CONSUMERS = 4
PER_PRODUCER = 120  # messages per producer, spread over both topics


def produce_all(urls: list[str], prefix: str) -> dict[str, list[str]]:
    """8 producer threads; returns what each topic should hold, per producer in order."""
    expected: dict[str, list[str]] = defaultdict(list)
    lock = threading.Lock()

    def producer(n: int) -> None:
        client = Brokers(urls[n % len(urls):] + urls[:n % len(urls)])
        ids = {t: client.call("POST", "/producer/register", topic=f"{prefix}{t}")["producer_id"]
               for t in TOPICS}
        for i in range(PER_PRODUCER):
            topic = TOPICS[i % 2]
            message = f"p{n}:{i}"
            client.call("POST", "/producer/produce", topic=f"{prefix}{topic}",
                        producer_id=ids[topic], message=message)
            with lock:
                expected[topic].append(message)

    run_threads(producer, PRODUCERS)
    return expected


def run_threads(target, count: int) -> None:
    errors: list[BaseException] = []

    def guarded(n: int) -> None:
        try:
            target(n)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors


def check_topic_log(received: list[tuple[int, str]], expected: list[str]) -> None:
    """Exactly once, offsets gapless from 0, each producer's messages in its order."""
    offsets = [offset for offset, _ in received]
    assert offsets == list(range(len(expected))), "offsets must be gapless and in order"
    assert sorted(m for _, m in received) == sorted(expected)
    per_producer: dict[str, list[int]] = defaultdict(list)
    for _, message in received:
        producer, index = message.split(":")
        per_producer[producer].append(int(index))
    for producer, indexes in per_producer.items():
        assert indexes == sorted(indexes), f"{producer} out of order"


def run_traffic(urls: list[str], prefix: str) -> None:
    """8 producers and 4 consumers at once; every consumer gets every message exactly once."""
    for topic in TOPICS:  # consumers register first so they see everything
        Brokers(urls).call("POST", "/topics", topic_name=f"{prefix}{topic}")
    received: dict[int, dict[str, list[tuple[int, str]]]] = defaultdict(lambda: defaultdict(list))
    total = PRODUCERS * PER_PRODUCER

    def consumer(n: int) -> None:
        client = Brokers(urls[n % len(urls):] + urls[:n % len(urls)])
        ids = {t: client.call("POST", "/consumer/register", topic=f"{prefix}{t}")["consumer_id"]
               for t in TOPICS}

        def got() -> int:
            return sum(len(v) for v in received[n].values())

        for step in itertools.count():
            if got() >= total:
                return
            assert step < 20_000, "consumer made no progress"
            topic = TOPICS[step % 2]
            batch = client.call("GET", "/consumer/consume", topic=f"{prefix}{topic}",
                                consumer_id=ids[topic], max=50, wait_ms=50)["messages"]
            received[n][topic].extend((m["offset"], m["message"]) for m in batch)

    consumers = threading.Thread(target=run_threads, args=(consumer, CONSUMERS))
    consumers.start()
    expected = produce_all(urls, prefix)
    consumers.join(120)
    assert not consumers.is_alive()
    for n in range(CONSUMERS):
        for topic in TOPICS:
            check_topic_log(received[n][topic], expected[topic])
            assert received[n][topic] == received[0][topic], "all consumers see one order"


def test_two_gunicorn_workers(pg_url: str, start_broker) -> None:
    broker = start_broker(pg_url, args=["--workers", "2", "--threads", "16"])
    run_traffic([broker.url], "w2-")


def test_clients_alternate_between_two_brokers(pg_url: str, start_broker) -> None:
    a = start_broker(pg_url, args=["--workers", "1"])
    b = start_broker(pg_url, args=["--workers", "1"])
    run_traffic([a.url, b.url], "ab-")


def test_one_consumer_id_through_two_brokers_never_duplicates(pg_url: str, start_broker) -> None:
    a = start_broker(pg_url, args=["--workers", "1"])
    b = start_broker(pg_url, args=["--workers", "1"])
    client = Api(a.url)
    topic = "shared-id"
    pid = client.call("POST", "/producer/register", topic=topic)["producer_id"]
    messages = [f"m{i}" for i in range(600)]
    client.call("POST", "/producer/produce", topic=topic, producer_id=pid, messages=messages)
    cid = client.call("POST", "/consumer/register", topic=topic)["consumer_id"]
    taken: dict[int, list[tuple[int, str]]] = {0: [], 1: []}

    def drain(n: int) -> None:
        one = Api((a, b)[n].url)
        while True:
            reply = one.consume(topic, cid)
            if reply.body.get("error") == "queue_empty":
                return
            assert reply.code == 200, reply
            taken[n].append((reply.body["offset"], reply.body["message"]))

    run_threads(drain, 2)
    both = sorted(taken[0] + taken[1])
    assert [m for _, m in both] == messages, "every message once, across both brokers"
    assert taken[0] and taken[1], "both brokers served part of the queue"
    for n in (0, 1):
        assert [o for o, _ in taken[n]] == sorted(o for o, _ in taken[n])


def test_long_poll_on_a_wakes_for_produce_on_b(pg_url: str, start_broker) -> None:
    """Only b's NOTIFY can wake a: a re-checks the database far less often than it waits."""
    no_recheck = ["--workers", "1", "--recheck-interval", "3600"]
    a = start_broker(pg_url, args=no_recheck)
    b = start_broker(pg_url, args=no_recheck)
    topic = "cross-wake"
    Api(a.url).call("POST", "/topics", topic_name=topic)
    cid = Api(a.url).call("POST", "/consumer/register", topic=topic)["consumer_id"]
    result: list[dict] = []
    waiter = threading.Thread(target=lambda: result.append(Api(a.url, timeout=45).call(
        "GET", "/consumer/consume", topic=topic, consumer_id=cid, wait_ms=30000)))
    pid = Api(b.url).call("POST", "/producer/register", topic=topic)["producer_id"]
    with Api(a.url) as api:
        warm_up_long_polls(api)
    waiter.start()
    wait_until(lambda: longpoll_waiters(a.url) == 1, message="the long-poll on a")
    Api(b.url).call("POST", "/producer/produce", topic=topic, producer_id=pid, message="from b")
    waiter.join(20)  # well before the 30 s wait runs out: only a wake-up ends it by then
    assert result, "the produce on b did not wake the long-poll on a"
    assert [m["message"] for m in result[0]["messages"]] == ["from b"]


@pytest.mark.timeout(180)
def test_kill_one_of_two_brokers_under_load(pg_url: str, start_broker) -> None:
    """Producers (with seq, retrying on the survivor) and consumers run through both brokers."""
    a = start_broker(pg_url, args=["--workers", "1"])
    b = start_broker(pg_url, args=["--workers", "1"])
    topic = "survive"
    Api(a.url).call("POST", "/topics", topic_name=topic)
    acknowledged: dict[int, list[str]] = defaultdict(list)
    consumed: dict[int, list[tuple[int, str]]] = defaultdict(list)
    killed = threading.Event()
    stop_consumers = threading.Event()

    def producer(n: int) -> None:
        urls = [a.url, b.url] if n % 2 == 0 else [b.url, a.url]
        pid = first_answer(urls, "POST", "/producer/register", {"topic": topic})["producer_id"]
        for i in range(150):
            message = f"p{n}:{i}"
            body = first_answer(urls, "POST", "/producer/produce", {
                "topic": topic, "producer_id": pid, "message": message, "seq": i + 1})
            assert body["status"] == "success", body
            acknowledged[n].append(message)
            if n == 0 and i == 50:
                a.kill()  # kill -9, mid-stream
                killed.set()

    def consumer(n: int) -> None:
        urls = [a.url, b.url] if n % 2 == 0 else [b.url, a.url]
        cid = first_answer(urls, "POST", "/consumer/register", {"topic": topic})["consumer_id"]
        while not stop_consumers.is_set():
            try:
                body = first_answer(urls, "GET", "/consumer/consume", {
                    "topic": topic, "consumer_id": cid, "max": 20, "wait_ms": 100})
            except AssertionError:
                continue
            consumed[n].extend((m["offset"], m["message"]) for m in body.get("messages", []))

    consumers = threading.Thread(target=run_threads, args=(consumer, 2))
    consumers.start()
    run_threads(producer, 4)
    assert killed.is_set()
    # Consumers catch up through the survivor, then stop.
    with Api(b.url) as survivor:
        full_log = [(m["offset"], m["message"])
                    for m in survivor.read_all(topic, survivor.consumer(topic))]
    wait_until(lambda: all(consumed[n] and consumed[n][-1][0] >= len(full_log) - 1
                           for n in range(2)), timeout=30, message="consumers to catch up")
    stop_consumers.set()
    consumers.join(30)

    expected = [m for n in sorted(acknowledged) for m in acknowledged[n]]
    check_topic_log(full_log, expected)  # nothing acknowledged lost, nothing appended twice
    for n in range(2):
        offsets = [o for o, _ in consumed[n]]
        assert len(offsets) == len(set(offsets)), "nothing delivered twice through consume"
        assert offsets == sorted(offsets)
