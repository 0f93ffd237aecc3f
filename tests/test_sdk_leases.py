"""A named consumer's stream over leases: processes (here threads with consumers of their
own) sharing one name share the work, the background extend keeps a slow batch, an early
close releases, a lost lease raises LeaseLost; unnamed streams stay on fetch/commit."""

from __future__ import annotations

import json
import subprocess
import threading
import uuid

import pytest
from support import LQ, BrokerProcess, clean_env, wait_until

from sdk import Client, Consumer, Message
from sdk.exceptions import ERRORS_BY_CODE, Leased, LeaseLost


@pytest.fixture
def topic(client: Client) -> str:
    name = f"g-{uuid.uuid4().hex[:12]}"
    client.create_topic(name)
    return name


def _fill(client: Client, topic: str, count: int) -> None:
    with client.producer() as producer:
        producer.send_many(topic, [f"m{i}" for i in range(count)])


def test_lease_errors_have_their_classes() -> None:
    assert ERRORS_BY_CODE["lease_lost"] is LeaseLost and ERRORS_BY_CODE["leased"] is Leased
    assert LeaseLost.status == Leased.status == 409


def test_streams_sharing_a_name_share_the_work(client: Client, topic: str) -> None:
    _fill(client, topic, 1200)
    got: dict[int, list[Message]] = {}
    start = threading.Barrier(3)

    def work(index: int) -> None:
        with Consumer(client, name="shared") as consumer:
            start.wait(10)
            got[index] = list(consumer.stream(topic, batch=20, wait=0.2, until_empty=True))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    offsets = sorted(m.offset for batch in got.values() for m in batch)
    assert offsets == list(range(1200)), "a message delivered twice or never"
    for batch in got.values():  # order holds within each holder's batches
        for lease_start in range(0, len(batch), 20):
            chunk = [m.offset for m in batch[lease_start:lease_start + 20]]
            assert chunk == sorted(chunk)
    assert [m.value for m in sorted(sum(got.values(), []), key=lambda m: m.offset)][:3] == [
        "m0", "m1", "m2"]
    with Consumer(client, name="shared") as consumer:
        assert consumer.size(topic) == 0


def test_a_slow_batch_keeps_its_lease(client: Client, topic: str) -> None:
    _fill(client, topic, 3)
    seen: list[int] = []
    with Consumer(client, name="slow") as consumer, Consumer(client, name="slow") as other:
        for msg in consumer.stream(topic, batch=3, wait=0, until_empty=True, lease_ms=300):
            seen.append(msg.offset)
            if msg.offset == 0:
                # Work for well past the lease time: another holder still gets nothing.
                assert other.lease(topic, wait=1.5) is None, "the lease was not extended"
        assert seen == [0, 1, 2]
        assert consumer.size(topic) == 0, "the batch was not acked"


def test_closing_a_stream_mid_batch_releases_the_lease(client: Client, topic: str) -> None:
    _fill(client, topic, 5)
    with Consumer(client, name="early") as consumer:
        for msg in consumer.stream(topic, batch=5, wait=0):
            if msg.offset == 1:
                break
        again = consumer.lease(topic)
        assert again is not None and (again.first, again.last, again.deliveries) == (0, 4, 2)
        assert [m.value for m in again.messages] == [f"m{i}" for i in range(5)]
        assert consumer.ack(again) == 5


def test_a_lease_that_expired_and_moved_is_lost(client: Client, topic: str) -> None:
    _fill(client, topic, 2)
    with Consumer(client, name="lost") as consumer, Consumer(client, name="lost") as other:
        mine = consumer.lease(topic, lease_ms=50)
        assert mine is not None and mine.deliveries == 1
        theirs = wait_until(lambda: other.lease(topic), timeout=15,
                            message="the expired lease handed to the other holder")
        assert (theirs.first, theirs.last, theirs.deliveries) == (0, 1, 2)
        with pytest.raises(LeaseLost):
            consumer.ack(mine)
        with pytest.raises(LeaseLost):
            consumer.extend(mine)
        extended = other.extend(theirs, 60_000)
        assert extended.expires is not None
        # A registration with a lease outstanding is not read the classic way.
        with pytest.raises(Leased):
            consumer.fetch(topic)
        assert other.ack(theirs) == 2


def test_a_lease_can_carry_the_ack_of_the_previous_one(client: Client, topic: str) -> None:
    _fill(client, topic, 6)
    with Consumer(client, name="carry") as consumer, Consumer(client, name="carry") as other:
        first = consumer.lease(topic, max=3)
        assert first is not None
        second = consumer.lease(topic, max=3, ack=first)
        assert second is not None and (second.first, second.last) == (3, 5)
        assert consumer.size(topic) == 3, "the first lease acked with the second's hand-out"
        assert consumer.lease(topic, ack=second) is None
        assert consumer.size(topic) == 0
        _fill(client, topic, 1)
        with pytest.raises(LeaseLost):  # acked already: nothing is handed out either
            consumer.lease(topic, ack=second)
        last = other.lease(topic)
        assert last is not None and (last.first, last.last) == (6, 6)
        other.ack(last)


def test_an_unnamed_stream_still_fetches_and_commits(client: Client, topic: str) -> None:
    _fill(client, topic, 4)
    with Consumer(client) as consumer:
        assert [m.offset for m in consumer.stream(topic, wait=0, until_empty=True)] == [0, 1, 2, 3]
        assert consumer.fetch(topic) == ([], 4)


def test_lq_stats_shows_each_registration(client: Client, topic: str,
                                          broker: BrokerProcess) -> None:
    _fill(client, topic, 8)
    with Consumer(client, name="stats-group") as consumer:
        held = consumer.lease(topic, max=3)
        assert held is not None
        table = subprocess.run([LQ, "stats", "--consumers", "--url", broker.url],
                               capture_output=True,
                               text=True, timeout=60, env=clean_env())
        assert table.returncode == 0, table.stderr
        rows = [line.split() for line in table.stdout.splitlines()]
        assert ["TOPIC", "CONSUMER", "LAG", "LEASES", "HOLDERS", "LAST_ACTIVE"] in rows
        mine = [row for row in rows if row[:2] == [topic, "stats-group"]]
        assert len(mine) == 1 and mine[0][2:5] == ["8", "1", "1"], table.stdout
        as_json = subprocess.run([LQ, "stats", "--url", broker.url, "--json"],
                                 capture_output=True, text=True, timeout=60, env=clean_env())
        row = next(t for t in json.loads(as_json.stdout) if t["topic"] == topic)
        assert [(r["name"], r["lag"], r["leases"]) for r in row["registrations"]] == [
            ("stats-group", 8, 1)]
        consumer.ack(held)
