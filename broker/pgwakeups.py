"""Long-poll wake-ups across processes on PostgreSQL: NOTIFY after appends, LISTEN for all.

`Wakeups` (wakeups.py) wakes the waiters of one process; this bridge carries an append's
wake-up to every other broker process on the same database. NOTIFY goes out from its own
short transaction (inside the append it cost throughput; it commits without waiting for its
WAL flush, as a hint needs no durability), throttled per topic on the trailing edge: one
round at most every few milliseconds, and always one after the last append. One LISTEN
connection per process, opened lazily by the first long-poll (after any fork), which waits
(briefly) until it listens. A notification is only a hint: waiters re-check the database
every re-check interval (store/consumers.py), so a lost one costs that interval.

Nobody to tell, no NOTIFY. Each LISTEN connection names itself (`application_name`
LISTENER_NAME), so a process can see in `pg_stat_activity` whether any *other* process
listens on its database: when none does (a broker that is the database's only process, or
whose other workers never long-polled), its appends send nothing. That answer is trusted for
PRESENCE_SECONDS, then asked again. Nothing is missed for it: a listener that starts wakes
its own process's waiters once PRESENCE_SECONDS (and a margin) after its LISTEN, by which
time every process's "nobody listens" from before that LISTEN has run out, so an append that
committed before then is found by that re-read, and a later one is notified.

Both connections live through a failover: every call has the store's deadline (a database
that stops answering cuts the connection, store/watchdog.py), and a quiet LISTEN connection
is probed with a query, so it is re-opened on the promoted primary rather than left waiting
for notifications from a host that no longer answers.
"""

from __future__ import annotations

import logging
import select
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import Engine

from .store.queries import (
    LISTEN,
    LISTENER_NAME,
    NAME_LISTENER,
    NOTIFY_CHANNEL,
    NOTIFY_TOPICS,
    OTHER_LISTENERS,
    PING,
)
from .wakeups import Wakeups

log = logging.getLogger("broker.wakeups")

NOTIFY_THROTTLE_SECONDS = 0.005
RECONNECT_SECONDS = 1.0
LISTEN_PROBE_SECONDS = 2.0  # how often a quiet LISTEN connection is checked for life
PRESENCE_SECONDS = 0.25  # how long an answer to "does another process listen?" is trusted
CATCH_UP_SECONDS = PRESENCE_SECONDS + 0.25  # after a LISTEN: every waiter re-reads once

Bounded = Callable[[Any], AbstractContextManager[None]]
LISTEN_READY_SECONDS = 5.0  # the longest the first long-poll waits for LISTEN to be in place


class PgWakeupBridge:
    def __init__(self, engine: Engine, wakeups: Wakeups, bounded: Bounded) -> None:
        """`bounded(dbapi_connection)`: a block of work on it with the store's deadline."""
        self._engine = engine
        self._bounded = bounded
        self._wakeups = wakeups
        self._lock = threading.Lock()
        self._pending: set[int] = set()
        self._has_pending = threading.Event()
        self._sender: threading.Thread | None = None
        self._listener: threading.Thread | None = None
        self._listened = threading.Event()  # set once LISTEN first succeeded; never cleared
        self._listen_pid = 0  # the backend of this process's LISTEN connection (0: none)
        self._others: bool | None = None  # does another process listen? (None: unknown)
        self._others_until = 0.0  # monotonic time until which `_others` holds

    def appended(self, topic_id: int) -> None:
        """Tell the other processes (soon) that `topic_id` has new messages; nothing when
        none of them listened a moment ago (see the module docstring)."""
        if self._others is False and time.monotonic() < self._others_until:
            return
        with self._lock:
            self._pending.add(topic_id)
            if self._sender is None:
                self._sender = self._start(self._send_loop, "lq-notify")
        self._has_pending.set()

    def ensure_listening(self) -> None:
        """Start listening, once per process. Until LISTEN first succeeds, callers wait for
        it (a bounded time), so a waiter's first read of the database is followed by the
        notification of every append it did not see."""
        if self._listener is None:
            with self._lock:
                if self._listener is None:
                    self._listener = self._start(self._listen_loop, "lq-listen")
        if not self._listened.is_set():
            self._listened.wait(LISTEN_READY_SECONDS)

    @staticmethod
    def _start(target: Callable[[], None], name: str) -> threading.Thread:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        return thread

    def _send_loop(self) -> None:
        while True:
            self._has_pending.wait()
            self._has_pending.clear()
            with self._lock:
                topics, self._pending = self._pending, set()
            if topics:
                try:
                    self._notify(sorted(topics))
                except Exception as exc:  # noqa: BLE001 - a hint only; waiters re-check
                    log.warning("NOTIFY failed: %s", exc)
            time.sleep(NOTIFY_THROTTLE_SECONDS)  # the throttle window, not synchronization

    def _notify(self, topics: list[int]) -> None:
        """NOTIFY `topics`, when another process listens (asked at most every
        PRESENCE_SECONDS), on a pooled connection through the driver."""
        proxied = self._engine.raw_connection()
        try:
            conn = proxied.dbapi_connection
            with self._bounded(conn), conn.cursor() as cursor:
                if time.monotonic() >= self._others_until:
                    asked = time.monotonic()  # before the question: the answer is newer
                    cursor.execute(OTHER_LISTENERS, {"name": LISTENER_NAME,
                                                     "pid": self._listen_pid})
                    self._others = bool(cursor.fetchone()[0])
                    self._others_until = asked + PRESENCE_SECONDS
                if self._others:
                    cursor.execute(NOTIFY_TOPICS, {"channel": NOTIFY_CHANNEL, "ids": topics})
            conn.commit()
        finally:
            proxied.close()

    def _listen_loop(self) -> None:
        lost = False
        while True:
            try:
                self._listen_once(reopening=lost)
            except Exception as exc:  # noqa: BLE001 - reconnect; waiters re-check meanwhile
                log.warning("LISTEN connection lost (%s); reconnecting", exc)
                lost = True
            time.sleep(RECONNECT_SECONDS)

    def _listen_once(self, reopening: bool) -> None:
        proxied = self._engine.raw_connection()
        proxied.detach()  # our own connection, never returned to the pool
        conn = proxied.dbapi_connection
        try:
            conn.autocommit = True
            with conn.cursor() as cursor, self._bounded(conn):
                cursor.execute(NAME_LISTENER, {"name": LISTENER_NAME})  # before LISTEN
                cursor.execute(LISTEN)
            self._listen_pid = conn.get_backend_pid()
            self._listened.set()
            if reopening:
                log.warning("LISTEN connection re-opened")
            self._relay(conn, time.monotonic() + CATCH_UP_SECONDS)
        finally:
            conn.close()

    def _relay(self, conn: Any, catch_up: float | None) -> None:
        """Wake this process's waiters for every notification, until the connection fails;
        at `catch_up`, wake them all once (see the module docstring)."""
        while True:
            quiet = LISTEN_PROBE_SECONDS
            if catch_up is not None:
                quiet = max(0.0, min(quiet, catch_up - time.monotonic()))
            if select.select([conn], [], [], quiet)[0]:
                conn.poll()
            elif catch_up is not None and time.monotonic() >= catch_up:
                catch_up = None
                self._wakeups.notify_all()
            else:  # quiet: make sure the server still answers
                with conn.cursor() as cursor, self._bounded(conn):
                    cursor.execute(PING.text)
            while conn.notifies:
                self._wakeups.notify(int(conn.notifies.pop(0).payload))
