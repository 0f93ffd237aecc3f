"""Idempotent produce: ``seq`` per (producer, topic).

A seq above the last appends; equal to the last returns the stored offsets with
``"duplicate": true`` and appends nothing; below the last returns success with
``"duplicate": true``, no offsets, and appends nothing. Checked on the stored log, not
only on the replies; also under concurrent retries and across a kill -9 restart.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from lqhttp import DIALECTS, Api, unique_topic
from support import BrokerProcess


@pytest.fixture(scope="module")
def api(broker: BrokerProcess) -> Iterator[Api]:
    with Api(broker.url) as client:
        yield client


def stored(api: Api, topic: str) -> list[str]:
    return [m["message"] for m in api.read_all(topic, api.consumer(topic))]


def assert_appended(body: dict[str, Any], offsets: list[int]) -> None:
    assert body["offsets"] == offsets, body
    assert body.get("duplicate", False) is False, body


@pytest.mark.parametrize("dialect", DIALECTS)
def test_seq_equal_returns_stored_offsets_lower_appends_nothing(api: Api, dialect: str) -> None:
    topic = unique_topic("idem")
    pid = api.producer(topic)

    def send(seq: int, message: str) -> dict[str, Any]:
        fields = {"topic": topic, "producer_id": pid, "message": message, "seq": seq}
        return api.ok("POST", "/producer/produce", fields, dialect=dialect)

    assert_appended(send(1, "a"), [0, 0])
    again = send(1, "a")
    assert again["offsets"] == [0, 0] and again["duplicate"] is True, again
    assert_appended(send(2, "b"), [1, 1])

    lower = send(1, "a")
    assert lower == {"status": "success", "duplicate": True}, lower
    assert_appended(send(7, "c"), [2, 2])  # seq may jump
    assert send(2, "b") == {"status": "success", "duplicate": True}
    dup = send(7, "c")
    assert dup["offsets"] == [2, 2] and dup["duplicate"] is True, dup
    assert stored(api, topic) == ["a", "b", "c"]


def test_equal_seq_with_other_text_still_appends_nothing(api: Api) -> None:
    topic = unique_topic("idem")
    pid = api.producer(topic)
    assert_appended(api.produce(topic, pid, "original", seq=10), [0, 0])
    retry = api.produce(topic, pid, "changed", seq=10)
    assert retry["offsets"] == [0, 0] and retry["duplicate"] is True
    assert stored(api, topic) == ["original"]


def test_applied_seq_answers_even_when_its_content_would_now_be_refused(api: Api) -> None:
    """A retry after the broker came back with a smaller limit must not be refused (the
    client would split it and store it again under new seqs): an applied seq answers."""
    topic = unique_topic("idem")
    pid = api.producer(topic)
    assert_appended(api.produce(topic, pid, messages=["a", "b"], seq=5), [0, 1])
    oversized = "x" * (1024 * 1024 + 1)
    fields = {"topic": topic, "producer_id": pid, "seq": 5, "messages": ["a", oversized]}
    retry = api.ok("POST", "/producer/produce", fields)
    assert retry["offsets"] == [0, 1] and retry["duplicate"] is True, retry
    lower = api.ok("POST", "/producer/produce", {**fields, "seq": 4})
    assert lower == {"status": "success", "duplicate": True}, lower
    refused = {**fields, "seq": 6}
    api.fail("POST", "/producer/produce", refused, 413, "too_large")
    api.fail("POST", "/producer/produce", {**refused, "messages": ["nul \x00"]}, 400,
             "bad_request")
    api.fail("POST", "/producer/produce", {**refused, "seq": None}, 413, "too_large")
    assert stored(api, topic) == ["a", "b"]


def test_batch_seq(api: Api) -> None:
    topic = unique_topic("idem")
    pid = api.producer(topic)
    assert_appended(api.produce(topic, pid, messages=["x", "y", "z"], seq=1), [0, 2])
    retry = api.produce(topic, pid, messages=["x", "y", "z"], seq=1)
    assert retry["offsets"] == [0, 2] and retry["duplicate"] is True, retry
    assert_appended(api.produce(topic, pid, "w", seq=2), [3, 3])
    assert api.produce(topic, pid, messages=["x", "y", "z"], seq=1) == {
        "status": "success", "duplicate": True}
    assert stored(api, topic) == ["x", "y", "z", "w"]


def test_seq_is_per_producer(api: Api) -> None:
    topic = unique_topic("idem")
    first, second = api.producer(topic), api.producer(topic)
    assert_appended(api.produce(topic, first, "from first", seq=1), [0, 0])
    assert_appended(api.produce(topic, second, "from second", seq=1), [1, 1])
    other_topic = unique_topic("idem")
    third = api.producer(other_topic)
    assert_appended(api.produce(other_topic, third, "elsewhere", seq=1), [0, 0])
    assert stored(api, topic) == ["from first", "from second"]


def test_without_seq_every_send_appends(api: Api) -> None:
    topic = unique_topic("idem")
    pid = api.producer(topic)
    assert [api.produce(topic, pid, "same")["offsets"] for _ in range(3)] == [
        [0, 0], [1, 1], [2, 2]]
    assert stored(api, topic) == ["same"] * 3


def test_concurrent_retries_of_one_seq_append_once(broker: BrokerProcess) -> None:
    """Eight threads send the same (producer, seq) at once, five rounds: one append each."""
    topic = unique_topic("idem")
    with Api(broker.url) as api:
        pid = api.producer(topic)
    rounds, threads = 5, 8
    barrier = threading.Barrier(threads, timeout=30)

    def retry_loop() -> list[dict[str, Any]]:
        replies = []
        with Api(broker.url) as api:
            for seq in range(1, rounds + 1):
                barrier.wait()
                replies.append(api.produce(topic, pid, messages=[f"s{seq}a", f"s{seq}b"],
                                           seq=seq))
        return replies

    with ThreadPoolExecutor(threads) as pool:
        results = [f.result() for f in [pool.submit(retry_loop) for _ in range(threads)]]
    for seq in range(1, rounds + 1):
        replies = [r[seq - 1] for r in results]
        # Rounds are barriers, so every request of a round carries the last seq or appends
        # it: every reply has the round's offsets, and exactly one is not a duplicate.
        assert all(r["offsets"] == [2 * seq - 2, 2 * seq - 1] for r in replies), replies
        assert sum(not r.get("duplicate", False) for r in replies) == 1, replies
    with Api(broker.url) as api:
        assert stored(api, topic) == [f"s{s}{x}" for s in range(1, rounds + 1) for x in "ab"]


def test_seq_survives_kill_9(db_url: str, start_broker) -> None:
    proc = start_broker(db_url)
    topic = unique_topic("idem")
    with Api(proc.url) as api:
        pid = api.producer(topic)
        assert_appended(api.produce(topic, pid, messages=["a", "b"], seq=41), [0, 1])
        assert_appended(api.produce(topic, pid, "c", seq=42), [2, 2])
    proc.kill()
    proc.start()
    with Api(proc.url) as api:
        retry = api.produce(topic, pid, "c", seq=42)
        assert retry["offsets"] == [2, 2] and retry["duplicate"] is True, retry
        assert api.produce(topic, pid, messages=["a", "b"], seq=41) == {
            "status": "success", "duplicate": True}
        assert_appended(api.produce(topic, pid, "d", seq=43), [3, 3])
        assert stored(api, topic) == ["a", "b", "c", "d"]
