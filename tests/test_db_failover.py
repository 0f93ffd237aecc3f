"""Losing the PostgreSQL host: a primary with a synchronous standby, the primary lost, the
standby promoted, under load from two brokers on libpq's multi-host URL.

Two throwaway clusters (tests/pgcluster.py); three SDK producers sending batches and one
fetch/commit consumer, through both brokers. While there is no primary the brokers answer
503 and the SDK retries each batch with its seq; once the standby is promoted they serve
again. Every acknowledged batch is stored once, at the offsets acknowledged, offsets are
gapless and the consumer read the topic in order.

Two ways to lose the primary: kill -9 of its postmaster (its backends exit, so every
connection to it closes at once), and freezing all its processes (SIGSTOP: connections stay
open and nothing answers, as with a stalled disk, a paused VM or a network partition).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pgcluster
import pytest
import requests
from support import BrokerProcess, TopicReader, wait_until

from sdk import Client, Message

PRODUCERS = 3
BATCH = 20
BEFORE = 40  # batches acknowledged per producer before the kill
AFTER = 40  # and after the promotion
RECOVERY_BOUND = 30.0  # seconds from the promotion to produce working again


@pytest.fixture
def pair() -> Iterator[pgcluster.Pair]:
    reason = pgcluster.unavailable()
    if reason:
        if os.environ.get("LQ_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"LQ_REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)
    with pgcluster.Pair(synchronous=True) as made:
        yield made


@dataclass
class Ack:
    producer: int
    batch: int
    first: int
    last: int
    at: float  # time.monotonic() when the answer came


@dataclass
class Traffic:
    """Producers and a consumer on one topic through every broker, recording what came back."""

    urls: list[str]
    topic: str
    acks: list[Ack] = field(default_factory=list)
    consumed: list[Message] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    stop_producing: threading.Event = field(default_factory=threading.Event)
    stop_consuming: threading.Event = field(default_factory=threading.Event)

    def client(self, index: int) -> Client:
        """Client ``index`` starts on broker ``index`` (so every broker has served traffic
        before the fault), with enough retries (same seq each time) to outlast the outage,
        and short pauses so the first success after the promotion is seen within ~0.1 s."""
        first = index % len(self.urls)
        return Client(self.urls[first:] + self.urls[:first], retries=600, backoff=0.02,
                      backoff_max=0.1, read_timeout=15)

    def produce(self, index: int) -> None:
        try:
            with self.client(index) as client:
                producer = client.producer()
                batch = 0
                while not self.stop_producing.is_set():
                    sent = producer.send_many(self.topic, texts(index, batch))
                    assert sent is not None
                    self.acks.append(Ack(index, batch, *sent, time.monotonic()))
                    batch += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(exc)

    def consume(self) -> None:
        try:
            with self.client(PRODUCERS) as client:
                consumer = client.consumer(name="failover")
                while not self.stop_consuming.is_set():
                    messages, _ = consumer.fetch(self.topic, max=1000, wait=0.2)
                    if messages:
                        self.consumed += messages
                        consumer.commit(self.topic, messages[-1].offset + 1)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(exc)

    def acked_after(self, moment: float) -> list[Ack]:
        return [ack for ack in list(self.acks) if ack.at > moment]

    def rate(self, start: float, end: float) -> float:
        """Acknowledged messages per second between two moments."""
        count = sum(ack.last - ack.first + 1 for ack in self.acks if start < ack.at <= end)
        return count / (end - start) if end > start else 0.0


def texts(producer: int, batch: int) -> list[str]:
    return [f"p{producer} b{batch} m{i}" for i in range(BATCH)]


def answers_503(broker: BrokerProcess) -> bool:
    return requests.get(broker.url + "/healthz", timeout=5).status_code == 503


def writes_to(broker: BrokerProcess) -> str:
    """Where /healthz says the broker writes, once it answers 200 (after a failover a
    worker's first call may still meet a pooled connection to the lost primary: 503)."""
    found: list[str] = []

    def answered() -> bool:
        answer = requests.get(broker.url + "/healthz", timeout=10)
        if answer.status_code == 200:
            found.append(answer.json()["database"])
        return bool(found)

    wait_until(answered, timeout=30, message="/healthz answering 200")
    return found[0]


def not_serving(broker: BrokerProcess) -> bool:
    try:
        return requests.get(broker.url + "/healthz", timeout=2).status_code != 200
    except requests.Timeout:
        return True


@pytest.mark.parametrize("fault", ["kill", "freeze"])
def test_primary_lost_standby_promoted(pair: pgcluster.Pair, tmp_path: Path, fault: str) -> None:
    # One worker each when frozen: every worker then holds pooled connections to the old
    # primary (with more, an idle worker's fresh connections could mask the hang).
    workers = "2" if fault == "kill" else "1"
    brokers = [BrokerProcess(pair.url, log_path=tmp_path / f"broker{i}.log",
                             args=["--workers", workers, "--threads", "8"]).start()
               for i in range(2)]
    try:
        run_failover(pair, brokers, fault)
    finally:
        for broker in brokers:
            broker.stop()
    for broker in brokers:
        log = broker.log_path.read_text(errors="replace")
        assert "unhandled error" not in log, broker.tail_log()  # 503s only, never a 500


def run_failover(pair: pgcluster.Pair, brokers: list[BrokerProcess], fault: str) -> None:
    traffic = Traffic([b.url for b in brokers], "failover")
    threads, started = start_traffic(traffic, brokers[0].url)
    for broker in brokers:  # /healthz says which host each broker writes to
        assert writes_to(broker) == f"127.0.0.1:{pair.primary.port}"
    killed = time.monotonic()
    lose_primary(pair, brokers, fault)
    promoted = pair.promote_standby()
    wait_for_traffic_after(promoted, pair, traffic, threads)
    for broker in brokers:
        assert writes_to(broker) == f"127.0.0.1:{pair.standby.port}"
    # The consumer's long-polls made a LISTEN connection; it moved to the new primary.
    wait_until(lambda: any("LISTEN connection re-opened" in b.log_path.read_text()
                           for b in brokers), timeout=30, message="LISTEN re-opened")
    traffic.stop_producing.set()
    for thread in threads[:PRODUCERS]:
        thread.join(60)
    assert not traffic.errors, traffic.errors
    first_after = min(ack.at for ack in traffic.acked_after(promoted))
    assert first_after - promoted < RECOVERY_BOUND

    total = sum(ack.last - ack.first + 1 for ack in traffic.acks)
    wait_until(lambda: len(traffic.consumed) >= total or traffic.errors, timeout=60,
               message=f"the consumer reading {total} messages")
    traffic.stop_consuming.set()
    threads[-1].join(60)
    assert not traffic.errors, traffic.errors
    check_stored(traffic, brokers[1].url, total)

    print(f"\nfailover ({fault}): fault -> first produce after promotion "
          f"{first_after - killed:.2f} s; promotion -> first produce "
          f"{first_after - promoted:.2f} s; fault -> brokers 503 and promotion "
          f"{promoted - killed:.2f} s; "
          f"{total} messages in {len(traffic.acks)} batches; produce "
          f"{traffic.rate(started, killed):.0f} msg/s before, "
          f"{traffic.rate(first_after, time.monotonic()):.0f} msg/s after")


def start_traffic(traffic: Traffic, url: str) -> tuple[list[threading.Thread], float]:
    """The topic, the producer threads and the consumer thread (last), running until
    PRODUCERS * BEFORE batches are acknowledged; also when they started."""
    with Client(url) as admin:
        admin.create_topic(traffic.topic)
    threads = [threading.Thread(target=traffic.produce, args=(i,), daemon=True)
               for i in range(PRODUCERS)]
    threads.append(threading.Thread(target=traffic.consume, daemon=True))
    started = time.monotonic()
    for thread in threads:
        thread.start()
    wait_until(lambda: len(traffic.acks) >= PRODUCERS * BEFORE or traffic.errors, timeout=60,
               message="traffic before the fault")
    return threads, started


def lose_primary(pair: pgcluster.Pair, brokers: list[BrokerProcess], fault: str) -> None:
    """Kill or freeze the primary, and wait until both brokers have noticed."""
    if fault == "kill":
        pair.primary.kill()
        # Promote once both brokers have noticed (as an operator or Patroni would after its
        # own health checks): until then the outage is the brokers' to report.
        wait_until(lambda: all(answers_503(b) for b in brokers), timeout=30,
                   message="both brokers answering 503 without a primary")
    else:
        pair.primary.freeze()
        wait_until(lambda: all(not_serving(b) for b in brokers), timeout=30,
                   message="both brokers noticing the frozen primary")


def wait_for_traffic_after(promoted: float, pair: pgcluster.Pair, traffic: Traffic,
                           threads: list[threading.Thread]) -> None:
    """Produce working within RECOVERY_BOUND of the promotion, then PRODUCERS * AFTER batches
    acknowledged after it."""
    try:
        wait_until(lambda: traffic.acked_after(promoted) or traffic.errors,
                   timeout=RECOVERY_BOUND, message="produce working after the promotion")
        wait_until(lambda: len(traffic.acked_after(promoted)) >= PRODUCERS * AFTER
                   or traffic.errors, timeout=60, message="traffic after the promotion")
    except BaseException:
        # End the traffic before the brokers go, so no client thread outlives the test: the
        # old primary, stopped, closes its connections and hung calls fail over.
        traffic.stop_producing.set()
        traffic.stop_consuming.set()
        pair.primary.stop()
        for thread in threads:
            thread.join(60)
        raise


def check_stored(traffic: Traffic, url: str, total: int) -> None:
    """Every acknowledged batch once, where acknowledged; gapless; read in order."""
    stored = TopicReader(url, traffic.topic).texts_until(total)
    assert len(stored) == total  # nothing more than what was acknowledged
    for ack in traffic.acks:
        assert stored[ack.first:ack.last + 1] == texts(ack.producer, ack.batch), ack
    assert len(set(stored)) == total  # so each batch exactly once
    for index in range(PRODUCERS):  # each producer's batches in the order it sent them
        mine = [ack for ack in traffic.acks if ack.producer == index]
        assert [ack.batch for ack in mine] == list(range(len(mine)))
        assert [ack.first for ack in mine] == sorted(ack.first for ack in mine)
    assert [m.offset for m in traffic.consumed] == list(range(total))
    assert [m.value for m in traffic.consumed] == stored


def test_a_commit_waiting_for_a_missing_standby_answers_503(pair: pgcluster.Pair,
                                                            tmp_path: Path) -> None:
    """The synchronous standby gone and not replaced: every commit on the primary waits for
    it. The broker answers 503 within its database timeout, never a hang and never a
    success, for the batch and for its retries (same seq) while no standby confirms; once
    commits are released, the retry is acknowledged at the batch's one place."""
    broker = BrokerProcess(pair.url, log_path=tmp_path / "broker.log", env={"LQ_DB_TIMEOUT": "2"},
                           args=["--workers", "1", "--threads", "4"]).start()

    def produce(seq: int, text: str) -> requests.Response:
        body = {"topic": "sync", "producer_id": producer, "messages": [text], "seq": seq}
        return requests.post(broker.url + "/producer/produce", json=body, timeout=8)

    try:
        assert requests.post(broker.url + "/topics", json={"topic": "sync"}, timeout=8).ok
        producer = requests.post(broker.url + "/producer/register", json={"topic": "sync"},
                                 timeout=8).json()["producer_id"]
        assert produce(0, "a").json()["offsets"] == [0, 0]
        pair.standby.stop()
        wait_until(lambda: pair.replication_state() is None, timeout=30,
                   message="the standby gone")
        for _ in range(2):  # the batch, then its retry with the same seq
            answer = produce(1, "b")
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"] == "unavailable"
        pair.set_synchronous(pair.primary, "")  # releases the commit that waited
        answers: list[requests.Response] = []
        wait_until(lambda: answers.append(produce(1, "b")) or answers[-1].ok, timeout=30,
                   message="the retry acknowledged")
        assert answers[-1].json()["offsets"] == [1, 1]
        assert TopicReader(broker.url, "sync").texts_until(2) == ["a", "b"]
    finally:
        broker.stop()
    assert "unhandled error" not in broker.log_path.read_text(errors="replace")
