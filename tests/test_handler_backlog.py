"""The backlog and the seq rules on their own, driven step by step against a real broker.

A "crash" drops the spool's descriptor without a word (like kill -9: the lock goes, the file
stays); a new :class:`Backlog` then adopts the file, as a new process would, and a real
:class:`Sender` delivers it. Whatever the crash point between spool write, send and ack,
every record arrives exactly once, in order.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from support import BrokerProcess, TopicReader, wait_until

from lq_logging.backlog import Backlog, Batch
from lq_logging.mailbox import Counters, Mailbox
from lq_logging.sender import Sender
from lq_logging.seqs import Seqs
from lq_logging.settings import settings
from sdk import Client

CRASH_POINTS = ["after the spool write", "after assign", "after the send", "after the ack"]


@pytest.fixture
def sqlite_broker(start_broker, tmp_path: Path) -> BrokerProcess:
    return start_broker(f"sqlite:///{tmp_path / 'lq.db'}")


def new_seqs(url: str) -> tuple[Seqs, Client]:
    client = Client(url)
    return Seqs(client.producer), client


def sender_for(url: str, topic: str, backlog: Backlog) -> Sender:
    options = settings(url, topic, token=None, batch_size=100, flush_interval=0.05,
                       queue_size=1000, spool_dir=backlog.directory, overflow="spool",
                       timeout=5, fields=None, max_record_bytes=100_000,
                       spool_max_bytes=1 << 20, spool_fsync=True)
    return Sender(options, Mailbox(), Counters(), backlog, logging.Formatter().format)


def crash(backlog: Backlog) -> None:
    backlog.after_fork()  # the descriptors go, the files and their contents stay


def step(backlog: Backlog, seqs: Seqs, stop: str) -> None:
    """What the sender does for the head batch, stopping at ``stop``."""
    head = backlog.head()
    assert head is not None
    messages = backlog.read(head)
    if head.batch.seq is None:
        backlog.assign(head, *seqs.at_send(head.batch.topic))
    if stop == "after assign":
        return
    seqs.send(head.batch.topic, messages, head.batch.producer_id, head.batch.seq)
    if stop == "after the send":
        return
    backlog.ack(head)


def deliver_in_a_new_process(url: str, topic: str, directory: Path) -> Sender:
    backlog = Backlog(str(directory))
    sender = sender_for(url, topic, backlog)
    assert backlog.adopt(), "the dead process's spool is found"
    while sender.send_head():
        pass
    assert backlog.empty() and sender.counters.dropped == 0
    return sender


@pytest.mark.parametrize("with_write_seq", [True, False], ids=["seq-in-b-line", "seq-at-send"])
@pytest.mark.parametrize("stop", CRASH_POINTS)
def test_a_crash_at_any_point_neither_loses_nor_duplicates(
        sqlite_broker: BrokerProcess, tmp_path: Path, stop: str, with_write_seq: bool) -> None:
    topic = f"crash-{CRASH_POINTS.index(stop)}-{int(with_write_seq)}"
    seqs, client = new_seqs(sqlite_broker.url)
    if with_write_seq:
        seqs.warm(topic)
    backlog = Backlog(str(tmp_path / "spool"))
    batches = [Batch(topic, [f"m {i}", f"m {i}b"]) for i in range(3)]
    backlog.add(batches, True, seqs.at_write)
    assert all((b.seq is not None) == with_write_seq for b in backlog.own)
    step(backlog, seqs, "after the ack")  # the first batch delivered normally
    if stop != "after the spool write":
        step(backlog, seqs, stop)  # the second, up to the crash point
    crash(backlog)
    client.close()
    deliver_in_a_new_process(sqlite_broker.url, topic, tmp_path / "spool")
    texts = TopicReader(sqlite_broker.url, topic).texts_until(6)
    assert texts == ["m 0", "m 0b", "m 1", "m 1b", "m 2", "m 2b"]
    assert not list((tmp_path / "spool").glob("*.spool")), "the delivered spool is removed"


def test_seqs_given_at_write_and_at_send_never_shadow_each_other(
        sqlite_broker: BrokerProcess, tmp_path: Path) -> None:
    """A batch that gets its seq at send time goes out after batches that got theirs when
    they were written; on one producer id its larger seq would make the broker drop them
    as duplicates. Two ids keep both streams rising in send order."""
    seqs, client = new_seqs(sqlite_broker.url)
    backlog = Backlog(str(tmp_path / "spool"))
    backlog.add([Batch("shadow", ["early"])], True, seqs.at_write)  # not registered: no seq
    seqs.warm("shadow")
    backlog.add([Batch("shadow", ["later 1"]), Batch("shadow", ["later 2"])], True,
                seqs.at_write)
    first, second, third = backlog.own
    assert first.seq is None and second.seq < third.seq
    for _ in range(3):
        step(backlog, seqs, "after the ack")
    assert first.seq > second.seq and first.producer_id != second.producer_id
    assert TopicReader(sqlite_broker.url, "shadow").texts_until(3) == [
        "early", "later 1", "later 2"]
    client.close()
    backlog.abandon([], keep=True)


def test_a_spool_that_fails_keeps_batches_in_memory_in_order_until_it_works(
        sqlite_broker: BrokerProcess, tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the spool directory should be")
    backlog = Backlog(str(blocked))
    sender = sender_for(sqlite_broker.url, "fails", backlog)
    backlog.add([Batch("fails", ["a"]), Batch("fails", ["b"])], True, sender.seqs.at_write)
    assert backlog.spool_error and "FileExists" in backlog.spool_error
    assert [b.messages for b in backlog.outbox] == [["a"], ["b"]]
    assert backlog.counts() == (2, 0)
    blocked.unlink()
    wait_until(backlog.spool_usable, message="the spool is tried again")
    backlog.add([Batch("fails", ["c"])], True, sender.seqs.at_write)
    assert backlog.spool_error is None and not backlog.outbox
    assert backlog.counts() == (0, 3), "the outbox went to disk first, then the new batch"
    while sender.send_head():
        pass
    assert TopicReader(sqlite_broker.url, "fails").texts_until(3) == ["a", "b", "c"]
    backlog.abandon([], keep=True)


def test_an_abandoned_backlog_ignores_a_late_sender(sqlite_broker: BrokerProcess,
                                                    tmp_path: Path) -> None:
    """close() gave up waiting: the sender, back from a slow request, must not ack into
    (or write to) files the closing thread already released."""
    backlog = Backlog(str(tmp_path / "spool"))
    backlog.add([Batch("late", ["x"])], True, lambda topic: None)
    head = backlog.head()
    assert backlog.abandon([Batch("late", ["y"])], keep=True) == 0
    assert backlog.ack(head) == 0 and backlog.assign(head, 1, 2) is False
    assert backlog.add([Batch("late", ["z"])], True, lambda topic: None) == 0
    adopted = Backlog(str(tmp_path / "spool"))
    [spool] = adopted.adopt()
    assert [spool.read(b) for b in spool] == [["x"], ["y"]]
    adopted.abandon([], keep=True)
