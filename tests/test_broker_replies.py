"""The hot replies (broker/replies.py) are encoded without their pydantic models: each body
must be what its model would dump, field by field, fields left as None omitted, times in the
same format. A reply served by a real broker is checked against its model too."""

from __future__ import annotations

import json
from collections.abc import Iterator

import orjson
import pytest
from lqhttp import Api, unique_topic
from support import BrokerProcess

from broker import replies
from broker import schemas as s
from broker.store import LeaseInfo, iso_time

STAMP = 1_767_268_800_123_456  # 2026-01-01T12:00:00.123456Z
ROWS = [(0, "plain", STAMP), (1, 'quotes " and \\ and\nnewlines', STAMP),
        (2, "ünïcødé ✓ 日本語 🙂", STAMP + 1), (3, "", STAMP + 1_000_000), (2**53 + 1, "{}", 0)]


def model_body(model: s.Reply) -> dict:
    return json.loads(model.model_dump_json(exclude_none=True))


def assert_same(fast: replies.Encoded, model: s.Reply) -> None:
    got, want = orjson.loads(fast.body), model_body(model)
    assert sorted(got) == sorted(want)
    for field in want:
        assert got[field] == want[field], field
    assert json.loads(fast.body.decode("utf-8")) == got  # plain JSON, UTF-8


def items(rows: list) -> list[dict]:
    return [{"offset": o, "message": b, "ts": iso_time(t)} for o, b, t in rows]


@pytest.mark.parametrize("skipped", [0, 7])
@pytest.mark.parametrize("rows", [ROWS, ROWS[:1], []])
def test_batches_are_what_the_models_dump(rows: list, skipped: int) -> None:
    assert_same(replies.batch(rows, skipped),
                s.MessageBatch(messages=items(rows), skipped=skipped or None))
    assert_same(replies.batch(rows, skipped, position=42),
                s.FetchedBatch(messages=items(rows), position=42, skipped=skipped or None))


def test_skipped_zero_is_omitted_and_times_are_iso_utc_microseconds() -> None:
    body = orjson.loads(replies.batch(ROWS, 0, position=0).body)
    assert "skipped" not in body and body["position"] == 0
    assert body["messages"][0]["ts"] == "2026-01-01T12:00:00.123456+00:00"
    assert body["messages"][-1]["ts"] == "1970-01-01T00:00:00.000000+00:00"
    assert [m["message"] for m in body["messages"]] == [r[1] for r in ROWS]


@pytest.mark.parametrize("skipped", [0, 3])
def test_leases_are_what_the_model_dumps(skipped: int) -> None:
    lease = LeaseInfo(id=99, first=0, last=4, expires_us=STAMP, deliveries=2)
    lease_out = s.LeaseOut(id=99, first=0, last=4, expires=iso_time(STAMP), deliveries=2)
    assert_same(replies.leased(lease, ROWS, skipped),
                s.LeasedMessages(lease=lease_out, messages=items(ROWS), skipped=skipped or None))
    acked = replies.leased(lease, ROWS, skipped, acked=7)
    assert_same(acked, s.LeasedMessages(lease=lease_out, messages=items(ROWS),
                                        skipped=skipped or None, acked=7))
    nothing = replies.leased(None, [], skipped)
    assert_same(nothing, s.LeasedMessages(lease=None, messages=[], skipped=skipped or None))
    assert orjson.loads(nothing.body)["lease"] is None  # kept although replies drop None


@pytest.fixture(scope="module")
def api(broker: BrokerProcess) -> Iterator[Api]:
    with Api(broker.url) as client:
        yield client


def test_served_batches_validate_against_their_models(api: Api) -> None:
    topic = unique_topic()
    bodies = [f"m{i} ✓" for i in range(5)]
    api.produce(topic, api.producer(topic), messages=bodies)
    cid = api.consumer(topic)
    fetched = api.fetch(topic, cid, max=10)
    assert model_body(s.FetchedBatch.model_validate(fetched)) == fetched
    assert [m["message"] for m in fetched["messages"]] == bodies
    assert fetched["position"] == 0
    taken = api.ok("GET", "/consumer/consume", {"topic": topic, "consumer_id": cid, "max": 2})
    assert model_body(s.MessageBatch.model_validate(taken)) == taken
    assert [m["offset"] for m in taken["messages"]] == [0, 1]
