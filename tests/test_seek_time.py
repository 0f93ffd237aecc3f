"""Seek by time on both databases: `from` on consumer register and on an offset-less fetch
takes an ISO-8601 time or a duration, and starts at the first message appended at or after
it; `lq tail --since` reads from there. The times come from the broker's own replies (each
message's `ts`), so no test depends on this machine's clock agreeing with anything."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Any

import pytest
import requests
from support import BrokerProcess
from test_cli import lq, ok, one_error_line

from sdk import Client, Consumer
from sdk.contract import start_point


def call(broker: BrokerProcess, method: str, path: str, **params: Any) -> requests.Response:
    return requests.request(method, broker.url + path, json=params, timeout=10)


def success(broker: BrokerProcess, method: str, path: str, **params: Any) -> dict[str, Any]:
    reply = call(broker, method, path, **params)
    body = reply.json()
    assert reply.status_code == 200 and body["status"] == "success", body
    return body


@pytest.fixture(scope="module")
def timeline(broker: BrokerProcess) -> dict[str, Any]:
    """A topic with three batches appended one after the other, and each message's `ts`."""
    topic = f"seek-{secrets.token_hex(4)}"
    producer = success(broker, "POST", "/producer/register", topic=topic)["producer_id"]
    for batch in ("a", "b", "c"):
        success(broker, "POST", "/producer/produce", topic=topic, producer_id=producer,
                messages=[f"{batch}{n}" for n in range(3)])
    reader = success(broker, "POST", "/consumer/register", topic=topic)["consumer_id"]
    found = success(broker, "GET", "/consumer/fetch", topic=topic, consumer_id=reader,
                    max=100)["messages"]
    assert [m["message"] for m in found] == ["a0", "a1", "a2", "b0", "b1", "b2", "c0", "c1",
                                             "c2"]
    times = [datetime.fromisoformat(m["ts"]) for m in found]
    assert times == sorted(times)
    assert times[2] < times[3] < times[6]  # separate requests, separate append times
    return {"topic": topic, "producer": producer, "times": times}


def first_read(broker: BrokerProcess, topic: str, start: str) -> list[str]:
    """What a consumer registered with `from=start` consumes."""
    consumer = success(broker, "POST", "/consumer/register", topic=topic,
                       **{"from": start})["consumer_id"]
    found = success(broker, "GET", "/consumer/consume", topic=topic, consumer_id=consumer,
                    max=100)["messages"]
    return [m["message"] for m in found]


def iso(moment: datetime) -> str:
    return moment.isoformat()


def test_register_from_a_time(broker: BrokerProcess, timeline: dict[str, Any]) -> None:
    topic, times = timeline["topic"], timeline["times"]
    assert first_read(broker, topic, iso(times[3])) == ["b0", "b1", "b2", "c0", "c1", "c2"]
    just_after_a = times[2] + timedelta(microseconds=1)
    assert first_read(broker, topic, iso(just_after_a)) == ["b0", "b1", "b2", "c0", "c1", "c2"]
    zulu = times[6].strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert first_read(broker, topic, zulu) == ["c0", "c1", "c2"]
    naive_utc = times[6].replace(tzinfo=None).isoformat()  # no offset given: UTC
    assert first_read(broker, topic, naive_utc) == ["c0", "c1", "c2"]
    shifted = times[3].astimezone(datetime.fromisoformat("2024-01-01T00:00:00+05:30").tzinfo)
    assert first_read(broker, topic, iso(shifted))[0] == "b0"
    assert first_read(broker, topic, iso(times[0] - timedelta(days=1)))[0] == "a0"


def test_a_time_after_the_last_message_starts_at_the_end(broker: BrokerProcess,
                                                         timeline: dict[str, Any]) -> None:
    topic = f"seek-end-{secrets.token_hex(4)}"
    producer = success(broker, "POST", "/producer/register", topic=topic)["producer_id"]
    first = success(broker, "POST", "/producer/produce", topic=topic, producer_id=producer,
                    message="old")["offsets"][0]
    future = iso(timeline["times"][-1] + timedelta(days=1))
    consumer = success(broker, "POST", "/consumer/register", topic=topic,
                       **{"from": future})["consumer_id"]
    assert success(broker, "GET", "/size", topic=topic, consumer_id=consumer)["size"] == 0
    success(broker, "POST", "/producer/produce", topic=topic, producer_id=producer,
            message="new")
    reply = success(broker, "GET", "/consumer/consume", topic=topic, consumer_id=consumer)
    assert (reply["message"], reply["offset"]) == ("new", first + 1)


def test_register_from_a_duration(broker: BrokerProcess, timeline: dict[str, Any]) -> None:
    topic = timeline["topic"]
    everything = ["a0", "a1", "a2", "b0", "b1", "b2", "c0", "c1", "c2"]
    assert first_read(broker, topic, "1h") == everything
    assert first_read(broker, topic, "3650d") == everything
    consumer = success(broker, "POST", "/consumer/register", topic=topic,
                       **{"from": "0s"})["consumer_id"]  # now: after every message so far
    assert success(broker, "GET", "/size", topic=topic, consumer_id=consumer)["size"] == 0


def test_fetch_without_offset_from_a_time(broker: BrokerProcess,
                                          timeline: dict[str, Any]) -> None:
    topic, times = timeline["topic"], timeline["times"]
    consumer = success(broker, "POST", "/consumer/register", topic=topic,
                       **{"from": "latest"})["consumer_id"]

    def fetched(**params: Any) -> tuple[list[str], int]:
        reply = success(broker, "GET", "/consumer/fetch", topic=topic, consumer_id=consumer,
                        **params)
        return [m["message"] for m in reply["messages"]], reply["position"]

    end = 9
    assert fetched() == ([], end)
    assert fetched(**{"from": iso(times[6])}) == (["c0", "c1", "c2"], end)
    assert fetched(**{"from": "2h"})[0][0] == "a0"
    assert fetched(**{"from": "earliest", "max": 2}) == (["a0", "a1"], end)
    assert fetched(**{"from": iso(times[6]), "offset": 4})[0][0] == "b1"  # offset wins
    assert fetched() == ([], end)  # fetch never moved the position


@pytest.mark.parametrize("bad", ["yesterday", "10", "none", "2024-13-45T00:00:00", "-5m", 7])
def test_bad_from_is_a_bad_request(broker: BrokerProcess, timeline: dict[str, Any],
                                   bad: Any) -> None:
    reply = call(broker, "POST", "/consumer/register", topic=timeline["topic"],
                 **{"from": bad})
    assert reply.status_code == 400
    assert reply.json()["error"] == "bad_request"
    assert "from" in reply.json()["message"]


def test_tail_since(broker: BrokerProcess, timeline: dict[str, Any]) -> None:
    topic, times = timeline["topic"], timeline["times"]
    lines = ok("tail", topic, "--since", iso(times[3]), url=broker.url).stdout.splitlines()
    assert lines == ["b0", "b1", "b2", "c0", "c1", "c2"]
    lines = ok("tail", topic, "--since", "1h", url=broker.url).stdout.splitlines()
    assert lines == ["a0", "a1", "a2", "b0", "b1", "b2", "c0", "c1", "c2"]
    later = iso(times[-1] + timedelta(days=1))
    assert ok("tail", topic, "--since", later, url=broker.url).stdout == ""
    one_error_line(lq("tail", topic, "--since", "soon", url=broker.url), 2)


@pytest.mark.parametrize("bad", ["yesterday", "10", "none", "2024-13-45T00:00:00", "-5m", 7])
def test_the_sdk_refuses_what_the_broker_refuses(bad: Any) -> None:
    with pytest.raises(ValueError):
        start_point(bad)
    with pytest.raises(ValueError):
        Consumer("http://127.0.0.1:9", start=bad)  # refused before any request


def test_sdk_consumer_starts_at_a_time(broker: BrokerProcess, timeline: dict[str, Any]) -> None:
    topic, times = timeline["topic"], timeline["times"]
    everything = ["a0", "a1", "a2", "b0", "b1", "b2", "c0", "c1", "c2"]
    with Client(broker.url) as client:
        starts = {times[3]: everything[3:], iso(times[6]): everything[6:],
                  "1h": everything, timedelta(days=1): everything,
                  times[6].replace(tzinfo=None): everything[6:]}  # naive: UTC
        for start, expected in starts.items():
            consumer = Consumer(client, topics=[topic], start=start)
            assert [m.value for m in consumer.receive(topic, max=100)] == expected, start
        assert Consumer(client, start=timedelta(minutes=90)).start == "90m"
