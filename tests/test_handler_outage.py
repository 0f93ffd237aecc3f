"""Outages and full disks, against real brokers and real file systems.

A 30 s broker outage under steady logging is caught up within seconds, every record once
and in order, from a spool of large batches; a spool on a full file system never stops the
handler: it keeps working from memory (counting what it sheds), sends when the broker
answers, and a new process still delivers a spool it finds on a full disk, even one whose
batches were spooled before any producer id was given.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import TopicReader, clean_env, messages, private_logger, wait_until

from lq_logging import LogQueueHandler


def spooled_batches(spool_dir: Path) -> int:
    """Batches written to the spool files in ``spool_dir`` (their ``b`` lines)."""
    count = 0
    for path in spool_dir.glob("*.spool"):
        count += sum(1 for line in path.read_bytes().splitlines()
                     if line.startswith(b'{"op":"b"'))
    return count


# --- a 30 s outage while an app logs 400 records/s -----------------------------------------

PACED_APP = textwrap.dedent("""
    import logging, sys, time
    from lq_logging import LogQueueHandler
    url, spool, total, rate = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    marks = {int(x): name for x, name in (m.split("=") for m in sys.argv[5:])}
    handler = LogQueueHandler(url=url, topic="paced", spool_dir=spool)
    log = logging.getLogger("paced")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    began = time.monotonic()
    for i in range(total):
        if i in marks:
            print(marks[i], flush=True)
        delay = began + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # the app's own pace: 400 records/s
        log.info("n %d", i)
    print("LAST", flush=True)
    deadline = time.monotonic() + 30
    while handler.stats()["sent"] < total and time.monotonic() < deadline:
        time.sleep(0.05)
    print("STATS", handler.stats(), flush=True)
""")


def test_a_30s_outage_under_400_records_per_s_is_caught_up_once_in_order(
        start_broker, tmp_path: Path) -> None:
    total, rate = 20_000, 400
    broker = start_broker(f"sqlite:///{tmp_path / 'lq.db'}")
    spool = tmp_path / "spool"
    app = subprocess.Popen(
        [sys.executable, "-c", PACED_APP, broker.url, str(spool), str(total), str(rate),
         f"{5 * rate}=DOWN", f"{35 * rate}=UP"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())
    try:
        assert app.stdout.readline().strip() == "DOWN"  # t = 5 s by the app's clock
        broker.stop()
        assert app.stdout.readline().strip() == "UP"  # t = 35 s
        peak = spooled_batches(spool)
        broker.start()
        assert app.stdout.readline().strip() == "LAST"
        reader = TopicReader(broker.url, "paced")
        records = [json.loads(t) for t in reader.texts_until(total, timeout=20)]
        stats = app.stdout.readline()
        assert app.wait(30) == 0, app.stderr.read()
    finally:
        if app.poll() is None:
            app.kill()
            app.wait()
    print(f"spool peak: {peak} batches; the app's last line: {stats.strip()}")
    assert [r["message"] for r in records] == [f"n {i}" for i in range(total)], stats
    # 30 s of records went to disk in batches of up to flush_interval's worth, not one
    # request's worth: about 60 batches, never thousands.
    assert 0 < peak <= 300, peak
    assert "'dropped': 0" in stats and "'last_error': None" in stats, stats


# --- a spool on a full file system -----------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs at ``tmp_path/disk`` (root only, as in CI), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs the suite as root)")
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(disk)],
                           capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> None:
    """Fill ``disk`` to the last byte."""
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (65536, 4096, 512, 64, 8, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"x" * size)
    finally:
        os.close(fd)


def fill_last_blocks(spool_dir: Path) -> None:
    """Pad each spool file in ``spool_dir`` to whole blocks of its file system with a blank
    line (a reader skips it), so no later line fits in the slack of its last block: the
    disk is then full for the spool file too, not only for new files."""
    block = os.statvfs(spool_dir).f_bsize
    for path in spool_dir.glob("*.spool"):
        gap = -path.stat().st_size % block
        if gap:
            with path.open("ab") as out:
                out.write(b" " * (gap - 1) + b"\n")


def spooled_seqs(spool_dir: Path) -> list[int | None]:
    """The seq of each batch in the spool files of ``spool_dir`` (None: not given yet)."""
    return [json.loads(line)["s"] for path in spool_dir.glob("*.spool")
            for line in path.read_bytes().splitlines() if line.startswith(b'{"op":"b"')]


def numbered(records: list[dict], prefix: str) -> list[int]:
    """The numbers of the records whose message is ``prefix`` and a number (and more)."""
    return [int(m.split()[1]) for m in messages(records, prefix)]


@pytest.fixture
def log() -> Iterator[logging.Logger]:
    yield from private_logger("test.outage")


def test_a_full_spool_disk_never_stops_the_handler(start_broker, tmp_path: Path,
                                                   small_disk: Path,
                                                   log: logging.Logger) -> None:
    broker = start_broker(f"sqlite:///{tmp_path / 'lq.db'}")
    handler = LogQueueHandler(url=broker.url, topic="full", spool_dir=str(small_disk / "sp"),
                              batch_size=50, flush_interval=0.05, queue_size=500, timeout=5)
    log.addHandler(handler)
    pad = "p" * 1000
    for i in range(2):  # the second waits for the first: the handler registered meanwhile
        log.info("a %d", i)
        wait_until(lambda n=i + 1: handler.stats()["sent"] == n, message="a record sent")
    broker.kill()
    for i in range(2, 2000):  # ~2 MB of records for 512 KiB of disk
        log.info("a %d %s", i, pad)
    wait_until(lambda: "No space" in (handler.stats()["last_error"] or ""),
               message="the spool fails")
    fill(small_disk)
    stats = handler.stats()
    assert stats["dropped"] > 0 and stats["queued"] <= 500 + 2 * 50, stats
    broker.start()
    # Until the handler sees the broker again, its memory holds what the disk could not
    # take, and is full or nearly: each of these is delivered or counted as dropped.
    for i in range(100):
        log.info("b %d", i)

    def caught_up() -> bool:
        now = handler.stats()
        return now["queued"] == 0 and now["spooled"] == 0

    wait_until(caught_up, timeout=30, message="the backlog delivered")
    for i in range(100):  # room for every one of them now
        log.info("c %d", i)
    reader = TopicReader(broker.url, "full")
    wait_until(lambda: reader.poll() >= 0 and "c 99" in messages(
        [json.loads(t) for t in reader.texts], "c "), timeout=30, message="new records")
    records = [json.loads(t) for t in reader.texts_until(len(reader.texts))]
    wait_until(lambda: handler.stats()["sent"] == len(records), message="all acknowledged")
    stats = handler.stats()
    kept, during = numbered(records, "a "), numbered(records, "b ")
    assert kept[:2] == [0, 1] and kept == sorted(set(kept)), "once, in order"
    assert len(kept) > 100, "what the spool took before the disk filled arrived"
    assert during == sorted(set(during)) and set(during) <= set(range(100)), during
    assert numbered(records, "c ") == list(range(100))
    ours = [r["message"][0] for r in records if r["logger"] == log.name]
    assert ours == sorted(ours), "a, then b, then c"
    # Every record is either in the topic or counted as dropped, and the count was shipped.
    assert stats["dropped"] == 2000 - len(kept) + 100 - len(during), stats
    report = [r for r in records if r["logger"] == "lq_logging"]
    assert sum(r["extra"]["lq_dropped"] for r in report) == stats["dropped"]
    assert "No space" in report[0]["message"] or "Connection" in report[0]["message"], report
    assert stats["last_error"] is None or "spool" in stats["last_error"], stats


FULL_APP = textwrap.dedent("""
    import logging, sys, time
    from lq_logging import LogQueueHandler
    url, spool, first = sys.argv[1], sys.argv[2], int(sys.argv[3])
    handler = LogQueueHandler(url=url, topic="adopted", spool_dir=spool, batch_size=20,
                              flush_interval=0.05)
    log = logging.getLogger("adopted")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    for n in range(first):  # each waits for the one before: the handler registered meanwhile
        log.info("c %d", n)
        while handler.stats()["sent"] < n + 1:
            time.sleep(0.01)
    print("SENT", flush=True)
    sys.stdin.readline()  # the broker is stopped
    i = first
    while not handler.stats()["last_error"] or "spool" not in handler.stats()["last_error"]:
        log.info("c %d %s", i, "p" * 1000)
        i += 1
        time.sleep(0.001)
    print("FULL", i, flush=True)
    time.sleep(60)  # killed here
""")


@pytest.mark.parametrize("registered", [True, False],
                         ids=["seqs-in-the-spool", "seqs-not-given-yet"])
def test_a_new_process_delivers_a_spool_it_finds_on_a_full_disk(
        start_broker, tmp_path: Path, small_disk: Path, log: logging.Logger,
        registered: bool) -> None:
    broker = start_broker(f"sqlite:///{tmp_path / 'lq.db'}")
    if not registered:
        broker.kill()  # the app never reaches it: its batches get their seqs when sent
    spool = small_disk / "sp"
    app = subprocess.Popen([sys.executable, "-c", FULL_APP, broker.url, str(spool),
                            str(2 if registered else 0)],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                           env=clean_env())
    try:
        assert app.stdout.readline().strip() == "SENT"
        broker.kill()
        app.stdin.write("go\n")
        app.stdin.flush()
        assert app.stdout.readline().startswith("FULL")
        app.send_signal(signal.SIGKILL)
        app.wait(10)
    finally:
        if app.poll() is None:
            app.kill()
            app.wait()
    fill_last_blocks(spool)
    fill(small_disk)
    seqs = spooled_seqs(spool)
    assert len(seqs) > 5
    # A batch without a seq in the spool must have one recorded there before it is sent,
    # on this full disk.
    assert (None in seqs) == (not registered), seqs
    broker.start()
    handler = LogQueueHandler(url=broker.url, topic="adopted", spool_dir=str(spool),
                              flush_interval=0.05)
    log.addHandler(handler)
    wait_until(lambda: handler.stats()["spooled"] == 0 and handler.stats()["sent"] > 0,
               timeout=30, message="the adopted spool delivered")
    log.info("d new")
    handler.flush()
    records = TopicReader(broker.url, "adopted").until(2)
    numbers = numbered(records, "c ")
    assert numbers == list(range(len(numbers))) and len(numbers) > 5 * 20
    assert messages(records, "d ") == ["d new"] and records[-1]["message"] == "d new"
