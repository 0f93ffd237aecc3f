"""The course's Part C workload (tests/workloads/assignment1) replayed over raw HTTP.

Five producer threads (one per file, one message per request, as the students' drivers sent
them) and three consumer threads run at once, with the README's topology. Each consumer must
receive exactly what was produced to its topics: the same messages, each once, each
producer's in file order, all at the offsets the producers were told.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from lqhttp import Api
from support import BrokerProcess

WORKLOAD = Path(__file__).resolve().parent / "workloads" / "assignment1"
CONSUMER_TOPICS = {"consumer_1": ["T-1", "T-2", "T-3"], "consumer_2": ["T-1", "T-3"],
                   "consumer_3": ["T-1", "T-3"]}
TOPIC_TOTALS = {"T-1": 1821, "T-2": 2317, "T-3": 827}
DEADLINE = 120.0

Lines = list[tuple[str, str]]  # (topic, message)


def load(number: int) -> Lines:
    """The file's lines as the student drivers sent them: topic = last field, message = rest."""
    out: Lines = []
    for line in (WORKLOAD / f"producer_{number}.txt").read_text().splitlines():
        *fields, topic = line.strip().split("\t")
        out.append((topic, "\t".join(fields)))
    return out


@pytest.fixture(scope="module")
def files() -> dict[int, Lines]:
    if not WORKLOAD.is_dir():
        pytest.fail(f"workload not found at {WORKLOAD}")
    data = {n: load(n) for n in range(1, 6)}
    totals: dict[str, int] = defaultdict(int)
    for lines in data.values():
        for topic, _ in lines:
            totals[topic] += 1
    assert dict(totals) == TOPIC_TOTALS, "the workload files changed"
    assert load(1)[0] == ("T-1", "21:52:23\tINFO\t\tP1-1\t")
    return data


def produce_file(url: str, lines: Lines, start: threading.Barrier) -> dict[str, list[int]]:
    """Register on the topics of the file, send every line; return the offsets, per topic."""
    offsets: dict[str, list[int]] = defaultdict(list)
    with Api(url) as api:
        pids = {topic: api.producer(topic) for topic in dict.fromkeys(t for t, _ in lines)}
        start.wait()
        for topic, message in lines:
            first, last = api.produce(topic, pids[topic], message)["offsets"]
            assert first == last, (first, last)
            offsets[topic].append(first)
    return offsets


def consume_topics(url: str, topics: list[str], start: threading.Barrier,
                   failed: threading.Event) -> dict[str, list[tuple[int, str]]]:
    """Dequeue one message at a time, round robin over the topics, until all are drained."""
    got: dict[str, list[tuple[int, str]]] = {t: [] for t in topics}
    with Api(url) as api:
        start.wait()
        cids = {topic: api.consumer(topic) for topic in topics}
        deadline = time.monotonic() + DEADLINE
        while any(len(got[t]) < TOPIC_TOTALS[t] for t in topics):
            assert time.monotonic() < deadline, {t: len(v) for t, v in got.items()}
            assert not failed.is_set(), "another thread failed"
            for topic in topics:
                if len(got[topic]) >= TOPIC_TOTALS[topic]:
                    continue
                batch = api.consume_batch(topic, cids[topic], max=100, wait_ms=100)
                got[topic].extend((m["offset"], m["message"]) for m in batch)
                reply = api.consume(topic, cids[topic])  # and one through the classic call
                if reply.code == 200:
                    got[topic].append((reply.body["offset"], reply.body["message"]))
                else:
                    assert reply.body["error"] == "queue_empty", reply
        for topic in topics:
            assert api.consume(topic, cids[topic]).body["error"] == "queue_empty"
    return got


def test_part_c_workload(broker: BrokerProcess, files: dict[int, Lines]) -> None:
    # The consumers register on topics that must exist: create them as the course's setup did.
    with Api(broker.url) as api:
        for topic in TOPIC_TOTALS:
            api.create_topic(topic)
    start = threading.Barrier(5 + 3, timeout=30)
    failed = threading.Event()
    with ThreadPoolExecutor(8) as pool:
        producers = {n: pool.submit(produce_file, broker.url, files[n], start) for n in files}
        consumers = {name: pool.submit(consume_topics, broker.url, topics, start, failed)
                     for name, topics in CONSUMER_TOPICS.items()}
        try:
            offsets = {n: f.result() for n, f in producers.items()}
            received = {name: f.result() for name, f in consumers.items()}
        except BaseException:
            failed.set()
            start.abort()
            raise

    # The log each topic should hold, from the producers' acknowledgements.
    log: dict[str, dict[int, str]] = defaultdict(dict)
    for n, lines in files.items():
        per_topic: dict[str, list[str]] = defaultdict(list)
        for topic, message in lines:
            per_topic[topic].append(message)
        for topic, messages in per_topic.items():
            assert offsets[n][topic] == sorted(offsets[n][topic]), f"producer_{n} {topic} order"
            for offset, message in zip(offsets[n][topic], messages, strict=True):
                assert offset not in log[topic], f"offset {offset} of {topic} given twice"
                log[topic][offset] = message
    for topic, total in TOPIC_TOTALS.items():
        assert sorted(log[topic]) == list(range(total)), f"{topic}: offsets not gapless"

    for name, topics in CONSUMER_TOPICS.items():
        assert set(received[name]) == set(topics)
        for topic in topics:
            got = received[name][topic]
            assert [o for o, _ in got] == list(range(TOPIC_TOTALS[topic])), (
                f"{name} {topic}: offsets received out of order, missing or twice")
            assert got == sorted(log[topic].items()), f"{name} {topic}: wrong message at offset"
            # Per producer, exactly its lines for this topic, in file order (the time field
            # names the file).
            for n, lines in files.items():
                stamp = lines[0][1].split("\t")[0]
                sent = [m for t, m in lines if t == topic]
                assert [m for _, m in got if m.startswith(stamp + "\t")] == sent, (
                    f"{name} {topic}: producer_{n}'s messages differ from its file")
