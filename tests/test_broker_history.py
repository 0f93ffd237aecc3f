"""What the web page reads, over HTTP on SQLite and PostgreSQL: a topic's appends per second
over the last minute (GET /topics/history), its messages by offset without a registration
(GET /topics/tail), and /stats (and `lq stats`) leaving out registrations idle past an hour."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from lqhttp import Api, parse_ts, unique_topic
from support import LQ, BrokerProcess, clean_env, execute_sql

US = 1_000_000
HOUR_US = 3600 * US


@pytest.fixture
def api(broker: BrokerProcess) -> Api:
    with Api(broker.url) as client:
        yield client


def _topic_with(api: Api, count: int) -> str:
    topic = unique_topic("hist")
    pid = api.producer(topic)
    for start in range(0, count, 5000):
        api.produce(topic, pid, messages=[f"m{i}" for i in range(start, min(count, start + 5000))])
    return topic


def _set_times(db_url: str, topic: str, first: int, last: int, ts_us: int) -> None:
    changed = execute_sql(
        db_url, "UPDATE lq_messages SET ts_us = :ts WHERE msg_offset BETWEEN :first AND :last "
        "AND topic_id = (SELECT id FROM lq_topics WHERE name = :topic)",
        ts=ts_us, first=first, last=last, topic=topic)
    assert changed == last - first + 1


# --- /topics/history ---------------------------------------------------------------------------
def test_history_counts_each_second_of_the_last_minute(api: Api, broker: BrokerProcess) -> None:
    topic = _topic_with(api, 10)
    now_us = time.time_ns() // 1000
    _set_times(broker.db_url, topic, 0, 3, now_us - 120 * US)  # before the window
    _set_times(broker.db_url, topic, 4, 5, now_us - 30 * US)

    body = api.ok("GET", "/topics/history", {"topic": topic})
    appends = body["appends"]
    start_s = int(parse_ts(body["start"]).timestamp())
    assert len(appends) == 60 and body["exact"] is True and body["next_offset"] == 10
    assert start_s <= now_us // US - 30 < start_s + 60
    assert appends[now_us // US - 30 - start_s] == 2
    assert sum(appends) == 6, appends  # offsets 4..9: the 4 before the window are not counted
    assert sum(api.ok("GET", "/topics/history", {"topic": topic, "seconds": 5})["appends"]) == 4


def test_history_of_a_busy_minute_is_sampled_and_adds_up(api: Api) -> None:
    topic = _topic_with(api, 25_000)  # past the 20,000 counted one by one
    body = api.ok("GET", "/topics/history", {"topic": topic})
    assert body["exact"] is False
    assert sum(body["appends"]) == 25_000 and body["next_offset"] == 25_000


def test_history_of_an_empty_topic_and_bad_requests(api: Api) -> None:
    topic = unique_topic("hist")
    api.create_topic(topic)
    body = api.ok("GET", "/topics/history", {"topic": topic, "seconds": 3})
    assert (body["appends"], body["next_offset"]) == ([0, 0, 0], 0)
    api.fail("GET", "/topics/history", {"topic": unique_topic("none")}, 400, "unknown_topic")
    for seconds in (0, 301, "x"):
        api.fail("GET", "/topics/history", {"topic": topic, "seconds": seconds}, 400,
                 "bad_request")


# --- /topics/tail ------------------------------------------------------------------------------
def _offsets(body: dict) -> list[int]:
    return [m["offset"] for m in body["messages"]]


def test_tail_reads_by_offset_without_registering_or_moving_anyone(api: Api) -> None:
    topic = _topic_with(api, 5)
    cid = api.consumer(topic, consumer_name="reader")
    assert len(api.consume_batch(topic, cid, max=2)) == 2
    before = api.ok("GET", "/stats")

    last = api.ok("GET", "/topics/tail", {"topic": topic})
    assert (last["first_offset"], last["next_offset"]) == (0, 5)
    assert [(m["offset"], m["message"]) for m in last["messages"]] == [
        (i, f"m{i}") for i in range(5)]
    parse_ts(last["messages"][0]["ts"])
    assert _offsets(api.ok("GET", "/topics/tail", {"topic": topic, "max": 2})) == [3, 4]
    assert _offsets(api.ok("GET", "/topics/tail", {"topic": topic, "offset": 1, "max": 2})) == [
        1, 2]
    assert _offsets(api.ok("GET", "/topics/tail", {"topic": topic, "offset": 9})) == []
    assert _offsets(api.ok("GET", "/topics/tail", {"topic": topic, "max_bytes": 1})) == [0]

    assert api.ok("GET", "/stats") == before  # no registration, no position moved
    assert api.fetch(topic, cid)["position"] == 2


def test_tail_bad_requests(api: Api) -> None:
    topic = _topic_with(api, 1)
    api.fail("GET", "/topics/tail", {"topic": unique_topic("none")}, 400, "unknown_topic")
    for bad in ({"max": 0}, {"max": 1001}, {"offset": -1}, {"max_bytes": 0}, {"offset": "x"}):
        api.fail("GET", "/topics/tail", {"topic": topic, **bad}, 400, "bad_request")


def test_tail_and_history_need_the_consume_scope_of_the_topic(
        start_broker: Callable[..., BrokerProcess], tmp_path: Path) -> None:
    proc = start_broker(f"sqlite:///{tmp_path / 'scoped.db'}", token="admin-T0ken")
    mine, other = unique_topic("mine"), unique_topic("other")
    with Api(proc.url, "admin-T0ken") as admin:
        for topic in (mine, other):
            admin.produce(topic, admin.producer(topic), "x")
        scoped = admin.ok("POST", "/tokens", {"consume": [mine]})["token"]
    with Api(proc.url, scoped) as api:
        for path in ("/topics/tail", "/topics/history"):
            api.ok("GET", path, {"topic": mine})
            api.fail("GET", path, {"topic": other}, 403, "forbidden")
        assert [t["topic"] for t in api.ok("GET", "/stats")["topics"]] == [mine]


# --- /stats?active= and lq stats --active -----------------------------------------------------
def _idle_and_busy(api: Api, broker: BrokerProcess) -> str:
    """A topic of 4 with a busy reader at 3 and an idle one (unused for two hours) at 0."""
    topic = _topic_with(api, 4)
    busy = api.consumer(topic, consumer_name="busy")
    api.consumer(topic, consumer_name="idle")
    api.commit(topic, busy, 3)
    assert execute_sql(broker.db_url, "UPDATE lq_consumers SET active_us = :old WHERE name = "
                       "'idle' AND topic_id = (SELECT id FROM lq_topics WHERE name = :topic)",
                       old=time.time_ns() // 1000 - 2 * HOUR_US, topic=topic) == 1
    return topic


def test_stats_can_leave_out_registrations_idle_past_an_hour(api: Api,
                                                             broker: BrokerProcess) -> None:
    topic = _idle_and_busy(api, broker)

    def row(**query: str) -> dict:
        return next(t for t in api.ok("GET", "/stats", query or None)["topics"]
                    if t["topic"] == topic)

    every = row()
    assert (every["consumers"], every["max_lag"]) == (2, 4)
    assert {r["name"] for r in every["registrations"]} == {"busy", "idle"}
    active = row(active="1h")
    assert (active["consumers"], active["max_lag"]) == (1, 1)
    assert [(r["name"], r["lag"]) for r in active["registrations"]] == [("busy", 1)]
    assert row(active="3h")["consumers"] == 2 and row(active="none")["consumers"] == 2
    for bad in ("x", "5", "-1h"):
        api.fail("GET", "/stats", {"active": bad}, 400, "bad_request")


def test_lq_stats_active(api: Api, broker: BrokerProcess) -> None:
    import subprocess

    topic = _idle_and_busy(api, broker)

    def lq(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([LQ, "stats", *args], env=clean_env(LQ_URL=broker.url),
                              capture_output=True, text=True, timeout=60)

    out = lq("--json", "--active", "1h")
    assert out.returncode == 0, out.stderr
    row = next(t for t in json.loads(out.stdout) if t["topic"] == topic)
    assert (row["consumers"], [r["name"] for r in row["registrations"]]) == (1, ["busy"])
    table = lq("-c", "--active", "1h").stdout
    assert any(line.split()[:3] == [topic, "busy", "1"] for line in table.splitlines())
    assert not any(line.split()[:2] == [topic, "idle"] for line in table.splitlines())
    refused = lq("--active", "soon")
    assert refused.returncode == 2 and refused.stderr.startswith("Error: --active:"), refused
