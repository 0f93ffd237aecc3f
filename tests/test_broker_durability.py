"""Durability: kill -9 the broker under load, restart it on the same database, check the log.

Every acknowledged (HTTP 200) append must be there, at the offset it was given, in each
producer's order, with no gaps; the only other messages allowed are each producer's one
request in flight at the kill. Every consumer's position is where it was acknowledged.
Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import itertools
import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import requests
from lqhttp import Api, unique_topic
from support import BrokerProcess, wait_until

PRODUCERS = 4
KILL_AFTER = 1000 # acknowledged messages before the kill


@dataclass
class ProducerLog:
    pids: dict[str, int]
    acked: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    in_flight: tuple[str, list[str]] | None = None


def producer_loop(url: str, index: int, topics: list[str], log: ProducerLog,
                  counter: Callable[[int], None]) -> None:
    """Send batches of 1-5 messages, alternating topics, until the broker dies."""
    rng = random.Random(index)
    with Api(url, timeout=10) as api:
        for k in itertools.count():
            topic = topics[k % len(topics)]
            n = rng.randint(1, 5)
            seen = len(log.acked.setdefault(topic, []))
            texts = [f"p{index}|{topic}|{seen + j:06d}" for j in range(n)]
            log.in_flight = (topic, texts)
            try:
                if n == 1:
                    body = api.produce(topic, log.pids[topic], texts[0])
                else:
                    body = api.produce(topic, log.pids[topic], messages=texts)
            except requests.RequestException:
                return  # the broker is gone: this request may or may not have committed
            first, last = body["offsets"]
            assert last - first + 1 == n, body
            log.acked[topic].extend(zip(range(first, last + 1), texts, strict=True))
            log.in_flight = None
            counter(n)


def consumer_loop(url: str, topic: str, cid: int, acked: list[int]) -> None:
    """Classic consume until the broker dies; record every acknowledged offset."""
    with Api(url, timeout=10) as api:
        while True:
            try:
                reply = api.consume(topic, cid)
            except requests.RequestException:
                return
            if reply.code == 200:
                acked.append(reply.body["offset"])
            else:
                assert reply.body["error"] == "queue_empty", reply


def check_stored(api: Api, topic: str, logs: list[ProducerLog]) -> list[tuple[int, str]]:
    """The topic holds every acknowledged message at its offset, gapless, each producer's in
    order, plus at most the batch in flight at the kill; returns (offset, text) stored."""
    stored = [(m["offset"], m["message"]) for m in api.read_all(topic, api.consumer(topic))]
    assert [o for o, _ in stored] == list(range(len(stored))), f"{topic}: gaps"
    at = dict(stored)
    for index, log in enumerate(logs):
        acked = log.acked.get(topic, [])
        for offset, text in acked:
            assert at.get(offset) == text, f"acknowledged {text} at {offset} is lost"
        mine = [m for _, m in stored if m.startswith(f"p{index}|")]
        sent = [t for _, t in acked]
        extra = log.in_flight[1] if log.in_flight and log.in_flight[0] == topic else []
        assert mine in (sent, sent + extra), (
            f"producer {index} on {topic}: stored {len(mine)}, acknowledged {len(sent)}"
            f", in flight {len(extra)}")
    return stored


def test_kill_9_under_load_loses_no_acknowledged_message(db_url: str, start_broker) -> None:
    proc: BrokerProcess = start_broker(db_url)
    topics = [unique_topic("dur-a"), unique_topic("dur-b")]
    with Api(proc.url) as api:
        for topic in topics:
            api.create_topic(topic)
        # Quiet consumers with known positions before the load starts.
        seed_pid = api.producer(topics[0])
        api.produce(topics[0], seed_pid, messages=[f"seed-{i:02d}" for i in range(20)])
        named = api.consumer(topics[0], consumer_name="runner")
        for expected in range(7):
            assert api.consume(topics[0], named).body["offset"] == expected
        committed = api.consumer(topics[0])
        assert api.commit(topics[0], committed, 12) == 12
        busy = api.consumer(topics[1])
        logs = [ProducerLog({t: api.producer(t) for t in topics}) for _ in range(PRODUCERS)]

    total = 0
    lock = threading.Lock()

    def count(n: int) -> None:
        nonlocal total
        with lock:
            total += n

    consumed: list[int] = []
    with ThreadPoolExecutor(PRODUCERS + 1) as pool:
        futures = [pool.submit(producer_loop, proc.url, i, topics, logs[i], count)
                   for i in range(PRODUCERS)]
        futures.append(pool.submit(consumer_loop, proc.url, topics[1], busy, consumed))
        try:
            wait_until(lambda: total >= KILL_AFTER and consumed, timeout=60,
                       message=f"{KILL_AFTER} acknowledged messages")
            assert all(not f.done() for f in futures), "a load thread stopped early"
        finally:
            proc.kill()
        for f in futures:
            f.result(timeout=30)

    proc.start()
    with Api(proc.url) as api:
        for topic in topics:
            stored = check_stored(api, topic, logs)
            # The registrations survived: the same producer id appends at the end.
            next_offset = api.produce(topic, logs[0].pids[topic], "after restart")["offsets"]
            assert next_offset == [len(stored), len(stored)]

        # Positions: exactly where they were for the quiet consumers ...
        assert api.consumer(topics[0], consumer_name="runner") == named
        assert api.fetch(topics[0], named, max=1)["position"] == 7
        assert api.consume(topics[0], named).body["offset"] == 7
        assert api.fetch(topics[0], committed, max=1)["position"] == 12
        # ... and, for the one consuming at the kill, after its last acknowledged message
        # (plus the one consume in flight, which may have committed).
        assert consumed == list(range(len(consumed))), "consume skipped or repeated"
        assert api.fetch(topics[1], busy, max=1)["position"] in (len(consumed),
                                                                 len(consumed) + 1)
