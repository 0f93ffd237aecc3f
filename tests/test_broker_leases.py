"""Consumer groups over raw HTTP: lease, ack, extend, release on SQLite and PostgreSQL, and
through two brokers on one PostgreSQL. Expiry uses short leases and `wait_until`."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from lqhttp import DIALECTS, Api, parse_ts, unique_topic
from sqlalchemy import create_engine
from support import BrokerProcess, wait_until

from broker.store import Store

ALL = {"max": 1000}


@pytest.fixture(scope="module")
def api(broker: BrokerProcess) -> Iterator[Api]:
    with Api(broker.url) as client:
        yield client


def _group(api: Api, count: int, name: str = "group") -> tuple[str, int]:
    """A topic with `count` messages m0.. and a named registration on it."""
    topic = unique_topic()
    api.create_topic(topic)
    if count:
        api.produce(topic, api.producer(topic), messages=[f"m{i}" for i in range(count)])
    return topic, api.consumer(topic, consumer_name=name)


def _lease(api: Api, topic: str, cid: int, **extra: Any) -> dict[str, Any]:
    body = api.ok("POST", "/consumer/lease", {"topic": topic, "consumer_id": cid, **extra},
                  timeout=extra.get("wait_ms", 0) / 1000 + 15)
    assert "lease" in body, body
    if body["lease"] is None:
        assert body["messages"] == [], body
    else:
        lease = body["lease"]
        assert [m["offset"] for m in body["messages"]] == list(
            range(lease["first"], lease["last"] + 1)), body
    return body


def _ref(topic: str, cid: int, lease: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"topic": topic, "consumer_id": cid, "lease": lease["id"], **extra}


def _position(api: Api, topic: str) -> int:
    consumers = api.ok("GET", "/topics/describe", {"topic": topic})["consumers"]
    return consumers[0]["position"]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_lease_ack_moves_the_position_past_acked_ranges_only(api: Api, dialect: str) -> None:
    topic, cid = _group(api, 10)
    fields = {"topic": topic, "consumer_id": cid}
    first = api.ok("POST", "/consumer/lease", {**fields, "max": 4}, dialect=dialect)
    assert first["lease"]["first"] == 0 and first["lease"]["last"] == 3, first
    assert first["lease"]["deliveries"] == 1
    assert [m["message"] for m in first["messages"]] == ["m0", "m1", "m2", "m3"]
    second = _lease(api, topic, cid, max=4)
    assert (second["lease"]["first"], second["lease"]["last"]) == (4, 7)
    assert second["lease"]["id"] != first["lease"]["id"]
    assert api.size(topic, cid) == 10, "the position passed an unacknowledged message"

    # Acked out of order: the position waits for the oldest outstanding lease.
    assert api.ok("POST", "/consumer/ack", _ref(topic, cid, second["lease"]),
                  dialect=dialect)["position"] == 0
    assert api.size(topic, cid) == 10 and _position(api, topic) == 0
    assert api.ok("POST", "/consumer/ack", _ref(topic, cid, first["lease"]),
                  dialect=dialect)["position"] == 8
    assert api.size(topic, cid) == 2 and _position(api, topic) == 8

    third = _lease(api, topic, cid, max=4)
    assert [m["offset"] for m in third["messages"]] == [8, 9]
    assert _lease(api, topic, cid) == {"status": "success", "lease": None, "messages": []}
    assert api.call("POST", "/consumer/ack", **_ref(topic, cid, third["lease"]))["position"] == 10
    api.fail("POST", "/consumer/ack", _ref(topic, cid, third["lease"]), 409, "lease_lost",
             dialect=dialect)
    assert api.size(topic, cid) == 0


def test_a_lease_request_acks_the_previous_lease_in_the_same_request(api: Api) -> None:
    topic, cid = _group(api, 10)
    first = _lease(api, topic, cid, max=4)
    second = _lease(api, topic, cid, max=4, ack=first["lease"]["id"])
    assert second["acked"] == first["lease"]["id"]
    assert [m["offset"] for m in second["messages"]] == [4, 5, 6, 7]
    assert _position(api, topic) == 4, "the first range acked, the second outstanding"

    # Nothing more to hand out: the ack is still made (a long-poll does not hold it back).
    third = _lease(api, topic, cid, max=4, ack=second["lease"]["id"])
    assert [m["offset"] for m in third["messages"]] == [8, 9]
    done = _lease(api, topic, cid, ack=third["lease"]["id"], wait_ms=300)
    assert (done["lease"], done["acked"]) == (None, third["lease"]["id"])
    assert _position(api, topic) == 10 and api.size(topic, cid) == 0
    assert "acked" not in _lease(api, topic, cid), "no ack asked, none said"

    # A lost ack (acked already; another registration's) hands nothing out and moves nothing.
    api.produce(topic, api.producer(topic), messages=["m10", "m11"])
    for lost in (third["lease"]["id"], _lease(api, *_group(api, 1, name="other"))["lease"]["id"]):
        api.fail("POST", "/consumer/lease", {"topic": topic, "consumer_id": cid, "ack": lost},
                 409, "lease_lost")
    assert api.size(topic, cid) == 2
    rest = _lease(api, topic, cid)
    assert [m["offset"] for m in rest["messages"]] == [10, 11], "the cursor did not move"
    api.fail("POST", "/consumer/lease", {"topic": topic, "consumer_id": cid, "ack": 0}, 400,
             "bad_request")


def test_expired_lease_goes_to_the_next_asker_and_a_late_ack_is_lost(api: Api) -> None:
    topic, cid = _group(api, 3)
    short = _lease(api, topic, cid, lease_ms=50)["lease"]
    assert (short["first"], short["last"], short["deliveries"]) == (0, 2, 1)

    again = wait_until(lambda: _lease(api, topic, cid, lease_ms=60_000)["lease"], timeout=15,
                       message="the expired lease handed out again")
    assert (again["first"], again["last"], again["deliveries"]) == (0, 2, 2)
    assert again["id"] != short["id"]
    assert _lease(api, topic, cid)["lease"] is None, "one range held twice"

    for path in ("/consumer/ack", "/consumer/extend", "/consumer/release"):
        api.fail("POST", path, _ref(topic, cid, short), 409, "lease_lost")
    assert api.size(topic, cid) == 3
    assert api.call("POST", "/consumer/ack", **_ref(topic, cid, again))["position"] == 3


def test_an_expired_lease_nobody_took_can_still_be_acked(api: Api) -> None:
    topic, cid = _group(api, 2)
    lease = _lease(api, topic, cid, lease_ms=1)["lease"]
    assert api.call("POST", "/consumer/ack", **_ref(topic, cid, lease))["position"] == 2
    assert _lease(api, topic, cid)["lease"] is None


def test_extend_keeps_the_lease_from_the_next_asker(api: Api) -> None:
    topic, cid = _group(api, 2)
    lease = _lease(api, topic, cid, lease_ms=300)["lease"]
    extended = api.call("POST", "/consumer/extend", **_ref(topic, cid, lease, lease_ms=60_000))
    assert extended["lease"]["id"] == lease["id"]
    assert extended["lease"]["expires"] > lease["expires"]
    assert (extended["lease"]["first"], extended["lease"]["last"]) == (0, 1)
    # A long-poll past the first lease's expiry still finds nothing to hand out.
    assert _lease(api, topic, cid, wait_ms=1500)["lease"] is None
    assert api.call("POST", "/consumer/ack", **_ref(topic, cid, lease))["position"] == 2


def test_release_hands_the_range_out_again_at_once(api: Api) -> None:
    topic, cid = _group(api, 5)
    lease = _lease(api, topic, cid, max=5)["lease"]
    api.call("POST", "/consumer/release", **_ref(topic, cid, lease))
    again = _lease(api, topic, cid, max=1)
    assert (again["lease"]["first"], again["lease"]["last"]) == (0, 4), "a range is kept whole"
    assert again["lease"]["deliveries"] == 2
    assert [m["message"] for m in again["messages"]] == [f"m{i}" for i in range(5)]
    api.fail("POST", "/consumer/release", _ref(topic, cid, lease), 409, "lease_lost")


def test_a_leased_registration_refuses_consume_fetch_and_commit(api: Api) -> None:
    topic, cid = _group(api, 6)
    lease = _lease(api, topic, cid, max=3)["lease"]
    fields = {"topic": topic, "consumer_id": cid}
    for method, path, extra in (("GET", "/consumer/consume", {}),
                                ("GET", "/consumer/consume", {"max": 10}),
                                ("GET", "/consumer/fetch", {}),
                                ("POST", "/consumer/commit", {"offset": 6})):
        api.fail(method, path, {**fields, **extra}, 409, "leased")
    assert api.size(topic, cid) == 6
    api.call("POST", "/consumer/ack", **_ref(topic, cid, lease))
    # No lease outstanding: the registration may be read the classic way, from the cursor.
    assert [m["offset"] for m in api.consume_batch(topic, cid)] == [3, 4, 5]


def test_lease_failures(api: Api) -> None:
    topic, cid = _group(api, 1)
    other_topic, other = _group(api, 1, name="other")
    path = "/consumer/lease"
    api.fail("POST", path, {"topic": unique_topic("missing"), "consumer_id": cid}, 400,
             "unknown_topic")
    api.fail("POST", path, {"topic": topic, "consumer_id": 987654321}, 400, "unknown_id")
    api.fail("POST", path, {"topic": topic, "consumer_id": other}, 400, "not_registered")
    for bad in ({"max": 0}, {"max": 1001}, {"lease_ms": 0}, {"wait_ms": 30001}):
        api.fail("POST", path, {"topic": topic, "consumer_id": cid, **bad}, 400, "bad_request")
    lease = _lease(api, other_topic, other)["lease"]
    # Another registration's lease is not this one's to ack.
    api.fail("POST", "/consumer/ack", {"topic": topic, "consumer_id": cid, "lease": lease["id"]},
             409, "lease_lost")
    api.fail("POST", "/consumer/ack", {"topic": topic, "consumer_id": cid}, 400, "bad_request")
    assert api.call("POST", "/consumer/ack", **_ref(other_topic, other, lease))["position"] == 1


def test_lease_long_poll_is_woken_by_an_append(api: Api, broker: BrokerProcess) -> None:
    topic, cid = _group(api, 0)
    got: list[dict[str, Any]] = []

    def ask() -> None:
        with Api(broker.url) as own:
            got.append(_lease(own, topic, cid, wait_ms=20_000))

    asker = threading.Thread(target=ask)
    asker.start()
    api.produce(topic, api.producer(topic), "late")
    asker.join(30)
    assert [m["message"] for m in got[0]["messages"]] == ["late"]


def test_retention_that_prunes_a_leased_range_says_skipped(broker: BrokerProcess,
                                                           start_broker: Callable[..., Any],
                                                           ) -> None:
    fast = start_broker(broker.db_url, args=["--prune-interval", "0.05"])
    with Api(fast.url) as api:
        topic, cid = _group(api, 10)
        lease = _lease(api, topic, cid, max=5, lease_ms=50)["lease"]
        assert (lease["first"], lease["last"]) == (0, 4)
        api.ok("PATCH", "/topics", {"topic": topic, "retention_messages": 3})
        wait_until(lambda: api.ok("GET", "/topics/describe", {"topic": topic})
                   ["first_offset"] == 7, timeout=20, message="retention pruned to offset 7")
        # The pruned 5 of the 50 ms lease are reported once it has expired, which may be
        # after the lease of 7-9 (that one skips 5 and 6 past the cursor): 7 in all, once.
        offsets: list[int] = []
        skipped: list[int] = []

        def all_reported() -> bool:
            body = _lease(api, topic, cid, max=10)
            offsets.extend(m["offset"] for m in body["messages"])
            skipped.append(body.get("skipped") or 0)
            return sum(skipped) >= 7 and offsets == [7, 8, 9]

        wait_until(all_reported, timeout=15, message="leases after the pruning")
        assert offsets == [7, 8, 9]
        assert sum(skipped) == 7, skipped


def _run_holders(urls: list[str], topic: str, cid: int, holders: int,
                 expected: int) -> list[int]:
    """`holders` threads lease (max 7) and ack until `expected` offsets came; every offset
    each one got, in the order they got them."""
    got: list[int] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def holder(index: int) -> None:
        try:
            with Api(urls[index % len(urls)]) as own:
                while True:
                    with lock:
                        if len(got) >= expected:
                            return
                    body = _lease(own, topic, cid, max=7, wait_ms=200, holder=f"h{index}")
                    if body["lease"] is None:
                        continue
                    with lock:
                        got.extend(m["offset"] for m in body["messages"])
                    own.call("POST", "/consumer/ack", **_ref(topic, cid, body["lease"]))
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=holder, args=(i,)) for i in range(holders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    return got


def test_concurrent_holders_never_share_a_range(api: Api, broker: BrokerProcess) -> None:
    topic, cid = _group(api, 500)
    got = _run_holders([broker.url], topic, cid, holders=6, expected=500)
    assert sorted(got) == list(range(500)), "an offset delivered twice or never"
    assert api.size(topic, cid) == 0


def test_two_brokers_on_one_postgresql_share_a_group(pg_url: str,
                                                     start_broker: Callable[..., Any]) -> None:
    brokers = [start_broker(pg_url), start_broker(pg_url)]
    with Api(brokers[0].url) as api, Api(brokers[1].url) as other:
        topic, cid = _group(api, 700)
        got = _run_holders([b.url for b in brokers], topic, cid, holders=6, expected=700)
        assert sorted(got) == list(range(700)), "an offset delivered twice or never"
        assert other.size(topic, cid) == 0

        # Expiry seen across brokers: taken on one, expired, handed out again by the other.
        api.produce(topic, api.producer(topic), messages=["x", "y"])
        short = _lease(api, topic, cid, lease_ms=50)["lease"]
        again = wait_until(lambda: _lease(other, topic, cid)["lease"], timeout=15,
                           message="the other broker hands the expired lease out again")
        assert (again["first"], again["last"], again["deliveries"]) == (700, 701, 2)
        api.fail("POST", "/consumer/ack", _ref(topic, cid, short), 409, "lease_lost")
        assert api.call("POST", "/consumer/ack", **_ref(topic, cid, again))["position"] == 702

        # A long-poll on one broker is woken by an append through the other.
        got_late: list[dict[str, Any]] = []
        asker = threading.Thread(target=lambda: got_late.append(
            _lease(Api(brokers[1].url), topic, cid, wait_ms=20_000)))
        asker.start()
        api.produce(topic, api.producer(topic), "late")
        asker.join(30)
        assert [m["message"] for m in got_late[0]["messages"]] == ["late"]


def test_a_version_1_database_gains_the_leases_table(tmp_path,
                                                     start_broker: Callable[..., Any]) -> None:
    path = tmp_path / "old.db"
    first = start_broker(f"sqlite:///{path}")
    first.stop()
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE lq_leases")
        conn.execute("UPDATE lq_schema_version SET version = 1")
    upgraded = start_broker(f"sqlite:///{path}")
    with Api(upgraded.url) as api:
        topic, cid = _group(api, 2)
        assert _lease(api, topic, cid)["lease"]["last"] == 1
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM lq_schema_version").fetchall() == [(2,)]


def test_describe_and_stats_show_each_registration(api: Api) -> None:
    topic, cid = _group(api, 6)
    api.consumer(topic)  # an unnamed one beside the group
    first = _lease(api, topic, cid, max=2, holder="host-a:1")["lease"]
    _lease(api, topic, cid, max=2, holder="host-b:2")
    _lease(api, topic, cid, max=2, holder="host-b:2")

    described = {c.get("name"): c for c in
                 api.ok("GET", "/topics/describe", {"topic": topic})["consumers"]}
    group, other = described["group"], described[None]
    assert (group["position"], group["lag"], group["leases"], group["holders"]) == (0, 6, 3, 2)
    assert (other["position"], other["lag"], other["leases"], other["holders"]) == (0, 6, 0, 0)
    assert parse_ts(group["active"]) > datetime.now(UTC) - timedelta(minutes=5)

    api.call("POST", "/consumer/ack", **_ref(topic, cid, first))
    row = next(t for t in api.ok("GET", "/stats")["topics"] if t["topic"] == topic)
    regs = {r.get("name"): r for r in row["registrations"]}
    assert set(regs) == {"group", None}
    assert (regs["group"]["position"], regs["group"]["lag"], regs["group"]["leases"],
            regs["group"]["holders"]) == (2, 4, 2, 2)
    assert row["max_lag"] == 6 and row["consumers"] == 2
    assert str(cid) not in json.dumps(row), "stats leaks an id"


def test_unnamed_registrations_expire_after_a_week_unless_told(tmp_path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'ttl.db'}")
    assert Store(engine).pruner.consumer_ttl_ms == 7 * 24 * 3600 * 1000
    assert Store(engine, consumer_ttl_ms=0).pruner.consumer_ttl_ms == 0
    engine.dispose()
