"""The classic HTTP contract and its extensions, endpoint by endpoint, in every accepted dialect.

Each request goes over raw HTTP (query string, form body, JSON body with int or string ids,
JSON body under another or no Content-Type), with every topic and message alias, and with
an ignored extra field. Runs on SQLite and PostgreSQL (the ``broker`` fixture).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import requests
from lqhttp import (
    DIALECTS,
    JSON_DIALECTS,
    MESSAGE_KEYS,
    TOPIC_KEYS,
    Api,
    is_id,
    parse_ts,
    unique_topic,
)
from support import BrokerProcess

EXTRA = {"extra_field": "ignored"}


@pytest.fixture(scope="module")
def api(broker: BrokerProcess) -> Iterator[Api]:
    with Api(broker.url) as client:
        yield client


@pytest.fixture
def topic(api: Api) -> str:
    name = unique_topic()
    api.create_topic(name)
    return name


# --- topics -------------------------------------------------------------------------------

@pytest.mark.parametrize("topic_key", TOPIC_KEYS)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_create_topic(api: Api, dialect: str, topic_key: str) -> None:
    name = unique_topic()
    body = api.ok("POST", "/topics", {topic_key: name, **EXTRA}, dialect=dialect)
    assert body == {"status": "success", "message": f"Topic '{name}' created successfully"}
    assert name in api.topics()

    body = api.fail("POST", "/topics", {topic_key: name}, 400, "topic_exists", dialect=dialect)
    assert api.topics().count(name) == 1


@pytest.mark.parametrize("dialect", DIALECTS)
def test_list_topics(api: Api, dialect: str) -> None:
    names = [unique_topic() for _ in range(3)]
    for name in names:
        api.create_topic(name)
    body = api.ok("GET", "/topics", dict(EXTRA), dialect=dialect)
    assert set(body) >= {"status", "topics"}
    topics = body["topics"]
    assert isinstance(topics, list) and all(isinstance(t, str) for t in topics)
    assert set(names) <= set(topics)
    assert len(topics) == len(set(topics)), "a topic listed twice"


def test_list_topics_empty_is_success(start_broker, tmp_path) -> None:
    proc = start_broker(f"sqlite:///{tmp_path / 'empty.db'}")
    with Api(proc.url) as fresh:
        assert fresh.ok("GET", "/topics") == {"status": "success", "topics": []}


# --- producer register --------------------------------------------------------------------

@pytest.mark.parametrize("topic_key", TOPIC_KEYS)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_producer_register_creates_topic(api: Api, dialect: str, topic_key: str) -> None:
    name = unique_topic()
    body = api.ok("POST", "/producer/register", {topic_key: name, **EXTRA}, dialect=dialect)
    assert body["status"] == "success" and is_id(body["producer_id"]), body
    assert name in api.topics()

    again = api.ok("POST", "/producer/register", {topic_key: name}, dialect=dialect)
    assert is_id(again["producer_id"])
    assert again["producer_id"] != body["producer_id"], "one id per registration"
    # Registering did not "create" the topic twice.
    api.fail("POST", "/topics", {"topic_name": name}, 400, "topic_exists")


# --- consumer register --------------------------------------------------------------------

@pytest.mark.parametrize("topic_key", TOPIC_KEYS)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_consumer_register(api: Api, topic: str, dialect: str, topic_key: str) -> None:
    body = api.ok("POST", "/consumer/register", {topic_key: topic, **EXTRA}, dialect=dialect)
    assert body["status"] == "success" and is_id(body["consumer_id"]), body
    other = api.ok("POST", "/consumer/register", {topic_key: topic}, dialect=dialect)
    assert other["consumer_id"] != body["consumer_id"], "unnamed registrations share an id"

    missing = unique_topic("missing")
    api.fail("POST", "/consumer/register", {topic_key: missing}, 400, "unknown_topic",
             dialect=dialect)
    assert missing not in api.topics(), "consumer register created the topic"


@pytest.mark.parametrize("topic_key", TOPIC_KEYS)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_consumer_register_named(api: Api, dialect: str, topic_key: str) -> None:
    t1, t2 = unique_topic(), unique_topic()
    api.create_topic(t1)
    api.create_topic(t2)

    def register(topic: str, name: str) -> int:
        fields = {topic_key: topic, "consumer_name": name}
        return api.ok("POST", "/consumer/register", fields, dialect=dialect)["consumer_id"]

    first = register(t1, "runner-a")
    assert is_id(first)
    assert register(t1, "runner-a") == first
    assert register(t1, "runner-b") != first
    assert register(t2, "runner-a") != first

    # The named registration keeps its position across registrations.
    pid = api.producer(t1)
    api.produce(t1, pid, "m0")
    api.produce(t1, pid, "m1")
    assert api.consume(t1, first).body["message"] == "m0"
    assert register(t1, "runner-a") == first
    assert api.consume(t1, first).body["offset"] == 1


@pytest.mark.parametrize("dialect", DIALECTS)
def test_consumer_register_from(api: Api, topic: str, dialect: str) -> None:
    pid = api.producer(topic)
    for i in range(3):
        api.produce(topic, pid, f"m{i}")

    def register(**extra: str) -> int:
        fields = {"topic": topic, **extra}
        return api.ok("POST", "/consumer/register", fields, dialect=dialect)["consumer_id"]

    latest = register(**{"from": "latest"})
    earliest = register(**{"from": "earliest"})
    default = register()
    assert api.size(topic, latest) == 0
    api.fail("GET", "/consumer/consume", {"topic": topic, "consumer_id": latest}, 400,
             "queue_empty")
    assert api.size(topic, earliest) == 3
    assert api.size(topic, default) == 3
    assert api.consume(topic, earliest).body["offset"] == 0
    assert api.consume(topic, default).body["offset"] == 0

    api.produce(topic, pid, "m3")
    reply = api.consume(topic, latest)
    assert (reply.code, reply.body["message"], reply.body["offset"]) == (200, "m3", 3)


# --- produce ------------------------------------------------------------------------------

@pytest.mark.parametrize("message_key", MESSAGE_KEYS)
@pytest.mark.parametrize("topic_key", TOPIC_KEYS)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_produce(api: Api, topic: str, dialect: str, topic_key: str, message_key: str) -> None:
    pid = api.producer(topic)
    texts = ["first message", "2nd: ünïcødé \t tab & = ? %20 +", ""]
    for i, text in enumerate(texts):
        fields = {topic_key: topic, "producer_id": pid, message_key: text, **EXTRA}
        body = api.ok("POST", "/producer/produce", fields, dialect=dialect)
        assert body["offsets"] == [i, i], body
    cid = api.consumer(topic)
    got = [api.consume(topic, cid).body for _ in texts]
    assert [(b["offset"], b["message"], b["log_message"]) for b in got] == [
        (i, t, t) for i, t in enumerate(texts)]


@pytest.mark.parametrize("dialect", JSON_DIALECTS)
def test_produce_batch(api: Api, topic: str, dialect: str) -> None:
    pid = api.producer(topic)
    api.produce(topic, pid, "single")
    batch = [f"batch-{i}" for i in range(5)]
    fields = {"topic": topic, "producer_id": pid, "messages": batch, **EXTRA}
    body = api.ok("POST", "/producer/produce", fields, dialect=dialect)
    assert body["offsets"] == [1, 5]
    cid = api.consumer(topic)
    assert [m["message"] for m in api.consume_batch(topic, cid)] == ["single", *batch]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_produce_failures(api: Api, topic: str, dialect: str) -> None:
    pid = api.producer(topic)
    other = api.producer(unique_topic())
    cid = api.consumer(topic)

    def produce(topic_name: str, producer_id: int) -> dict:
        return {"topic": topic_name, "producer_id": producer_id, "message": "x"}

    api.fail("POST", "/producer/produce", produce(unique_topic("missing"), pid), 400,
             "unknown_topic", dialect=dialect)
    api.fail("POST", "/producer/produce", produce(topic, 987654321), 400, "unknown_id",
             dialect=dialect)
    api.fail("POST", "/producer/produce", produce(topic, other), 400, "not_registered",
             dialect=dialect)
    # A consumer id is not a producer id.
    api.fail("POST", "/producer/produce", produce(topic, cid), 400,
             ("unknown_id", "not_registered"), dialect=dialect)
    assert api.size(topic, cid) == 0, "a failed produce appended"


# --- consume ------------------------------------------------------------------------------

@pytest.mark.parametrize("topic_key", TOPIC_KEYS)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_consume_classic(api: Api, topic: str, dialect: str, topic_key: str) -> None:
    pid = api.producer(topic)
    api.produce(topic, pid, "a")
    api.produce(topic, pid, "b")
    cid = api.consumer(topic)
    fields = {topic_key: topic, "consumer_id": cid, **EXTRA}
    for offset, text in enumerate("ab"):
        body = api.ok("GET", "/consumer/consume", fields, dialect=dialect)
        assert body == {"status": "success", "message": text, "log_message": text,
                        "offset": offset}
    api.fail("GET", "/consumer/consume", fields, 400, "queue_empty", dialect=dialect)
    api.produce(topic, pid, "c")
    assert api.ok("GET", "/consumer/consume", fields, dialect=dialect)["offset"] == 2


@pytest.mark.parametrize("dialect", DIALECTS)
def test_consume_failures(api: Api, topic: str, dialect: str) -> None:
    pid = api.producer(topic)
    api.produce(topic, pid, "kept")
    cid = api.consumer(topic)
    other_topic = unique_topic()
    api.create_topic(other_topic)
    other = api.consumer(other_topic)
    for path in ("/consumer/consume", "/size", "/consumer/fetch"):
        api.fail("GET", path, {"topic": unique_topic("missing"), "consumer_id": cid}, 400,
                 "unknown_topic", dialect=dialect)
        api.fail("GET", path, {"topic": topic, "consumer_id": 987654321}, 400, "unknown_id",
                 dialect=dialect)
        api.fail("GET", path, {"topic": topic, "consumer_id": other}, 400, "not_registered",
                 dialect=dialect)
        # A producer id is not a consumer id.
        api.fail("GET", path, {"topic": topic, "consumer_id": pid}, 400,
                 ("unknown_id", "not_registered"), dialect=dialect)
    assert api.consume(topic, cid).body["message"] == "kept", "a failed consume moved"


@pytest.mark.parametrize("dialect", DIALECTS)
def test_consume_batch(api: Api, topic: str, dialect: str) -> None:
    pid = api.producer(topic)
    api.produce(topic, pid, messages=[f"m{i}" for i in range(5)])
    cid = api.consumer(topic)
    before = datetime.now(UTC)
    fields = {"topic": topic, "consumer_id": cid}

    body = api.ok("GET", "/consumer/consume", {**fields, "max": 2}, dialect=dialect)
    assert [(m["offset"], m["message"]) for m in body["messages"]] == [(0, "m0"), (1, "m1")]
    for m in body["messages"]:
        assert set(m) >= {"offset", "message", "ts"}, m
        assert abs(parse_ts(m["ts"]) - before) < timedelta(minutes=5), m

    body = api.ok("GET", "/consumer/consume", {**fields, "wait_ms": 0}, dialect=dialect)
    assert [m["offset"] for m in body["messages"]] == [2, 3, 4], "default max is 100"
    body = api.ok("GET", "/consumer/consume", {**fields, "max": 10, "wait_ms": 0},
                  dialect=dialect)
    assert body["messages"] == []
    assert api.size(topic, cid) == 0

    # The largest accepted max and wait_ms; with messages there, no wait.
    api.produce(topic, pid, "m5")
    body = api.ok("GET", "/consumer/consume", {**fields, "max": 1000, "wait_ms": 30_000},
                  dialect=dialect, timeout=45)
    assert [(m["offset"], m["message"]) for m in body["messages"]] == [(5, "m5")]
    body = api.ok("GET", "/consumer/consume", {**fields, "max": 1, "wait_ms": 0},
                  dialect=dialect)
    assert body["messages"] == []


# --- fetch and commit ---------------------------------------------------------------------

@pytest.mark.parametrize("dialect", DIALECTS)
def test_fetch_and_commit(api: Api, topic: str, dialect: str) -> None:
    pid = api.producer(topic)
    api.produce(topic, pid, messages=["m0", "m1", "m2"])
    cid = api.consumer(topic)
    fields = {"topic": topic, "consumer_id": cid}

    def fetch(**extra: int) -> tuple[list[tuple[int, str]], int]:
        body = api.ok("GET", "/consumer/fetch", {**fields, **extra}, dialect=dialect)
        for m in body["messages"]:
            parse_ts(m["ts"])
        return [(m["offset"], m["message"]) for m in body["messages"]], body["position"]

    everything = [(0, "m0"), (1, "m1"), (2, "m2")]
    assert fetch() == (everything, 0)
    assert fetch() == (everything, 0), "fetch moved the position"
    assert fetch(offset=1) == (everything[1:], 0)
    assert fetch(max=1) == (everything[:1], 0)
    assert api.size(topic, cid) == 3

    def commit(offset: int) -> dict:
        return api.ok("POST", "/consumer/commit", {**fields, "offset": offset}, dialect=dialect)

    assert commit(2)["position"] == 2
    assert fetch() == (everything[2:], 2)
    assert api.size(topic, cid) == 1
    assert api.consume(topic, cid).body["offset"] == 2

    assert commit(3)["position"] == 3, "committing the end is allowed"
    api.fail("POST", "/consumer/commit", {**fields, "offset": 4}, 400, "bad_request",
             dialect=dialect)
    # Only forward: a commit behind the position never moves it back.
    back = api.request("POST", "/consumer/commit", {**fields, "offset": 1}, dialect=dialect)
    assert back.code in (200, 400), back
    if back.code == 200:
        assert back.body["position"] == 3, back
    else:
        assert back.body["error"] == "bad_request", back
    assert fetch() == ([], 3)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_commit_failures(api: Api, topic: str, dialect: str) -> None:
    cid = api.consumer(topic)
    other_topic = unique_topic()
    api.create_topic(other_topic)
    other = api.consumer(other_topic)
    path = "/consumer/commit"
    api.fail("POST", path, {"topic": unique_topic("missing"), "consumer_id": cid, "offset": 0},
             400, "unknown_topic", dialect=dialect)
    api.fail("POST", path, {"topic": topic, "consumer_id": 987654321, "offset": 0}, 400,
             "unknown_id", dialect=dialect)
    api.fail("POST", path, {"topic": topic, "consumer_id": other, "offset": 0}, 400,
             "not_registered", dialect=dialect)


# --- size ---------------------------------------------------------------------------------

@pytest.mark.parametrize("topic_key", TOPIC_KEYS)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_size(api: Api, topic: str, dialect: str, topic_key: str) -> None:
    cid = api.consumer(topic)
    fields = {topic_key: topic, "consumer_id": cid, **EXTRA}
    assert api.ok("GET", "/size", fields, dialect=dialect) == {"status": "success", "size": 0}
    pid = api.producer(topic)
    api.produce(topic, pid, messages=["a", "b", "c"])
    assert api.ok("GET", "/size", fields, dialect=dialect)["size"] == 3
    api.consume(topic, cid)
    assert api.ok("GET", "/size", fields, dialect=dialect)["size"] == 2


# --- stats, health, openapi ---------------------------------------------------------------

def test_stats(api: Api, topic: str) -> None:
    pid = api.producer(topic)
    api.produce(topic, pid, messages=[f"m{i}" for i in range(5)])
    ahead, behind = api.consumer(topic), api.consumer(topic)
    api.consume_batch(topic, ahead, max=2)
    empty = unique_topic()
    api.create_topic(empty)

    body = api.ok("GET", "/stats")
    rows = {row["topic"]: row for row in body["topics"]}
    assert {k: rows[topic][k] for k in
            ("messages", "first_offset", "next_offset", "consumers", "max_lag")} == {
        "messages": 5, "first_offset": 0, "next_offset": 5, "consumers": 2, "max_lag": 5}
    assert rows[empty]["messages"] == 0 and rows[empty]["next_offset"] == 0
    assert rows[empty]["consumers"] == 0 and rows[empty]["max_lag"] == 0
    text = json.dumps(body)
    for secret in (pid, ahead, behind):
        assert str(secret) not in text, "stats leaks an id"


@pytest.mark.parametrize("slash", [False, True])
@pytest.mark.parametrize("path", ["/healthz", "/status"])
def test_health(api: Api, path: str, slash: bool) -> None:
    assert api.ok("GET", path, slash=slash)["status"] == "success"


def test_openapi_lists_every_endpoint(broker: BrokerProcess) -> None:
    resp = requests.get(broker.url + "/openapi.json", timeout=10)
    assert resp.status_code == 200, resp.text[:300]
    doc = resp.json()
    assert "openapi" in doc
    paths = {p.rstrip("/") for p in doc["paths"]}
    assert paths >= {"/topics", "/producer/register", "/consumer/register", "/producer/produce",
                     "/consumer/consume", "/size", "/consumer/fetch", "/consumer/commit",
                     "/stats", "/healthz", "/status"}, sorted(paths)


# --- trailing slash: the whole flow -------------------------------------------------------

@pytest.mark.parametrize("dialect", DIALECTS)
def test_trailing_slash_everywhere(api: Api, dialect: str) -> None:
    name = unique_topic()

    def ok(method: str, path: str, fields: dict | None = None) -> dict:
        return api.ok(method, path, fields, dialect=dialect, slash=True)

    ok("POST", "/topics", {"topic_name": name})
    assert name in ok("GET", "/topics")["topics"]
    pid = ok("POST", "/producer/register", {"topic": name})["producer_id"]
    cid = ok("POST", "/consumer/register", {"topic": name})["consumer_id"]
    assert ok("POST", "/producer/produce",
              {"topic": name, "producer_id": pid, "message": "m0"})["offsets"] == [0, 0]
    assert ok("POST", "/producer/produce",
              {"topic": name, "producer_id": pid, "message": "m1"})["offsets"] == [1, 1]
    ids = {"topic": name, "consumer_id": cid}
    assert ok("GET", "/size", ids)["size"] == 2
    assert ok("GET", "/consumer/consume", ids)["message"] == "m0"
    assert [m["message"] for m in ok("GET", "/consumer/fetch", ids)["messages"]] == ["m1"]
    assert ok("POST", "/consumer/commit", {**ids, "offset": 2})["position"] == 2
    assert any(row["topic"] == name for row in ok("GET", "/stats")["topics"])
    api.fail("POST", "/topics", {"topic_name": name}, 400, "topic_exists", dialect=dialect,
             slash=True)


def test_ids_are_random_unguessable_and_json_safe(api: Api, topic: str) -> None:
    ids = [api.producer(topic) for _ in range(10)] + [api.consumer(topic) for _ in range(10)]
    assert all(is_id(i) for i in ids), ids
    assert len(set(ids)) == len(ids), "an id was given twice"
    # Random over [1, 2**53): twenty ids all below 2**32, or evenly spaced, is not random.
    assert max(ids) > 2**32, ids
    steps = {b - a for a, b in zip(ids, ids[1:], strict=False)}
    assert len(steps) > 1, f"ids are sequential: {ids}"
