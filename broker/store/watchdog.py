"""A deadline on every call into the database, kept by the broker itself.

A database host that stops answering without closing its connections (a frozen process, a
paused VM, a partition that drops packets while the kernel still acknowledges them) leaves
psycopg2 blocked in libpq with no timeout that applies: `statement_timeout` runs on the
server that is not answering, keepalives and `tcp_user_timeout` see a healthy socket. So
each block of database work registers its connection's socket here, and a watcher thread
shuts the socket down once the deadline passes: libpq then fails at once ("server closed
the connection"), SQLAlchemy invalidates the pool, and the caller answers 503. A commit cut
off so has an unknown outcome; the broker never retries it (the client's seq does).
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import Unavailable

TICK_SECONDS = 0.1  # how late past its deadline a call may be cut off


class Watchdog:
    """One per process (`WATCHDOG`): a table of deadlines and the thread that keeps them."""

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)  # a fork keeps no thread, no holder

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._active: dict[int, tuple[float, int]] = {}  # token -> (deadline, socket fd)
        self._tokens = itertools.count()
        self._started = False

    @contextmanager
    def bounded(self, dbapi_connection: Any, timeout: float) -> Iterator[None]:
        """Run the block with the connection cut off `timeout` seconds from now; a block cut
        off raises Unavailable (whatever the driver raised is its cause)."""
        token = next(self._tokens)
        with self._lock:
            if not self._started:
                self._started = True
                threading.Thread(target=self._run, name="lq-db-watchdog", daemon=True).start()
            self._active[token] = (time.monotonic() + timeout, dbapi_connection.fileno())
        cut = False
        try:
            yield
        except Exception as exc:
            with self._lock:
                cut = self._active.pop(token, None) is None
            if cut:
                raise Unavailable(f"the database did not answer within {timeout:g} s; "
                                  "the outcome of any commit in flight is unknown") from exc
            raise
        finally:
            if not cut:
                with self._lock:  # before the connection goes back to the pool
                    self._active.pop(token, None)

    def _run(self) -> None:
        while True:
            time.sleep(TICK_SECONDS)  # a schedule, not synchronization
            now = time.monotonic()
            with self._lock:
                for token, (deadline, fd) in list(self._active.items()):
                    if deadline <= now:
                        del self._active[token]
                        _shut_down(fd)


WATCHDOG = Watchdog()


def _shut_down(fd: int) -> None:
    """Wake whatever blocks on the socket `fd` (it stays open: its owner closes it)."""
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed or never connected: nothing blocks on it
