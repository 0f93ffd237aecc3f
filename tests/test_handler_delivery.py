"""LogQueueHandler against real brokers: every record arrives, once, in order, field by field.

No mocks and no sleeps as synchronization: the tests poll with ``wait_until`` and read what
arrived with raw HTTP (register a consumer, consume with ``max=1000`` and ``wait_ms``).
"""

from __future__ import annotations

import inspect
import logging
import logging.config
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
from support import BrokerProcess, TopicReader, clean_env, free_port, messages, wait_until

from lq_logging import LogQueueHandler

README = Path(__file__).resolve().parents[1] / "README.md"
HOST = socket.gethostname()


# --- helpers -----------------------------------------------------------------------------

@pytest.fixture
def sqlite_broker(start_broker, tmp_path: Path) -> BrokerProcess:
    return start_broker(f"sqlite:///{tmp_path / 'lq.db'}")


@pytest.fixture
def detach_root():
    """Restore the root logger (handlers and level) after a test that configures it."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield root
    for handler in root.handlers[:]:
        if handler not in saved[0]:
            root.removeHandler(handler)
            handler.close()
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def readme_snippet() -> str:
    text = README.read_text()
    section = text.split("## Logging from your application", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


# --- the README snippet, 10,000 records from 4 threads --------------------------------------

def assert_worker_record(r: dict, worker: int, i: int, lines: dict[str, int], ident: int,
                         window: tuple[float, float]) -> None:
    """Record ``i`` of worker ``worker`` in the README test, field by field."""
    started, ended = window
    kind = "exc" if i % 100 == 7 else "stack" if i % 100 == 8 else "info"
    level = {"exc": "ERROR", "stack": "WARNING", "info": "INFO"}[kind]
    text = {"exc": f"w{worker} failed {i}", "stack": f"w{worker} stack {i}",
            "info": f"w{worker} record {i}"}[kind]
    assert r["message"] == text
    assert r["level"] == level and r["levelno"] == getattr(logging, level)
    assert r["module"] == "test_handler_delivery" and r["function"] == "work"
    assert r["line"] == lines[kind]
    assert r["pathname"] == __file__
    assert r["process"] == os.getpid() and r["process_name"] == "MainProcess"
    assert r["thread"] == ident and r["thread_name"] == f"worker-{worker}"
    assert r["host"] == HOST
    assert r["service"] == "shop" and r["env"] == "dev"
    assert r["extra"] == {"worker": worker, "i": i, "obj": "<Opaque>",
                          "tags": ["a", i]}
    when = datetime.fromisoformat(r["time"].replace("Z", "+00:00"))
    assert when.tzinfo is not None and re.search(r"\.\d{6}Z$", r["time"])
    assert started - 1 <= when.timestamp() <= ended
    if kind == "exc":
        assert r["exception"].startswith("Traceback (most recent call last):")
        assert f"ZeroDivisionError: boom {worker} {i}" in r["exception"]
    else:
        assert "exception" not in r
    if kind == "stack":
        assert r["stack"].startswith("Stack (most recent call last):")
        assert "in work" in r["stack"]
    else:
        assert "stack" not in r



def test_readme_snippet_ships_10000_records_from_4_threads_in_order(
        broker: BrokerProcess, detach_root, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LQ_SPOOL_DIR", str(tmp_path / "spool"))
    snippet = readme_snippet()
    topic = f"readme-{os.getpid()}-{time.monotonic_ns()}"
    assert '"http://127.0.0.1:5000"' in snippet and '"app-logs"' in snippet
    code = snippet.replace('"http://127.0.0.1:5000"', repr(broker.url))
    code = code.replace('"app-logs"', repr(topic))
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    handler = next(h for h in logging.getLogger().handlers if isinstance(h, LogQueueHandler))

    per_thread = 2500
    lines: dict[str, int] = {}
    idents: dict[int, int] = {}
    started = time.time()

    class Opaque:
        def __repr__(self) -> str:
            return "<Opaque>"

    def work(worker: int) -> None:
        idents[worker] = threading.get_ident()
        log = logging.getLogger(f"app.worker{worker}")
        for i in range(per_thread):
            extra = {"worker": worker, "i": i, "obj": Opaque(), "tags": ["a", i]}
            if i % 100 == 7:
                try:
                    raise ZeroDivisionError(f"boom {worker} {i}")
                except ZeroDivisionError:
                    lines["exc"] = inspect.currentframe().f_lineno + 1
                    log.error("w%d failed %d", worker, i, exc_info=True, extra=extra)
            elif i % 100 == 8:
                lines["stack"] = inspect.currentframe().f_lineno + 1
                log.warning("w%d stack %d", worker, i, stack_info=True, extra=extra)
            else:
                lines["info"] = inspect.currentframe().f_lineno + 1
                log.info("w%d record %d", worker, i, extra=extra)

    threads = [threading.Thread(target=work, args=(w,), name=f"worker-{w}") for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records = TopicReader(broker.url, topic).until(4 * per_thread + 1)
    ended = time.time()

    assert handler.stats()["dropped"] == 0
    assert len(records) == 4 * per_thread + 1
    first = records[0]
    assert first["message"] == "order 42 created" and first["extra"] == {"order_id": 42}
    for worker in range(4):
        mine = [r for r in records if r["logger"] == f"app.worker{worker}"]
        assert [r["extra"]["i"] for r in mine] == list(range(per_thread)), "per-thread order"
        for i, r in enumerate(mine):
            assert_worker_record(r, worker, i, lines, idents[worker], (started, ended))
    wait_until(lambda: handler.stats()["sent"] == 4 * per_thread + 1, message="stats")
    stats = handler.stats()
    assert stats["queued"] == 0 and stats["spooled"] == 0 and stats["last_error"] is None


# --- broker stopped mid-stream ---------------------------------------------------------------

def test_broker_restart_mid_stream_delivers_every_record_exactly_once(
        start_broker, tmp_path: Path) -> None:
    broker = start_broker(f"sqlite:///{tmp_path / 'lq.db'}")
    handler = LogQueueHandler(url=broker.url, topic="restart", spool_dir=str(tmp_path / "sp"),
                              flush_interval=0.05, batch_size=100)
    log = logging.getLogger("test.restart")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    try:
        for i in range(1000):
            log.info("r %d", i)
        wait_until(lambda: handler.stats()["sent"] >= 300, message="first records sent")
        broker.stop()
        for i in range(1000, 3000):
            log.info("r %d", i)
        wait_until(lambda: handler.stats()["spooled"] > 0, message="records spooled")
        assert handler.stats()["retries"] > 0 and handler.stats()["last_error"]
        broker.start()  # the same port
        for i in range(3000, 4000):
            log.info("r %d", i)
        handler.flush()
        records = TopicReader(broker.url, "restart").until(4000)
        assert messages(records, "r ") == [f"r {i}" for i in range(4000)]
        stats = handler.stats()
        assert stats["sent"] == 4000 and stats["dropped"] == 0 and stats["spooled"] == 0
        assert stats["last_error"] is None, "cleared once the broker answers again"
        assert not list((tmp_path / "sp").glob("*.spool")) or all(
            p.stat().st_size == 0 for p in (tmp_path / "sp").glob("*.spool"))
    finally:
        log.removeHandler(handler)
        handler.close()


# --- kill -9 with records spooled ------------------------------------------------------------

APP = textwrap.dedent("""
    import logging, sys, time
    from lq_logging import LogQueueHandler
    url, spool, phase = sys.argv[1], sys.argv[2], sys.argv[3]
    handler = LogQueueHandler(url=url, topic="crash", spool_dir=spool, flush_interval=0.05,
                              batch_size=50)
    log = logging.getLogger("crash")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    def wait(cond):
        deadline = time.monotonic() + 30
        while not cond():
            if time.monotonic() > deadline:
                sys.exit("timeout: %r" % handler.stats())
            time.sleep(0.01)
    if phase == "first":
        for i in range(200):
            log.info("c %d", i)
        wait(lambda: handler.stats()["sent"] == 200)
        print("SENT", flush=True)
        sys.stdin.readline()  # the test stops the broker
        for i in range(200, 500):
            log.info("c %d", i)
        wait(lambda: handler.stats()["spooled"] == 300)
        print("SPOOLED", flush=True)
        time.sleep(60)  # killed here
    else:
        log.info("second process")
        handler.flush()
        wait(lambda: handler.stats()["spooled"] == 0 and handler.stats()["sent"] >= 301)
        print("DONE", handler.stats(), flush=True)
""")


def test_kill_9_with_records_spooled_then_a_new_process_delivers_them_once(
        start_broker, tmp_path: Path) -> None:
    broker = start_broker(f"sqlite:///{tmp_path / 'lq.db'}")
    spool = tmp_path / "spool"
    env = clean_env()
    first = subprocess.Popen([sys.executable, "-c", APP, broker.url, str(spool), "first"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert first.stdout.readline().strip() == "SENT"
        broker.stop()
        first.stdin.write("go\n")
        first.stdin.flush()
        assert first.stdout.readline().strip() == "SPOOLED"
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert list(spool.glob("*.spool")), "the dead process left its spool"
    broker.start()
    second = subprocess.run([sys.executable, "-c", APP, broker.url, str(spool), "second"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert second.returncode == 0, second.stderr
    assert "DONE" in second.stdout
    records = TopicReader(broker.url, "crash").until(501)
    assert messages(records, "c ") == [f"c {i}" for i in range(500)]
    assert messages(records, "second") == ["second process"]
    assert len(records) == 501
    assert all(p.stat().st_size == 0 for p in spool.glob("*.spool"))


# --- a forked child --------------------------------------------------------------------------

def _child_logs(tag: str) -> None:
    log = logging.getLogger("test.fork")
    for i in range(50):
        log.info("%s %d", tag, i)


def test_forked_children_deliver_their_records_and_never_the_parents(
        start_broker, tmp_path: Path) -> None:
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    port = free_port()
    db = f"sqlite:///{tmp_path / 'lq.db'}"
    handler = LogQueueHandler(url=f"http://127.0.0.1:{port}", topic="fork",
                              spool_dir=str(tmp_path / "sp"), flush_interval=0.05, timeout=5)
    log = logging.getLogger("test.fork")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    try:
        for i in range(100):
            log.info("parent %d", i)
        wait_until(lambda: handler.stats()["spooled"] == 100, message="parent spooled")
        # Child A forks while the broker is down and the parent has 100 records pending.
        child = ctx.Process(target=_child_logs, args=("childA",))
        child.start()
        child.join(30)
        assert child.exitcode == 0
        broker = start_broker(db, port=port)
        # Child B forks while the parent may still be delivering its backlog.
        child = ctx.Process(target=_child_logs, args=("childB",))
        child.start()
        child.join(30)
        assert child.exitcode == 0
        records = TopicReader(broker.url, "fork").until(200)
        assert messages(records, "parent") == [f"parent {i}" for i in range(100)]
        assert messages(records, "childA") == [f"childA {i}" for i in range(50)]
        assert messages(records, "childB") == [f"childB {i}" for i in range(50)]
        assert len(records) == 200
        assert {r["process"] for r in records if r["message"].startswith("child")} - {
            os.getpid()}
    finally:
        log.removeHandler(handler)
        handler.close()


# --- overflow=drop under a dead broker -------------------------------------------------------

def test_overflow_drop_never_blocks_counts_drops_and_ships_the_count(
        start_broker, tmp_path: Path) -> None:
    port = free_port()
    handler = LogQueueHandler(url=f"http://127.0.0.1:{port}", topic="drops", overflow="drop",
                              queue_size=1000, batch_size=100, flush_interval=0.05, timeout=2)
    log = logging.getLogger("test.drop")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    try:
        slowest = 0.0
        began = time.perf_counter()
        for i in range(20_000):
            t = time.perf_counter()
            if i % 10 == 0:
                log.warning("w %d", i)
            else:
                log.info("i %d", i)
            slowest = max(slowest, time.perf_counter() - t)
        elapsed = time.perf_counter() - began
        assert slowest < 0.05 and elapsed < 5, (slowest, elapsed)
        stats = handler.stats()
        assert stats["dropped"] >= 20_000 - 1000 - 100 and stats["queued"] <= 1100
        assert stats["retries"] > 0 and stats["last_error"]
        broker = start_broker(f"sqlite:///{tmp_path / 'lq.db'}", port=port)
        dropped = handler.stats()["dropped"]
        reader = TopicReader(broker.url, "drops")
        records = reader.until(20_000 - dropped + 1)
        report = [r for r in records if r["logger"] == "lq_logging"]
        assert len(report) == 1 and report[0]["extra"]["lq_dropped"] == dropped
        assert report[0]["level"] == "WARNING"
        kept = [r for r in records if r["logger"] == "test.drop"]
        warnings = sum(r["level"] == "WARNING" for r in kept)
        infos = len(kept) - warnings
        assert warnings / 2000 > infos / 18000, "lower levels are shed first"
        numbers = [int(r["message"].split()[1]) for r in kept]
        assert numbers == sorted(numbers)
    finally:
        log.removeHandler(handler)
        handler.close()


# --- recursion, deadlock, shutdown -----------------------------------------------------------

def test_root_at_debug_with_requests_logging_never_recurses(
        sqlite_broker: BrokerProcess, detach_root, tmp_path: Path) -> None:
    handler = LogQueueHandler(url=sqlite_broker.url, topic="debug", spool_dir=str(tmp_path),
                              flush_interval=0.05, timeout=3)
    root = detach_root
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    logging.getLogger("urllib3").setLevel(logging.DEBUG)
    for i in range(300):
        logging.getLogger("app").debug("d %d", i)
    requests.get(sqlite_broker.url + "/healthz", timeout=5)  # urllib3 logs on this thread
    # dictConfig while the sender's libraries are logging: no deadlock
    for _ in range(3):
        began = time.monotonic()
        logging.config.dictConfig({"version": 1, "incremental": True,
                                   "root": {"level": "DEBUG"}})
        assert time.monotonic() - began < 3
    handler.flush()
    root.removeHandler(handler)  # the reader's own requests log too: keep them out
    logging.getLogger("urllib3").setLevel(logging.NOTSET)
    reader = TopicReader(sqlite_broker.url, "debug")
    records = reader.until(301)
    assert messages(records, "d ") == [f"d {i}" for i in range(300)]
    ours = [r for r in records if r["logger"].startswith("urllib3")]
    assert ours and {r["thread"] for r in ours} == {threading.get_ident()}
    sender = handler._sender_ident
    assert all(r["thread"] != sender for r in records)
    # Nothing fed back: what the handler sent is exactly what the app thread logged.
    assert handler.stats()["sent"] == len(records)
    handler.close()


SHUTDOWN = textwrap.dedent("""
    import logging, sys, time
    from lq_logging import LogQueueHandler
    url, spool, overflow = sys.argv[1], sys.argv[2], sys.argv[3]
    handler = LogQueueHandler(url=url, topic="down", spool_dir=spool, overflow=overflow,
                              timeout=2, flush_interval=0.05)
    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    for i in range(1000):
        logging.getLogger("app").info("x %d", i)
    began = time.monotonic()
    logging.shutdown()
    print("ELAPSED", time.monotonic() - began, handler.stats(), flush=True)
""")


@pytest.mark.parametrize("overflow", ["spool", "drop"])
def test_logging_shutdown_returns_within_timeout_with_the_broker_down(
        tmp_path: Path, overflow: str) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    began = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", SHUTDOWN, url, str(tmp_path), overflow],
                          capture_output=True, text=True, env=clean_env(), timeout=30)
    total = time.monotonic() - began
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("ELAPSED"))
    elapsed = float(line.split()[1])
    assert elapsed < 2.5, line
    assert total < 10
    if overflow == "spool":
        assert "'spooled': 1000" in line and "'dropped': 0" in line
        assert sum(1 for _ in tmp_path.glob("*.spool")) == 1
    else:
        assert "'dropped': 1000" in line


def test_records_emitted_after_close_are_counted_not_sent(sqlite_broker: BrokerProcess,
                                                         tmp_path: Path) -> None:
    handler = LogQueueHandler(url=sqlite_broker.url, topic="closed", spool_dir=str(tmp_path))
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "late", None, None)
    handler.handle(record)
    handler.close()
    handler.close()  # idempotent
    assert handler.stats()["sent"] == 1
    handler.handle(record)
    assert handler.stats()["dropped"] == 1
    assert TopicReader(sqlite_broker.url, "closed").until(1)[0]["message"] == "late"


def test_utc_time_matches_the_record(sqlite_broker: BrokerProcess, tmp_path: Path) -> None:
    handler = LogQueueHandler(url=sqlite_broker.url, topic="time", spool_dir=str(tmp_path))
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "t", None, None)
    record.created = 1714564800.123456
    handler.handle(record)
    handler.close()
    got = TopicReader(sqlite_broker.url, "time").until(1)[0]
    assert got["time"] == datetime.fromtimestamp(1714564800.123456, UTC).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ")
