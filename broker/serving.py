"""Production serving: gunicorn with `gthread` workers, the app built in each worker.

No `--preload`: each worker builds its own app after the fork, so no database connection or
LISTEN socket is ever shared between processes. A long-poll holds a thread, not a process,
and the worker timeout sits above the longest `wait_ms` (30 s).

gunicorn answers a request it cannot parse (a bad request line, a NUL or control character in
a header, an invalid header name, headers over its limits, ...) itself, before the app sees
it, with an HTML page. `JsonErrorWorker` answers those with the contract's JSON failure body
instead, keeping the status gunicorn picks.

No client may hold a thread it is not using. gunicorn's `gthread` worker reads a request's
head on a pool thread, so clients trickling header bytes would hold every thread; here the
worker's main loop reads heads instead (`Head`), without blocking, and a connection reaches
a thread only with its whole head in hand, within HEAD_TIMEOUT and HEAD_LINE_LIMIT. Long-polls
hold at most LONG_POLL_SHARE of the threads (wakeups.py), so the rest always serve.
"""

from __future__ import annotations

import gc
import os
import select
import selectors
import signal
import socket
import time
from collections.abc import Callable, Iterator
from functools import partial
from http import HTTPStatus
from typing import Any

from gunicorn import util
from gunicorn.app.base import BaseApplication
from gunicorn.http.errors import LimitRequestHeaders, LimitRequestLine, ParseException
from gunicorn.workers.gthread import TConn, ThreadWorker

from .metrics import worker_exited
from .schemas import Failure

WORKER_TIMEOUT = 60
GRACEFUL_TIMEOUT = 10
LONG_POLL_SHARE = 0.75  # of a worker's threads, at most, held by long-polls (the contract)
HEAD_LINE_LIMIT = 4 * 1024 * 1024  # bytes of request line: a 1 MiB message URL-encoded fits
HEAD_TIMEOUT = 10.0  # seconds for a request's head (request line and headers) to arrive
LINGER = 2.0  # seconds a refused connection is read (and dropped) before it is closed
HEAD_LIMIT = HEAD_LINE_LIMIT + 1024 * 1024  # with the headers (gunicorn then checks its own)
READ_SIZE = 256 * 1024
#: The `error` code per status gunicorn answers itself (as broker/app.py names its own).
ERROR_CODES = {400: "bad_request", 403: "forbidden", 408: "timeout", 414: "too_large",
               417: "expectation_failed", 431: "too_large", 500: "internal",
               501: "not_implemented"}
MAX_REASON = 500  # characters of the client's input echoed back (a request line may be 1 MiB)
HEARTBEAT_DIR = "/dev/shm"  # a memory filesystem, where there is one
#: Seconds a thread that answered a kept-alive request waits for the connection's next one,
#: when threads are plentiful: a client sending one request after another is then served
#: without a trip through the main loop and back (docs/profiles/README.md).
KEEP_THREAD = 0.002


def long_poll_limit(threads: int) -> int:
    """How many long-polls one worker may hold; the other threads always serve."""
    return int(threads * LONG_POLL_SHARE)


class BrokerServer(BaseApplication):
    def __init__(self, app_config: dict[str, Any], options: dict[str, Any]) -> None:
        self.app_config = app_config
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        from .app import create_app

        app = create_app(self.app_config)
        # The app's ~90,000 long-lived objects (SQLAlchemy, pydantic, Flask) leave the
        # collector's generations: else each full collection walks them all, 40-60 ms of a
        # request every ~20 fetches of 1,000 messages (their rows and reply dicts fill the
        # young generations).
        gc.collect()
        gc.freeze()
        return app


class StatusLine:
    """Stands in for the client socket while gunicorn renders its HTML error page: keeps only
    the status line (gunicorn writes it with `util.write_nonblock`: `gettimeout`, `sendall`)."""

    def __init__(self) -> None:
        self.status = 0
        self.reason = ""

    def gettimeout(self) -> float:
        return 0.0

    def sendall(self, data: bytes) -> None:
        _version, status, reason = data.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        self.status, self.reason = int(status), reason


class Conn(TConn):
    """A connection whose request head the worker's main loop gathers before a thread parses
    it: `head` holds the bytes read so far, `line_end` where the request line ends (-1: not
    yet), `deadline` when the head must be complete."""

    def __init__(self, cfg, sock, client, server) -> None:
        super().__init__(cfg, sock, client, server)
        self.head = bytearray()
        self.line_end = -1
        self.deadline = 0.0

    def start_head(self, deadline: float) -> None:
        """A new request begins, with whatever was read past the previous one."""
        if self.parser is not None:
            self.head += self.parser.unreader.take_buffered()
        self.line_end = -1
        self.deadline = deadline

    def head_complete(self, start: int) -> bool:
        """Whether the head is all here, once `head[start:]` was added; linear in the new
        bytes. True also for a bare LF, which gunicorn's parser refuses at once. Raises
        gunicorn's LimitRequestLine / LimitRequestHeaders past the bounds."""
        head = self.head
        if self.line_end < 0:
            self.line_end = head.find(b"\r\n", max(0, start - 1))
            if self.line_end > HEAD_LINE_LIMIT or (
                    self.line_end < 0 and len(head) > HEAD_LINE_LIMIT + 1):
                raise LimitRequestLine(max(self.line_end, len(head)), HEAD_LINE_LIMIT)
        if self.line_end >= 0 and head.find(b"\r\n\r\n", max(self.line_end, start - 3)) >= 0:
            return True
        if head.count(b"\n", start) > head.count(b"\r\n", max(0, start - 1)):
            return True
        if len(head) > HEAD_LIMIT:
            raise LimitRequestHeaders("the request headers are too large")
        return False

    def init(self) -> None:
        super().init()
        if self.head:  # the parser reads the head from memory, in one pass
            self.parser.unreader.unread(bytes(self.head))
            self.head = bytearray()


class JsonErrorWorker(ThreadWorker):
    """The `gthread` worker, but its own error answers are the JSON failure body, not HTML,
    and a connection reaches a thread only with its whole request head (see the module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.heads: dict[Conn, None] = {}  # gathering a head, earliest deadline first
        self.lingering: dict[Conn, None] = {}  # refused: input dropped until the deadline

    def accept(self, listener) -> None:
        if self.cfg.is_ssl:  # TLS: the bytes are only readable after a handshake
            super().accept(listener)
            return
        try:
            sock, client = listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        self.nr_conns += 1
        self.enqueue_req(Conn(self.cfg, sock, client, listener.getsockname()))

    def enqueue_req(self, conn) -> None:
        """Every request comes here (a new connection, a kept-alive one readable again, one
        whose previous request read ahead): the main loop gathers its head first."""
        if not isinstance(conn, Conn):
            super().enqueue_req(conn)
            return
        conn.start_head(time.monotonic() + HEAD_TIMEOUT)
        conn.sock.setblocking(False)
        self.heads[conn] = None
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.read_head, conn))
        self.gathered(conn, 0)

    def on_client_socket_readable(self, conn, client) -> None:
        """A kept-alive connection's next request: read its head now (the socket is readable)
        rather than register it again and wait for the poller's next round."""
        if not isinstance(conn, Conn):
            super().on_client_socket_readable(conn, client)
            return
        self.keepalived_conns.remove(conn)
        conn.start_head(time.monotonic() + HEAD_TIMEOUT)
        self.heads[conn] = None
        self.poller.modify(conn.sock, selectors.EVENT_READ, partial(self.read_head, conn))
        self.read_head(conn)

    def read_head(self, conn: Conn, _sock: object = None) -> None:
        data = _receive(conn.sock)
        if data is None:
            return
        if not data:  # the client left
            self.stop_reading(conn)
            self.close_conn(conn)
            return
        start = len(conn.head)
        conn.head += data
        self.gathered(conn, start)

    def gathered(self, conn: Conn, start: int) -> None:
        """A thread takes the connection once its head is complete; past a bound, it is
        refused at once."""
        try:
            complete = conn.head_complete(start)
        except LimitRequestLine as exc:
            self.refuse(conn, 414, exc)
        except LimitRequestHeaders as exc:
            self.refuse(conn, 431, exc)
        else:
            if complete:
                self.stop_reading(conn)
                conn.data_ready = True
                super().enqueue_req(conn)

    def stop_reading(self, conn: Conn) -> None:
        self.poller.unregister(conn.sock)
        del self.heads[conn]

    def close_conn(self, conn: Conn) -> None:
        self.nr_conns -= 1
        conn.close()

    def refuse(self, conn: Conn, status: int, exc: Exception) -> None:
        """Answer at once, then drop what the client still sends for LINGER seconds before
        closing, so a reset does not destroy the answer before the client reads it."""
        self.stop_reading(conn)
        self.log.debug("Refused a request head: %s", exc)
        conn.head = bytearray()
        try:
            conn.sock.send(json_error(status, HTTPStatus(status).phrase, exc))
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close_conn(conn)
            return
        conn.deadline = time.monotonic() + LINGER
        self.lingering[conn] = None
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.drop_input, conn))

    def drop_input(self, conn: Conn, _sock: object = None) -> None:
        if _receive(conn.sock) == b"":  # the client read the answer and left
            self.poller.unregister(conn.sock)
            del self.lingering[conn]
            self.close_conn(conn)

    def murder_pending(self) -> None:
        """gunicorn's expiry round, plus heads past their deadline (a 408 when some bytes
        came, else a silent close) and refused connections past their linger. Both dicts
        are in deadline order. A stopping worker gives a head LINGER seconds at most."""
        super().murder_pending()
        now = time.monotonic()
        if not self.alive:
            for conn in self.heads:
                conn.deadline = min(conn.deadline, now + LINGER)
        for conn in _expired(self.heads, now):
            if conn.head:
                self.refuse(conn, 408, TimeoutError(
                    f"the request head did not arrive within {HEAD_TIMEOUT:.0f} s"))
            else:
                self.stop_reading(conn)
                self.close_conn(conn)
        for conn in _expired(self.lingering, now):
            self.poller.unregister(conn.sock)
            del self.lingering[conn]
            self.close_conn(conn)

    def handle(self, conn):
        """gthread's `handle`, then the connection's next requests on this same thread for as
        long as each arrives within KEEP_THREAD (see `next_head_soon`)."""
        keep = super().handle(conn)
        while keep is True and self.next_head_soon(conn):
            keep = super().handle(conn)
        return keep

    def next_head_soon(self, conn) -> bool:
        """Whether the connection's next request head came whole within KEEP_THREAD; the bytes
        go to the parser's buffer either way. A part of a head (or one over the bounds) goes
        back to the main loop with them, which gathers or refuses it as any other."""
        if not (self.alive and isinstance(conn, Conn) and not self.cfg.is_ssl
                and self.nr_conns * 2 <= self.cfg.threads
                and not conn.parser.unreader.buf.getbuffer().nbytes):
            return False
        if not _readable(conn.sock, KEEP_THREAD):
            return False
        try:
            data = conn.sock.recv(READ_SIZE, socket.MSG_DONTWAIT)
        except OSError:
            return False
        if not data:  # the client left: the main loop finds out and closes
            return False
        conn.parser.unreader.unread(data)
        conn.head, conn.line_end = bytearray(data), -1
        try:
            return conn.head_complete(0)
        except ParseException:  # over a bound: the main loop refuses it
            return False
        finally:
            conn.head = bytearray()

    def handle_error(self, req, client, addr, exc) -> None:
        """Let gunicorn log the error and pick the status, then answer JSON. Never raises."""
        seen = StatusLine()
        try:
            super().handle_error(req, seen, addr, exc)
        except Exception:
            self.log.exception("Error logging a bad request")
        try:
            util.write_nonblock(client, json_error(seen.status, seen.reason, exc))
        except Exception:  # noqa: BLE001 - as gunicorn: the client may be gone
            self.log.debug("Failed to send error message.")


def _expired(conns: dict[Conn, None], now: float) -> Iterator[Conn]:
    """The connections past their deadline, from the front of `conns` (kept in deadline
    order); the caller removes each before the next."""
    while conns and (conn := next(iter(conns))).deadline <= now:
        yield conn


def _readable(sock: socket.socket, timeout: float) -> bool:
    poll = select.poll()
    poll.register(sock, select.POLLIN)
    return bool(poll.poll(timeout * 1000))


def _receive(sock: socket.socket) -> bytes | None:
    """What a readable non-blocking socket holds: b"" when the peer left (or the socket
    failed), None when nothing is there after all."""
    try:
        return sock.recv(READ_SIZE)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""


def json_error(status: int, reason: str, exc: BaseException) -> bytes:
    """A complete `Connection: close` HTTP response carrying the contract's failure body."""
    if not status:  # gunicorn wrote nothing we could read: its own rule
        status = 400 if isinstance(exc, ParseException) else 500
        reason = HTTPStatus(status).phrase
    if status == 500:
        message = "internal error (a bug): see the broker's log"
    else:
        message = str(exc)[:MAX_REASON]
    body = Failure(error=ERROR_CODES.get(status, "http_error"), message=message)
    payload = body.model_dump_json().encode()
    head = (f"HTTP/1.1 {status} {reason}\r\n"
            "Connection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n")
    return head.encode("latin-1") + payload


def _start_worker(worker) -> None:
    """Long-polls hold at most `long_poll_limit` threads; on SIGTERM they answer at once
    (empty) instead of holding the stop for 30 s."""
    from .store import get_store

    store = get_store(worker.wsgi)
    store.wakeups.max_waiters = long_poll_limit(worker.cfg.threads)
    previous = signal.getsignal(signal.SIGTERM)

    def stop(signum: int, frame: object) -> None:
        store.wakeups.close()
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, stop)


def _worker_exit(_arbiter, worker) -> None:
    """A worker that stops closes its database connections (the arbiter, last, checkpoints).
    gunicorn also calls this hook in the arbiter for a worker already gone: nothing to do."""
    from .store import get_store

    app = getattr(worker, "wsgi", None)
    if app is not None and worker.pid == os.getpid():
        get_store(app).db.engine.dispose()


def serve(app_config: dict[str, Any], *, host: str, port: int, workers: int, threads: int,
          on_ready: Callable[[], None], on_exit: Callable[[], None],
          tls: tuple[str, str] | None = None, tuning: dict[str, Any] | None = None) -> None:
    """Serve until stopped; with `tls` (certfile, keyfile), HTTPS only (gunicorn's own TLS).
    `tuning`: gunicorn settings over these (docs/profiles/servers.py measures some)."""
    options = {
        "bind": f"{host}:{port}",
        "workers": workers,
        "worker_class": JsonErrorWorker,  # gthread, JSON errors
        "threads": threads,
        "timeout": WORKER_TIMEOUT,
        "graceful_timeout": GRACEFUL_TIMEOUT,
        "keepalive": 5,
        # The heartbeat touches a file every loop; on a disk's filesystem that can stall
        # behind the database's fsyncs (gunicorn's docs advise a memory filesystem).
        "worker_tmp_dir": HEARTBEAT_DIR if os.path.isdir(HEARTBEAT_DIR) else None,
        # gunicorn's request-line cap tops out at 8,190 bytes; the worker's own is
        # HEAD_LINE_LIMIT, checked as the head arrives (JsonErrorWorker).
        "limit_request_line": 0,
        "preload_app": False,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "warning",
        "when_ready": lambda _arbiter: on_ready(),
        "child_exit": lambda _arbiter, worker: worker_exited(worker.pid),
        "on_exit": lambda _arbiter: on_exit(),
        "post_worker_init": _start_worker,
        "worker_exit": _worker_exit,
    }
    if tls:
        options.update(certfile=tls[0], keyfile=tls[1])
    options.update(tuning or {})
    BrokerServer(app_config, options).run()
