"""Long-poll: ``wait_ms`` on an empty topic returns what another thread produces meanwhile.

The assertions are on the messages, not on timing: a broker that ignores ``wait_ms`` and
answers an empty list at once fails these tests whenever the produce comes after the
request, which is the usual order here (each waiter signals just before it sends).

The wake-up tests produce only once the broker reports the waiters waiting, and want the
reply within WOKEN_WITHIN seconds, well before the wait could run out; the broker re-checks
the database only every RECHECK_SECONDS, far above the wait. So only a wake-up can bring
the reply in time: without one, the reply comes when the wait runs out (with the message
then found), too late.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from lqhttp import Api, longpoll_waiters, unique_topic, warm_up_long_polls
from support import BrokerProcess, wait_until

WAIT_MS = 30_000  # the longest the contract allows
WOKEN_WITHIN = 20.0  # seconds: a reply before the wait runs out can only be a wake-up's
RECHECK_SECONDS = 3600  # the broker's --recheck-interval: never within a test's wait


@pytest.fixture(scope="module")
def broker(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """This module's broker: one that never re-checks the database during a wait."""
    log = tmp_path_factory.mktemp("longpoll") / "broker.log"
    with BrokerProcess(db_url, log_path=log,
                       args=["--recheck-interval", str(RECHECK_SECONDS)]) as proc, \
            Api(proc.url) as api:
        warm_up_long_polls(api)
        yield proc


@pytest.fixture(scope="module")
def api(broker: BrokerProcess) -> Iterator[Api]:
    with Api(broker.url) as client:
        yield client


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(4) as executor:
        yield executor


def waiters_reach(url: str, count: int) -> None:
    """Until `count` requests wait in a long-poll: a produce after this is one they missed."""
    wait_until(lambda: longpoll_waiters(url) == count, timeout=10,
               message=f"{count} long-poll waiters")


def woken(future: Future) -> dict[str, Any]:
    """The long-poll's reply, which must come before its wait could run out."""
    try:
        return future.result(timeout=WOKEN_WITHIN)
    except TimeoutError:
        raise AssertionError(f"no reply within {WOKEN_WITHIN} s of a {WAIT_MS} ms wait: "
                             "the produce did not wake the waiter") from None


def waiting(pool: ThreadPoolExecutor, url: str, path: str, fields: dict[str, Any]
            ) -> tuple[Future, threading.Event]:
    """Send a long-poll GET on a worker thread; the event is set just before it sends."""
    sending = threading.Event()

    def call() -> dict[str, Any]:
        with Api(url) as api:
            sending.set()
            return api.ok("GET", path, {**fields, "wait_ms": WAIT_MS},
                          timeout=WAIT_MS / 1000 + 15)

    return pool.submit(call), sending


@pytest.mark.parametrize("path", ["/consumer/consume", "/consumer/fetch"])
def test_wait_returns_the_message_produced_meanwhile(api: Api, broker: BrokerProcess,
                                                     pool: ThreadPoolExecutor,
                                                     path: str) -> None:
    topic = unique_topic("lp")
    pid = api.producer(topic)
    cid = api.consumer(topic)
    future, sending = waiting(pool, broker.url, path, {"topic": topic, "consumer_id": cid})
    assert sending.wait(10)
    waiters_reach(broker.url, 1)
    api.produce(topic, pid, "wake up")
    body = woken(future)
    assert [(m["offset"], m["message"]) for m in body["messages"]] == [(0, "wake up")], body
    if path == "/consumer/fetch":
        assert body["position"] == 0
        assert api.size(topic, cid) == 1, "fetch moved the position"
    else:
        assert api.size(topic, cid) == 0


def test_timeout_returns_empty_list_and_keeps_position(api: Api) -> None:
    topic = unique_topic("lp")
    pid = api.producer(topic)
    cid = api.consumer(topic)
    body = api.ok("GET", "/consumer/consume",
                  {"topic": topic, "consumer_id": cid, "wait_ms": 300})
    assert body == {"status": "success", "messages": []}
    fetched = api.ok("GET", "/consumer/fetch", {"topic": topic, "consumer_id": cid,
                                                "wait_ms": 200})
    assert fetched["messages"] == [] and fetched["position"] == 0
    api.produce(topic, pid, "later")
    assert api.consume(topic, cid).body == {
        "status": "success", "message": "later", "log_message": "later", "offset": 0}


def test_wait_on_a_non_empty_topic_returns_what_is_there(api: Api) -> None:
    topic = unique_topic("lp")
    pid = api.producer(topic)
    cid = api.consumer(topic)
    api.produce(topic, pid, messages=["a", "b"])
    got = api.consume_batch(topic, cid, max=10, wait_ms=WAIT_MS)
    assert [(m["offset"], m["message"]) for m in got] == [(0, "a"), (1, "b")]


def test_one_produce_wakes_every_consumer(api: Api, broker: BrokerProcess,
                                          pool: ThreadPoolExecutor) -> None:
    topic = unique_topic("lp")
    pid = api.producer(topic)
    cids = [api.consumer(topic) for _ in range(3)]
    calls = [waiting(pool, broker.url, "/consumer/consume", {"topic": topic, "consumer_id": c})
             for c in cids]
    for _, sending in calls:
        assert sending.wait(10)
    waiters_reach(broker.url, 3)
    api.produce(topic, pid, messages=["one", "two"])
    for future, _ in calls:
        body = woken(future)
        # A batch is atomic: a waiter wakes to both messages, never to half of it.
        assert [m["message"] for m in body["messages"]] == ["one", "two"], body


def test_two_waiters_on_one_consumer_id_split_the_messages(api: Api, broker: BrokerProcess,
                                                           pool: ThreadPoolExecutor) -> None:
    topic = unique_topic("lp")
    pid = api.producer(topic)
    cid = api.consumer(topic)
    fields = {"topic": topic, "consumer_id": cid, "max": 10}
    calls = [waiting(pool, broker.url, "/consumer/consume", fields) for _ in range(2)]
    for _, sending in calls:
        assert sending.wait(10)
    waiters_reach(broker.url, 2)
    api.produce(topic, pid, "first")
    first = wait_until(lambda: [f for f, _ in calls if f.done()], timeout=WOKEN_WITHIN,
                       message="one waiter to wake")
    waiters_reach(broker.url, 1)
    api.produce(topic, pid, "second")
    bodies = [woken(f) for f, _ in calls]
    got = sorted((m["offset"], m["message"]) for b in bodies for m in b["messages"])
    assert got == [(0, "first"), (1, "second")], bodies
    assert first[0].result()["messages"][0]["message"] == "first"
