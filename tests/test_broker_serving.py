"""Serving edges: threads held by long-polls and slow clients, the request-line bound, a
clean stop on SQLite, the metrics folder of a killed broker, a port already in use.

A real `lq broker` in each test. The only time bounds are generous ones (a reply within
seconds where, without the fix, none comes for 30 s or ever); the latencies measured are
printed, not asserted.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from lqhttp import Api, longpoll_waiters, unique_topic
from support import LQ, BrokerProcess, clean_env, free_port, wait_until

WAIT_MS = 30_000  # the longest long-poll the contract allows
ANSWERED_WITHIN = 10.0  # seconds: generous, and far below a held long-poll's 30 s
LONG_POLLS = 64
SLOW_CLIENTS = 40
PRODUCES = 50


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'lq.db'}"


def hold_long_polls(pool: ThreadPoolExecutor, url: str, topic: str, count: int) -> list:
    """`count` consumers of `topic`, each in a 30 s long-poll on a thread of `pool`."""
    with Api(url) as api:
        cids = [api.consumer(topic) for _ in range(count)]

    def poll(cid: int) -> list[dict]:
        with Api(url) as client:
            return client.consume_batch(topic, cid, max=10, wait_ms=WAIT_MS)

    return [pool.submit(poll, cid) for cid in cids]


class Trickler:
    """Connections that send a request head one byte per second, never finishing it."""

    HEAD = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: yes\r\n" * 100

    def __init__(self, port: int, count: int) -> None:
        self.socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
        self.stop = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        for byte in self.HEAD:
            for sock in self.socks:
                sock.send(bytes([byte]))
            self.sent += 1
            if self.stop.wait(1.0):
                return

    def __enter__(self) -> Trickler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)
        for sock in self.socks:
            sock.close()


def test_long_polls_and_slow_clients_leave_threads_for_produce(tmp_path: Path,
                                                               start_broker) -> None:
    """The default broker: 64 long-polls held and 40 connections trickling their headers,
    and a produce from another client still answers (p99 printed)."""
    broker = start_broker(sqlite_url(tmp_path))
    api = Api(broker.url, timeout=ANSWERED_WITHIN)
    idle, busy = unique_topic("idle"), unique_topic("busy")
    idle_pid, pid = api.producer(idle), api.producer(busy)
    with ThreadPoolExecutor(LONG_POLLS) as pool, Trickler(broker.port, SLOW_CLIENTS) as slow:
        polls = hold_long_polls(pool, broker.url, idle, LONG_POLLS)
        wait_until(lambda: longpoll_waiters(broker.url) == LONG_POLLS, timeout=30,
                   message=f"{LONG_POLLS} long-polls waiting")
        wait_until(lambda: slow.sent >= 2, message="slow clients started")
        latencies = []
        for i in range(PRODUCES):
            started = time.perf_counter()
            assert api.produce(busy, pid, f"m{i}")["offsets"] == [i, i]
            latencies.append(time.perf_counter() - started)
        assert longpoll_waiters(broker.url) == LONG_POLLS, "the long-polls were held throughout"
        api.produce(idle, idle_pid, "wake")
        assert [[m["message"] for m in p.result(ANSWERED_WITHIN)] for p in polls] == [
            ["wake"]] * LONG_POLLS
    assert [m["message"] for m in api.read_all(busy, api.consumer(busy))] == [
        f"m{i}" for i in range(PRODUCES)]
    latencies.sort()
    print(f"produce with {LONG_POLLS} long-polls and {SLOW_CLIENTS} slow clients: "
          f"p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, "
          f"p99 {latencies[int(len(latencies) * 0.99) - 1] * 1000:.1f} ms")


def test_a_long_poll_past_the_cap_answers_at_once(tmp_path: Path, start_broker) -> None:
    """4 threads: 3 long-polls may wait; a 4th answers at once, empty, and a produce still
    finds a thread."""
    broker = start_broker(sqlite_url(tmp_path), args=["--threads", "4"])
    api = Api(broker.url, timeout=ANSWERED_WITHIN)
    topic = unique_topic()
    pid = api.producer(topic)
    with ThreadPoolExecutor(3) as pool:
        polls = hold_long_polls(pool, broker.url, topic, 3)
        wait_until(lambda: longpoll_waiters(broker.url) == 3, message="3 long-polls waiting")
        started = time.perf_counter()
        assert api.consume_batch(topic, api.consumer(topic), wait_ms=WAIT_MS) == []
        print(f"a long-poll past the cap answered in {time.perf_counter() - started:.3f} s")
        assert api.produce(topic, pid, "m")["offsets"] == [0, 0]
        assert [[m["message"] for m in p.result(ANSWERED_WITHIN)] for p in polls] == [
            ["m"]] * 3


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    base = tmp_path_factory.mktemp("serving")
    with BrokerProcess(sqlite_url(base), log_path=base / "broker.log") as proc:
        yield proc


def exchange(port: int, request: bytes, timeout: float = ANSWERED_WITHIN) -> bytes:
    """Send `request`, then read the reply until the broker closes the connection."""
    reply = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):  # refused before all was sent: the reply is there
            sock.sendall(request)
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


def json_reply(reply: bytes) -> tuple[int, dict]:
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), reply[:500]
    return int(head.split()[1]), json.loads(body)


def test_a_request_line_over_4_mib_is_refused_with_json(broker: BrokerProcess) -> None:
    line = b"GET /topics?x=" + b"a" * (5 * 1024 * 1024) + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    started = time.perf_counter()
    status, body = json_reply(exchange(broker.port, line))
    print(f"a 5 MiB request line refused in {time.perf_counter() - started:.3f} s")
    assert (status, body["status"], body["error"]) == (414, "failure", "too_large"), body
    under = b"GET /healthz?x=" + b"a" * (3 * 1024 * 1024) + b" HTTP/1.1\r\nHost: x\r\n" \
        b"Connection: close\r\n\r\n"
    assert json_reply(exchange(broker.port, under)) == (200, {"status": "success"})
    Api(broker.url).ok("GET", "/healthz")


def test_a_head_that_never_ends_is_answered_408(broker: BrokerProcess) -> None:
    """The head has 10 s (HEAD_TIMEOUT); without a bound the connection is held for ever."""
    status, body = json_reply(exchange(broker.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n",
                                       timeout=30))
    assert (status, body["error"]) == (408, "timeout"), body


def test_a_killed_brokers_metrics_folder_is_removed_by_the_next(tmp_path: Path,
                                                                 start_broker) -> None:
    temp = Path(tempfile.gettempdir())
    killed = start_broker(sqlite_url(tmp_path))
    left = list(temp.glob(f"lq-metrics-{killed.proc.pid}-*"))
    assert len(left) == 1, "the folder is named for the broker's pid"
    killed.kill()
    assert left[0].is_dir()
    alive = temp / f"lq-metrics-{os.getpid()}-test"  # a running process's: kept
    alive.mkdir()
    try:
        started = start_broker(sqlite_url(tmp_path))
        assert not left[0].exists()
        assert alive.is_dir()
        assert len(list(temp.glob(f"lq-metrics-{started.proc.pid}-*"))) == 1
    finally:
        shutil.rmtree(alive, ignore_errors=True)


@pytest.mark.parametrize(("args", "signum"), [([], signal.SIGTERM), ([], signal.SIGINT),
                                              (["--dev"], signal.SIGTERM)],
                         ids=["sigterm", "sigint", "dev-sigterm"])
def test_a_clean_stop_leaves_every_message_in_the_sqlite_file(
        tmp_path: Path, args: list[str], signum: int) -> None:
    broker = BrokerProcess(sqlite_url(tmp_path), args=args, log_path=tmp_path / "log").start()
    api = Api(broker.url)
    topics = [unique_topic() for _ in range(3)]
    expected = []
    for topic in topics:
        pid = api.producer(topic)
        for batch in range(10):
            texts = [f"{topic}-{batch}-{k}" for k in range(20)]
            api.produce(topic, pid, messages=texts)
            expected += [(topic, text) for text in texts]
    os.killpg(broker.proc.pid, signum)
    assert broker.proc.wait(30) == 0, broker.tail_log()
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(tmp_path / "lq.db", copy / "lq.db")  # without its -wal file
    with sqlite3.connect(copy / "lq.db") as conn:
        rows = conn.execute("SELECT t.name, m.body FROM lq_messages m JOIN lq_topics t "
                            "ON t.id = m.topic_id ORDER BY t.name, m.msg_offset").fetchall()
    expected.sort(key=lambda row: row[0])  # by topic name, each topic in offset order
    assert rows == expected, f"{len(rows)} of {len(expected)} messages in the file"


def test_a_port_in_use_is_one_line_and_exit_1(tmp_path: Path) -> None:
    port = free_port()
    with socket.create_server(("127.0.0.1", port)):
        done = subprocess.run([LQ, "broker", "--port", str(port), "--db", sqlite_url(tmp_path)],
                              env=clean_env(), capture_output=True, text=True, timeout=30)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert done.returncode == 1, lines
    assert len(lines) == 1 and str(port) in lines[0] and "in use" in lines[0], lines


class KeptAlive:
    """One kept-alive connection, read reply by reply (Content-Length framed)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buffer = b""

    def reply(self) -> tuple[int, dict]:
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._recv()
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        while len(rest) < length:
            rest += self._recv()
        self.buffer = rest[length:]
        return json_reply(head + b"\r\n\r\n" + rest[:length])

    def _recv(self) -> bytes:
        chunk = self.sock.recv(65536)
        assert chunk, f"the broker closed the connection; unread: {self.buffer[:300]!r}"
        return chunk


HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


def test_kept_alive_requests_in_every_split_are_answered_in_order(broker: BrokerProcess
                                                                    ) -> None:
    """A thread that answered a request reads the connection's next head itself when it comes
    at once (serving.KEEP_THREAD); a head in pieces, or two requests in one write, must still
    be answered, in order, whichever of the thread and the main loop reads them."""
    topic = unique_topic()
    producer = Api(broker.url).call("POST", "/producer/register", topic=topic)["producer_id"]
    conn = KeptAlive(broker.port)
    for n in range(30):
        body = json.dumps({"topic": topic, "producer_id": producer, "message": f"m{n}"}).encode()
        request = (b"POST /producer/produce HTTP/1.1\r\nHost: x\r\n"
                   b"Content-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n" % len(body)) + body
        if n % 3 == 0:  # whole
            conn.sock.sendall(request)
        elif n % 3 == 1:  # a few bytes at a time, a slow client
            for start in range(0, len(request), 7):
                conn.sock.sendall(request[start:start + 7])
                time.sleep(0.001)  # a trickle, not a synchronization
        else:  # behind a health check in the same write
            conn.sock.sendall(HEALTHZ + request)
            assert conn.reply() == (200, {"status": "success"})
        status, reply = conn.reply()
        assert (status, reply["status"], reply["offsets"]) == (200, "success", [n, n]), reply
    conn.sock.close()
    fetched = Api(broker.url).call("GET", "/topics/tail", topic=topic, max=100)
    assert [m["message"] for m in fetched["messages"]] == [f"m{n}" for n in range(30)]


def test_a_kept_alive_connections_bad_next_head_is_refused_with_json(broker: BrokerProcess
                                                                     ) -> None:
    conn = KeptAlive(broker.port)
    conn.sock.sendall(HEALTHZ)
    assert conn.reply() == (200, {"status": "success"})
    conn.sock.sendall(b"GET /healthz?x=" + b"a" * (5 * 1024 * 1024) + b" HTTP/1.1\r\n\r\n")
    status, body = conn.reply()
    assert (status, body["error"]) == (414, "too_large"), body
    conn.sock.close()
    conn = KeptAlive(broker.port)
    conn.sock.sendall(HEALTHZ)
    assert conn.reply() == (200, {"status": "success"})
    conn.sock.sendall(b"GET /healthz HTTP/1.1\r\nHost")  # and never the rest
    status, body = conn.reply()
    assert (status, body["error"]) == (408, "timeout"), body
