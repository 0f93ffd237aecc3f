"""Batches the broker refuses (413 ``too_large``, 400 ``bad_request``), against real brokers.

A refused batch is split in halves until only the bad records remain; a record refused as too
large is cut down and sent again; one that cannot be mended is dropped and counted. Every
other record arrives exactly once, in order: from memory, from the spool, and from a spool
left by a process that died between two parts of a split.

The stock broker takes a message of at most 1 MiB of UTF-8, so records of "é" (2 bytes, 1
character) get past the handler's own limits (``max_record_bytes``, and batches of at most
1 Mi characters) and are refused by the broker. No mocks, no sleeps: ``wait_until`` polls.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from support import BrokerProcess, TopicReader, free_port, private_logger, wait_until

from lq_logging import LogQueueHandler
from lq_logging.spool import Spool
from sdk import BadRequest, Client

BROKER_LIMIT = 1024 * 1024  # the broker's default per-message limit (UTF-8 bytes)
MARKER = re.compile(r"\.\.\.\[truncated by lq_logging: \d+ characters dropped\]$")
DROP_REPORT = re.compile(r"LogQueueHandler dropped (\d+) records")


def dropped_reported(texts: list[str]) -> int:
    """The drop counts the handler shipped as its own WARNING records."""
    return sum(int(m.group(1)) for m in map(DROP_REPORT.search, texts) if m)


@pytest.fixture
def log() -> Iterator[logging.Logger]:
    yield from private_logger("test.refusals")


def assert_cut_down(text: str, prefix: str, limit: int) -> None:
    """``text`` is ``prefix`` + "é"... cut with the marker, at most ``limit`` bytes but at
    least a quarter of it (each round halves the record: the last cut is never needless)."""
    assert limit // 4 <= len(text.encode()) <= limit
    assert MARKER.search(text), text[-120:]
    body = MARKER.sub("", text)
    assert body.startswith(prefix) and set(body[len(prefix):]) == {"é"}


# --- from memory: one oversized record per batch ---------------------------------------------

BIG_IN_MEMORY = {37: 600_000, 150: 1_400_000, 263: 600_000}  # index -> characters of "é"


def test_batches_with_an_oversized_record_are_split_and_the_record_cut_down(
        start_broker, tmp_path: Path, log: logging.Logger) -> None:
    port = free_port()
    handler = LogQueueHandler(url=f"http://127.0.0.1:{port}", topic="big", overflow="drop",
                              batch_size=100, flush_interval=0.05, timeout=5,
                              max_record_bytes=3_000_000, fields={"service": "shop"})
    log.addHandler(handler)
    log.info("first")  # sent alone, and held in memory while the broker is down
    wait_until(lambda: handler.stats()["retries"] > 0, message="a failed send")
    for i in range(300):
        if i in BIG_IN_MEMORY:
            log.info("big %d %s", i, "é" * BIG_IN_MEMORY[i])
        else:
            log.info("n %d", i)
    # Batches of 100 wait in memory: 0-99, 100-199, 200-299, one oversized record in each
    # (the 2.8 MB one in a batch of its own: the handler caps a batch at 1 Mi characters).
    broker = start_broker(f"sqlite:///{tmp_path / 'lq.db'}", port=port)
    texts = TopicReader(broker.url, "big").texts_until(301)

    records = [json.loads(t) for t in texts]
    assert len(records) == 301
    assert records[0]["message"] == "first"
    for i, (text, record) in enumerate(zip(texts[1:], records[1:], strict=True)):
        assert record["logger"] == "test.refusals" and record["level"] == "INFO"
        assert record["service"] == "shop" and record["function"] == (
            "test_batches_with_an_oversized_record_are_split_and_the_record_cut_down")
        if i in BIG_IN_MEMORY:
            assert record["truncated"] is True
            assert_cut_down(record["message"], f"big {i} ", BROKER_LIMIT)
            assert len(text.encode()) <= BROKER_LIMIT
        else:
            assert record["message"] == f"n {i}" and "truncated" not in record
    wait_until(lambda: handler.stats()["sent"] == 301, message="stats")
    stats = handler.stats()
    assert stats["dropped"] == 0 and stats["queued"] == 0 and stats["spooled"] == 0


def test_a_lone_surrogate_is_escaped_not_refused(sqlite_broker: BrokerProcess, tmp_path: Path,
                                                 log: logging.Logger) -> None:
    handler = LogQueueHandler(url=sqlite_broker.url, topic="surrogate", flush_interval=0.05,
                              spool_dir=str(tmp_path))
    name = b"caf\xe9.txt".decode("utf-8", "surrogateescape")  # as os.listdir gives it
    for i in range(10):
        # Straight to the handler: pytest also captures the logger's records, and pytest-xdist
        # cannot carry a lone surrogate in a captured-log section back to the controller.
        handler.handle(log.makeRecord(log.name, logging.INFO, __file__, 0, "file %d %s",
                                      (i, name if i % 3 == 0 else "ok.txt"), None))
    handler.flush()
    texts = TopicReader(sqlite_broker.url, "surrogate").texts_until(10)
    assert [json.loads(t)["message"] for t in texts] == [
        f"file {i} {name if i % 3 == 0 else 'ok.txt'}" for i in range(10)]
    stats = handler.stats()
    assert stats["sent"] == 10 and stats["dropped"] == 0 and stats["last_error"] is None
    handler.close()


@pytest.fixture
def sqlite_broker(start_broker, tmp_path: Path) -> BrokerProcess:
    return start_broker(f"sqlite:///{tmp_path / 'lq.db'}")


# --- from the spool: oversized records and records no broker can store -----------------------

BIG_SPOOLED = {75: 600_000, 170: 600_000}
NUL_SPOOLED = {20, 121}  # PostgreSQL cannot store NUL, so the broker refuses it (400)


def test_spooled_batches_refused_by_the_broker_are_split_in_the_spool(
        start_broker, tmp_path: Path, log: logging.Logger) -> None:
    port = free_port()
    spool_dir = tmp_path / "spool"
    handler = LogQueueHandler(url=f"http://127.0.0.1:{port}", topic="spooled",
                              spool_dir=str(spool_dir), batch_size=50, flush_interval=0.05,
                              max_record_bytes=3_000_000)
    handler.setFormatter(logging.Formatter("%(message)s"))  # plain text: NUL stays raw
    log.addHandler(handler)
    for i in range(200):
        if i in BIG_SPOOLED:
            log.info("big %d %s", i, "é" * BIG_SPOOLED[i])
        elif i in NUL_SPOOLED:
            log.info("nul %d \x00", i)
        else:
            log.info("n %d", i)
    wait_until(lambda: handler.stats()["spooled"] == 200, message="200 records spooled")
    assert list(spool_dir.glob("*.spool"))

    broker = start_broker(f"sqlite:///{tmp_path / 'lq.db'}", port=port)
    reader = TopicReader(broker.url, "spooled")
    wait_until(lambda: reader.poll() >= 0 and len(reader.texts) >= 198
               and dropped_reported(reader.texts) == 2,
               timeout=60, interval=0, message="198 records and 2 drops")
    texts = reader.texts_until(len(reader.texts))  # drained: a duplicate would show up

    data = [t for t in texts if not DROP_REPORT.search(t)]
    reports = texts[len(data):]
    assert reports and all(DROP_REPORT.search(t) for t in reports), "reports come last"
    expected = [i for i in range(200) if i not in NUL_SPOOLED]
    assert len(data) == len(expected)
    for i, text in zip(expected, data, strict=True):
        if i in BIG_SPOOLED:
            assert_cut_down(text, f"big {i} ", BROKER_LIMIT)
        else:
            assert text == f"n {i}"
    wait_until(lambda: handler.stats()["sent"] == len(texts), message="stats")
    stats = handler.stats()
    assert stats["dropped"] == 2 and stats["spooled"] == 0 and stats["queued"] == 0
    assert "dropped" in stats["last_error"] and "NUL" in stats["last_error"]
    assert all(p.stat().st_size == 0 for p in spool_dir.glob("*.spool"))


# --- a process died between two parts of a split ---------------------------------------------

def test_a_split_spooled_batch_survives_a_crash_between_its_parts(
        sqlite_broker: BrokerProcess, tmp_path: Path, log: logging.Logger) -> None:
    """The dead process: its head batch was refused, split in the spool, and the first part
    sent and appended, but not yet marked done. A new handler adopts the spool: the first
    part goes again under its recorded seq (the broker appends it once), then the rest."""
    spool_dir, topic = tmp_path / "spool", "crashed"
    first = [f"m {i}" for i in range(8)]
    first[5] = "bad \x00 5"
    spool = Spool.create(str(spool_dir))
    head = spool.append(topic, first)
    spool.append(topic, ["m 8", "m 9"])
    with Client(sqlite_broker.url) as client:
        producer = client.producer()
        pid = producer.register(topic)
        spool.assign(head, pid, producer.next_seq(topic, pid))
        with pytest.raises(BadRequest):
            producer.send_batch(topic, spool.read(head), producer_id=pid, seq=head.seq)
        part, _ = spool.replace(head, [first[:4], first[4:]])
        spool.assign(part, pid, producer.next_seq(topic, pid))
        producer.send_batch(topic, spool.read(part), producer_id=pid, seq=part.seq)
    spool.abandon()  # kill -9: the lock goes, the file stays, "done" was never written

    handler = LogQueueHandler(url=sqlite_broker.url, topic=topic, spool_dir=str(spool_dir),
                              flush_interval=0.05)
    log.addHandler(handler)
    # The adopted 9 records (4 of them a duplicate the broker drops), then the drop report.
    wait_until(lambda: handler.stats()["sent"] == 10, message="the adopted spool delivered")
    log.info("later")
    handler.flush()
    texts = TopicReader(sqlite_broker.url, topic).texts_until(11)
    assert texts[:9] == ["m 0", "m 1", "m 2", "m 3", "m 4", "m 6", "m 7", "m 8", "m 9"]
    report, later = (json.loads(t) for t in texts[9:])
    assert report["logger"] == "lq_logging" and report["extra"] == {"lq_dropped": 1}
    assert "dropped 1 records" in report["message"] and "NUL" in report["message"], report
    assert later["message"] == "later"
    assert len(texts) == 11
    stats = handler.stats()
    assert stats["sent"] == 11 and stats["dropped"] == 1 and stats["spooled"] == 0
    assert "NUL" in stats["last_error"]


# --- a broker with a smaller per-message limit ----------------------------------------------

SMALL_LIMIT = 2048


@pytest.fixture
def small_limit_broker(start_broker, tmp_path: Path) -> BrokerProcess:
    broker = start_broker(f"sqlite:///{tmp_path / 'small.db'}",
                          env={"LQ_MAX_MESSAGE_BYTES": str(SMALL_LIMIT)})
    pid = requests.post(broker.url + "/producer/register", json={"topic": "probe"},
                        timeout=5).json()["producer_id"]
    probe = requests.post(broker.url + "/producer/produce", timeout=5, json={
        "topic": "probe", "producer_id": pid, "message": "x" * (SMALL_LIMIT + 1)}).json()
    assert probe["error"] == "too_large", probe
    return broker


def test_a_broker_with_a_smaller_limit_gets_every_record_oversized_ones_cut_down(
        small_limit_broker: BrokerProcess, tmp_path: Path, log: logging.Logger) -> None:
    big = {i for i in range(200) if i % 23 == 5}
    handler = LogQueueHandler(url=small_limit_broker.url, topic="small", batch_size=100,
                              flush_interval=0.05, spool_dir=str(tmp_path / "spool"),
                              max_record_bytes=100_000)
    log.addHandler(handler)
    for i in range(200):
        if i in big:
            log.info("big %d %s", i, "é" * 10_000)
        else:
            log.info("n %d", i)
    handler.flush()
    texts = TopicReader(small_limit_broker.url, "small").texts_until(200)
    assert len(texts) == 200
    for i, text in enumerate(texts):
        record = json.loads(text)
        if i in big:
            assert record["truncated"] is True
            assert_cut_down(record["message"], f"big {i} ", SMALL_LIMIT)
            assert len(text.encode()) <= SMALL_LIMIT
        else:
            assert record["message"] == f"n {i}"
    stats = handler.stats()
    assert stats["sent"] == 200 and stats["dropped"] == 0 and stats["last_error"] is None
