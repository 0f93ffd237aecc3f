"""Retention and deletion: bounded disk, exact sizes, consumers told what they missed."""

from __future__ import annotations

import threading

import pytest
from lqhttp import Api
from support import BrokerProcess, wait_until


@pytest.fixture(scope="module")
def pruning_broker(db_url: str, tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("retention") / "broker.log"
    with BrokerProcess(db_url, args=["--prune-interval", "0.05"], log_path=log) as proc:
        yield proc


def describe(api: Api, topic: str) -> dict:
    return api.call("GET", "/topics/describe", topic=topic)


def produce(api: Api, topic: str, pid: int, messages: list[str]) -> list[int]:
    return api.call("POST", "/producer/produce", topic=topic, producer_id=pid,
                    messages=messages)["offsets"]


def test_retention_by_count_prunes_and_consumers_skip(pruning_broker: BrokerProcess) -> None:
    api, topic = Api(pruning_broker.url), "keep-ten"
    api.call("POST", "/topics", topic_name=topic, retention_messages=10)
    pid = api.call("POST", "/producer/register", topic=topic)["producer_id"]
    behind = api.call("POST", "/consumer/register", topic=topic)["consumer_id"]
    reader = api.call("POST", "/consumer/register", topic=topic)["consumer_id"]
    produce(api, topic, pid, [f"a{i}" for i in range(5)])
    # `reader` takes 3 of the first 5; `behind` takes none.
    got = api.call("GET", "/consumer/consume", topic=topic, consumer_id=reader, max=3)
    assert [m["message"] for m in got["messages"]] == ["a0", "a1", "a2"]
    produce(api, topic, pid, [f"b{i}" for i in range(45)])  # offsets 5..49

    wait_until(lambda: describe(api, topic)["first_offset"] == 40, timeout=20,
               message="retention to keep the last 10 messages")
    info = describe(api, topic)
    assert (info["messages"], info["next_offset"], info["retention_messages"]) == (10, 50, 10)
    for cid in (behind, reader):
        assert api.call("GET", "/size", topic=topic, consumer_id=cid)["size"] == 10

    got = api.call("GET", "/consumer/consume", topic=topic, consumer_id=behind, max=4)
    assert got["skipped"] == 40
    assert [m["offset"] for m in got["messages"]] == [40, 41, 42, 43]
    assert [m["message"] for m in got["messages"]] == ["b35", "b36", "b37", "b38"]
    classic = api.call("GET", "/consumer/consume", topic=topic, consumer_id=reader)
    assert (classic["offset"], classic["message"], classic["skipped"]) == (40, "b35", 37)
    again = api.call("GET", "/consumer/consume", topic=topic, consumer_id=behind, max=100)
    assert "skipped" not in again
    assert [m["offset"] for m in again["messages"]] == list(range(44, 50))
    assert api.call("GET", "/size", topic=topic, consumer_id=behind)["size"] == 0


def test_retention_by_age_and_changed_later(pruning_broker: BrokerProcess) -> None:
    api, topic = Api(pruning_broker.url), "by-age"
    pid = api.call("POST", "/producer/register", topic=topic)["producer_id"]
    produce(api, topic, pid, [f"old{i}" for i in range(30)])
    assert describe(api, topic)["first_offset"] == 0  # no retention yet: nothing pruned
    api.call("PATCH", "/topics", topic=topic, retention_ms=1)
    wait_until(lambda: describe(api, topic)["first_offset"] == 30, timeout=20,
               message="every message older than 1 ms to be pruned")
    assert describe(api, topic)["retention_ms"] == 1
    api.call("PATCH", "/topics", topic=topic, retention_ms=0)  # no limit again
    assert "retention_ms" not in describe(api, topic)
    assert produce(api, topic, pid, ["new"]) == [30, 30]
    cid = api.call("POST", "/consumer/register", topic=topic)["consumer_id"]
    got = api.call("GET", "/consumer/fetch", topic=topic, consumer_id=cid, offset=0)
    assert [m["message"] for m in got["messages"]] == ["new"]
    assert got["skipped"] == 30


def test_delete_topic_frees_everything_and_the_name_is_reused(broker: BrokerProcess) -> None:
    api, topic = Api(broker.url), "doomed"
    pid = api.call("POST", "/producer/register", topic=topic)["producer_id"]
    cid = api.call("POST", "/consumer/register", topic=topic,
               consumer_name="runner")["consumer_id"]
    produce(api, topic, pid, ["x", "y", "z"])
    api.call("DELETE", "/topics", topic=topic)
    assert topic not in api.call("GET", "/topics")["topics"]
    assert topic not in [t["topic"] for t in api.call("GET", "/stats")["topics"]]
    for method, path, payload in [
            ("POST", "/producer/produce", {"producer_id": pid, "message": "m"}),
            ("GET", "/consumer/consume", {"consumer_id": cid}),
            ("GET", "/size", {"consumer_id": cid}),
            ("DELETE", "/topics", {})]:
        api.fail(method, path, {"topic": topic, **payload}, 400, "unknown_topic")

    api.call("POST", "/topics", topic_name=topic)  # the name is free again
    info = describe(api, topic)
    assert (info["messages"], info["next_offset"], info["producers"], info["consumers"]) == \
        (0, 0, 0, [])
    api.fail("POST", "/producer/produce", {"topic": topic, "producer_id": pid, "message": "m"},
             400, "unknown_id")  # old registrations do not come back
    new_cid = api.call("POST", "/consumer/register", topic=topic,
                   consumer_name="runner")["consumer_id"]
    assert new_cid != cid


def test_unregister_producer_and_consumer(broker: BrokerProcess) -> None:
    api, topic = Api(broker.url), "unreg"
    pid = api.call("POST", "/producer/register", topic=topic)["producer_id"]
    cid = api.call("POST", "/consumer/register", topic=topic)["consumer_id"]
    api.call("POST", "/producer/unregister", topic=topic, producer_id=pid)
    api.call("POST", "/consumer/unregister", topic=topic, consumer_id=cid)
    for path, payload in [("/producer/produce", {"producer_id": pid, "message": "m"}),
                          ("/producer/unregister", {"producer_id": pid}),
                          ("/consumer/unregister", {"consumer_id": cid})]:
        api.fail("POST", path, {"topic": topic, **payload}, 400, "unknown_id")
    api.fail("GET", "/size", {"topic": topic, "consumer_id": cid}, 400, "unknown_id")
    assert describe(api, topic)["producers"] == 0
    assert describe(api, topic)["consumers"] == []


def test_produce_goes_on_while_another_broker_prunes(pg_url: str, start_broker) -> None:
    """Broker B prunes (retention 200 messages) while producers write through broker A."""
    a = Api(start_broker(pg_url, args=["--workers", "1", "--prune-interval", "0"]).url)
    b = Api(start_broker(pg_url, args=["--workers", "1", "--prune-interval", "0.02"]).url)
    topic = "busy-retained"
    a.call("POST", "/topics", topic_name=topic, retention_messages=200)
    acknowledged: dict[int, list[int]] = {}

    def producer(n: int) -> None:
        mine = Api(a.url)  # a session per thread
        pid = mine.call("POST", "/producer/register", topic=topic)["producer_id"]
        acknowledged[n] = []
        for i in range(60):
            first, last = produce(mine, topic, pid, [f"p{n}:{i}:{k}" for k in range(20)])
            assert last - first == 19
            acknowledged[n].append(first)

    b.call("GET", "/healthz")  # b's first request starts its pruner
    threads = [threading.Thread(target=producer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    total = 4 * 60 * 20
    assert sum(len(v) for v in acknowledged.values()) == 240
    starts = sorted(first for firsts in acknowledged.values() for first in firsts)
    assert starts == list(range(0, total, 20)), "every batch got its own gapless range"
    wait_until(lambda: describe(a, topic)["first_offset"] == total - 200, timeout=30,
               message="broker B to prune down to 200 messages")
    cid = a.call("POST", "/consumer/register", topic=topic)["consumer_id"]
    got = a.call("GET", "/consumer/consume", topic=topic, consumer_id=cid, max=1000)
    assert [m["offset"] for m in got["messages"]] == list(range(total - 200, total))
    assert "skipped" not in got, "a new consumer starts at the first retained message"


def test_consumer_ttl_expires_only_idle_unnamed_consumers(db_url: str, start_broker) -> None:
    broker = start_broker(db_url, args=["--consumer-ttl", "1s", "--prune-interval", "0.05"])
    api, topic = Api(broker.url), "ttl"
    api.call("POST", "/topics", topic_name=topic)
    idle = api.call("POST", "/consumer/register", topic=topic)["consumer_id"]
    named = api.call("POST", "/consumer/register", topic=topic,
                 consumer_name="keeper")["consumer_id"]
    busy = api.call("POST", "/consumer/register", topic=topic)["consumer_id"]

    def idle_expired() -> bool:  # describe shows consumers without using them
        assert api.call("GET", "/size", topic=topic, consumer_id=busy)["size"] == 0
        return [c.get("name") for c in describe(api, topic)["consumers"]] == ["keeper", None]

    wait_until(idle_expired, timeout=20, message="the idle unnamed consumer to expire")
    api.fail("GET", "/size", {"topic": topic, "consumer_id": idle}, 400, "unknown_id")
    assert api.call("GET", "/size", topic=topic, consumer_id=busy)["size"] == 0
    assert api.call("GET", "/size", topic=topic, consumer_id=named)["size"] == 0


def test_another_broker_sees_a_deleted_and_recreated_topic(pg_url: str, start_broker) -> None:
    """Broker B has the topic and its registrations cached when broker A deletes it."""
    a = Api(start_broker(pg_url, args=["--workers", "1"]).url)
    b = Api(start_broker(pg_url, args=["--workers", "1"]).url)
    topic = "recreated"
    pid = b.call("POST", "/producer/register", topic=topic)["producer_id"]
    cid = b.call("POST", "/consumer/register", topic=topic)["consumer_id"]
    produce(b, topic, pid, ["old"])
    assert b.call("GET", "/size", topic=topic, consumer_id=cid)["size"] == 1
    a.call("DELETE", "/topics", topic=topic)

    for method, path, payload in [
            ("GET", "/size", {"consumer_id": cid}),
            ("GET", "/consumer/consume", {"consumer_id": cid}),
            ("GET", "/consumer/fetch", {"consumer_id": cid}),
            ("POST", "/consumer/commit", {"consumer_id": cid, "offset": 0}),
            ("POST", "/producer/produce", {"producer_id": pid, "message": "m"}),
            ("GET", "/topics/describe", {})]:
        b.fail(method, path, {"topic": topic, **payload}, 400, "unknown_topic")

    a.call("POST", "/topics", topic_name=topic)
    assert describe(b, topic)["next_offset"] == 0
    new_cid = b.call("POST", "/consumer/register", topic=topic)["consumer_id"]
    new_pid = b.call("POST", "/producer/register", topic=topic)["producer_id"]
    assert produce(b, topic, new_pid, ["new"]) == [0, 0]
    got = b.call("GET", "/consumer/consume", topic=topic, consumer_id=new_cid)
    assert got["message"] == "new"
    for path, payload in [("/size", {"consumer_id": cid}),
                          ("/producer/produce", {"producer_id": pid, "message": "m"})]:
        method = "GET" if path == "/size" else "POST"
        b.fail(method, path, {"topic": topic, **payload}, 400, "unknown_id")
