"""Concurrency in one broker: 8 producer threads and 4 consumer threads over 2 topics.

Every consumer must receive every acknowledged message exactly once, at the offset its
producer was told, in offset order (so all consumers of a topic see the same order), and each
producer's messages in the order it sent them. Once with the classic one-message consume,
once with batch produce and batch + long-poll consume.
"""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import pytest
from lqhttp import Api, unique_topic
from support import BrokerProcess

PRODUCERS = 8
CONSUMERS = 4
DEADLINE = 90.0

Received = list[tuple[int, str]]


def produce_all(url: str, index: int, topics: list[str], count: int, batched: bool,
                start: threading.Barrier) -> dict[str, Received]:
    """Send ``count`` messages to each topic; return what was acknowledged, per topic."""
    rng = random.Random(index)
    acked: dict[str, Received] = defaultdict(list)
    with Api(url) as api:
        pids = {t: api.producer(t) for t in topics}
        start.wait()
        k = 0
        while k < count:
            n = rng.randint(1, 10) if batched else 1
            n = min(n, count - k)
            for t_index, topic in enumerate(topics):
                texts = [f"p{index}|t{t_index}|{j:05d}" for j in range(k, k + n)]
                if batched:
                    first, last = api.produce(topic, pids[topic], messages=texts)["offsets"]
                else:
                    first, last = api.produce(topic, pids[topic], texts[0])["offsets"]
                assert last - first + 1 == n, (first, last, n)
                acked[topic].extend(zip(range(first, last + 1), texts, strict=True))
            k += n
    return acked


def consume_all(url: str, topics: list[str], expected: int, batched: bool,
                start: threading.Barrier, done: threading.Event) -> dict[str, Received]:
    """Consume every topic until ``expected`` messages each; then check nothing more comes."""
    got: dict[str, Received] = {t: [] for t in topics}
    with Api(url) as api:
        cids = {t: api.consumer(t) for t in topics}
        start.wait()
        deadline = time.monotonic() + DEADLINE
        while any(len(got[t]) < expected for t in topics):
            assert time.monotonic() < deadline, {t: len(v) for t, v in got.items()}
            assert not done.is_set(), "another thread failed"
            progressed = False
            for topic in topics:
                if len(got[topic]) >= expected:
                    continue
                if batched:
                    batch = api.consume_batch(topic, cids[topic], max=50, wait_ms=200)
                    got[topic].extend((m["offset"], m["message"]) for m in batch)
                    progressed |= bool(batch)
                else:
                    reply = api.consume(topic, cids[topic])
                    if reply.code == 200:
                        got[topic].append((reply.body["offset"], reply.body["message"]))
                        progressed = True
                    else:
                        assert reply.body["error"] == "queue_empty", reply
            if not progressed and not batched:
                done.wait(0.002)  # poll interval while producers catch up, not a sync point
        for topic in topics:
            if batched:
                assert api.consume_batch(topic, cids[topic], max=10) == [], "extra messages"
            else:
                assert api.consume(topic, cids[topic]).body["error"] == "queue_empty"
            assert api.size(topic, cids[topic]) == 0
    return got


def run(url: str, per_producer: int, batched: bool) -> None:
    topics = [unique_topic("conc-a"), unique_topic("conc-b")]
    with Api(url) as api:
        for topic in topics:
            api.create_topic(topic)
    expected = PRODUCERS * per_producer
    start = threading.Barrier(PRODUCERS + CONSUMERS, timeout=30)
    failed = threading.Event()
    with ThreadPoolExecutor(PRODUCERS + CONSUMERS) as pool:
        consumers = [pool.submit(consume_all, url, topics, expected, batched, start, failed)
                     for _ in range(CONSUMERS)]
        producers = [pool.submit(produce_all, url, i, topics, per_producer, batched, start)
                     for i in range(PRODUCERS)]
        try:
            acked = [f.result() for f in producers]
            received = [f.result() for f in consumers]
        except BaseException:
            failed.set()
            start.abort()
            raise

    for topic in topics:
        log = sorted(pair for per in acked for pair in per[topic])
        assert [offset for offset, _ in log] == list(range(expected)), "offsets not gapless"
        for index in range(PRODUCERS):
            mine = [text for _, text in log if text.startswith(f"p{index}|")]
            assert mine == sorted(mine) and len(mine) == per_producer, f"producer {index} order"
        for number, got in enumerate(received):
            diff = next((i for i, pair in enumerate(got[topic]) if i >= len(log)
                         or pair != log[i]), None)
            assert got[topic] == log, (
                f"consumer {number} on {topic}: first difference at index {diff}, "
                f"{len(got[topic])} received, {len(log)} acknowledged")


def test_classic_produce_and_consume(broker: BrokerProcess) -> None:
    run(broker.url, per_producer=30, batched=False)


def test_batch_produce_and_long_poll_consume(broker: BrokerProcess) -> None:
    run(broker.url, per_producer=200, batched=True)


@pytest.mark.parametrize("batched", [False, True], ids=["classic", "batch"])
def test_one_consumer_id_shared_by_threads_gets_each_message_once(broker: BrokerProcess,
                                                                  batched: bool) -> None:
    """Consuming moves the position atomically: threads sharing one id split the messages."""
    topic = unique_topic("shared")
    total = 300
    with Api(broker.url) as api:
        pid = api.producer(topic)
        cid = api.consumer(topic)
        api.produce(topic, pid, messages=[f"m{i:04d}" for i in range(total)])

    def drain() -> Received:
        out: Received = []
        with Api(broker.url) as api:
            while True:
                if batched:
                    batch = api.consume_batch(topic, cid, max=7)
                    if not batch:
                        return out
                    out.extend((m["offset"], m["message"]) for m in batch)
                else:
                    reply = api.consume(topic, cid)
                    if reply.code != 200:
                        assert reply.body["error"] == "queue_empty", reply
                        return out
                    out.append((reply.body["offset"], reply.body["message"]))

    with ThreadPoolExecutor(6) as pool:
        parts = [f.result() for f in [pool.submit(drain) for _ in range(6)]]
    for part in parts:
        assert part == sorted(part), "one thread saw offsets out of order"
    merged = sorted(pair for part in parts for pair in part)
    assert merged == [(i, f"m{i:04d}") for i in range(total)]
