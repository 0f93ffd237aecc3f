"""``LogQueueHandler``: ship stdlib logging records to a LogQueue broker.

::

    logging.config.dictConfig({
        "version": 1,
        "handlers": {"lq": {"class": "lq_logging.LogQueueHandler",
                            "url": "http://127.0.0.1:5000", "topic": "app-logs",
                            "fields": {"service": "shop", "env": "prod"}}},
        "root": {"level": "INFO", "handlers": ["lq"]},
    })

Three parts with one job each, as the stdlib separates ``QueueHandler`` from
``QueueListener``:

* the caller's side, this module: :meth:`LogQueueHandler.handle` is overridden so the
  handler lock is never taken: it runs the filters, then :meth:`~LogQueueHandler.prepare`
  (``getMessage()``, the traceback text, a shallow copy) and
  :meth:`~LogQueueHandler.enqueue` (a non-blocking append to a bounded deque). No JSON, no
  I/O. A full queue goes to the ``overflow`` policy and a counter, never to
  ``handleError``. Also ``flush``, ``close``, ``stats``, and the exit and fork hooks;
* the sender (:mod:`lq_logging.sender`): one daemon thread that batches, sends and backs
  off;
* the backlog (:mod:`lq_logging.backlog`): what is not delivered yet, in order (adopted
  spools, this process's spool (:mod:`lq_logging.spool`), memory).

Broker down (``overflow="spool"``, the default): the failed batch and everything after it
go to this process's spool file until the spool drains, in large batches; at start the
sender takes over spool files that no live process holds and delivers them first. The spool
is bounded (``spool_max_bytes``): the oldest batches are dropped and counted. A spool that
cannot be written (a full disk) leaves records in memory, bounded by ``queue_size``, until
it can. ``overflow="drop"``: records wait in memory only; the queue fills up, and then
records below WARNING are shed first (once the queue is 80% full), WARNING and above only
when it is full. ``overflow="block"``: the caller waits for room, at most ``timeout``.
Every loss is counted in :meth:`~LogQueueHandler.stats` and, once the broker answers again,
shipped as one WARNING record of the logger ``lq_logging``.

Never deadlock, never recurse. Records emitted on the sender thread (urllib3's debug lines,
say) are dropped by thread id. The handler's own complaints go to a private,
non-propagating, rate-limited stderr logger (:mod:`lq_logging.diagnostics`).
:meth:`~LogQueueHandler.flush` and :meth:`~LogQueueHandler.close` wait at most ``timeout``
seconds; what is left then goes to the spool (or is counted as dropped). Handlers are closed
at exit (``atexit``, and multiprocessing's exit hook in child processes). After
``os.fork()`` a child gets its own queue, locks, HTTP session, producer ids, spool file and
sender thread; the parent's pending records stay the parent's.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from lq_logging.backlog import Backlog
from lq_logging.diagnostics import diagnostics
from lq_logging.mailbox import RECORD_CLASS, Counters, FlushMark, Mailbox, Stop
from lq_logging.record import DEFAULT_MAX_BYTES, JSONFormatter, fit_text, trace_ids
from lq_logging.sender import Sender
from lq_logging.settings import OVERFLOW_POLICIES, check_level, settings
from sdk.contract import DEFAULT_URL

_TRACEBACKS = logging.Formatter()

# --- process-wide registry: exit and fork hooks ------------------------------------------

_LIVE: weakref.WeakSet[LogQueueHandler] = weakref.WeakSet()
_mp_hooked_pid = 0


def _close_all() -> None:
    """Close every live handler (atexit, and multiprocessing's exit in a child)."""
    for handler in list(_LIVE):
        with contextlib.suppress(Exception):  # exit must go on
            handler.close()


def _after_fork_in_child() -> None:
    for handler in list(_LIVE):
        handler._after_fork()


atexit.register(_close_all)
os.register_at_fork(after_in_child=_after_fork_in_child)


def _hook_multiprocessing_exit() -> None:
    """A multiprocessing child exits with os._exit (no atexit): close handlers from its own
    exit hook. Registered in the child itself, after multiprocessing cleared the parent's."""
    global _mp_hooked_pid
    mp = sys.modules.get("multiprocessing")
    if mp is None or _mp_hooked_pid == os.getpid():
        return
    try:
        if mp.parent_process() is None:
            return
        from multiprocessing import util

        util.Finalize(None, _close_all, exitpriority=100)
        _mp_hooked_pid = os.getpid()
    except Exception:  # noqa: BLE001 - best effort
        pass


# --- the handler -------------------------------------------------------------------------

class LogQueueHandler(logging.Handler):
    """Send records to a LogQueue topic in batches from a background thread.

    Args:
        url: the broker url, a list of urls (failover in order) or a comma-separated string;
            ``http(s)://host[:port]`` (``host:port`` means ``http://host:port``).
        topic: the topic (created by the broker on first use).
        token: the broker's token, if it requires one.
        batch_size: most records per request (1 to 10,000).
        flush_interval: seconds; the sender wakes at least this often, spools a batch at
            least this often while the broker is down, and retries a down broker at most
            ``4 x flush_interval`` apart (and at most 2 s).
        queue_size: records held in memory between the application and the sender.
        spool_dir: where the spool files live (default: ``$LQ_SPOOL_DIR`` or
            ``~/.cache/logqueue/spool``, one directory per url and topic). Processes that
            share a ``spool_dir`` deliver each other's orphaned spools.
        overflow: ``"spool"`` (default), ``"drop"`` or ``"block"`` (see the module doc).
        timeout: the longest :meth:`flush`, :meth:`close` or a blocked caller waits, and the
            read timeout of one request.
        fields: static fields added to every record (e.g. ``{"service": "shop"}``).
        level: the handler's level (dictConfig's ``level`` also works).
        max_record_bytes: longer records are truncated with a marker (the broker refuses a
            message over 1 MiB).
        spool_max_bytes: the spool's bound; the oldest batches are dropped beyond it.
        spool_fsync: fsync spool writes (once per batch; and the spool directory when a file
            is created or renamed), so spooled records survive a power cut, not only a
            crash. ``False`` (or ``"false"`` from a config file) trades that for speed.
        verify: for ``https://`` urls, the CA file that signs the broker's certificate
            (``False`` or ``"false"``: no check; default: the system's CAs).

    Raises:
        ValueError: an option is not one the handler can work with; the message names it
            and what it allows.
    """

    def __init__(self, url: str | Sequence[str] = DEFAULT_URL, topic: str = "logs",
                 token: str | None = None, batch_size: int = 500, flush_interval: float = 0.5,
                 queue_size: int = 50_000, spool_dir: str | None = None,
                 overflow: str = "spool", timeout: float = 5.0,
                 fields: Mapping[str, Any] | None = None, level: int | str = logging.NOTSET,
                 max_record_bytes: int = DEFAULT_MAX_BYTES,
                 spool_max_bytes: int = 256 * 1024 * 1024,
                 spool_fsync: bool | str = True, verify: bool | str = True) -> None:
        # Checked before logging.Handler.__init__ registers the handler: a bad option leaves
        # nothing behind for logging.shutdown() to trip over at exit.
        self.settings = settings(url, topic, token=token, batch_size=batch_size,
                                 flush_interval=flush_interval, queue_size=queue_size,
                                 spool_dir=spool_dir, overflow=overflow, timeout=timeout,
                                 fields=fields, max_record_bytes=max_record_bytes,
                                 spool_max_bytes=spool_max_bytes, spool_fsync=spool_fsync,
                                 verify=verify)
        super().__init__(check_level(level))
        s = self.settings
        self.urls, self.topic, self.overflow = list(s.urls), s.topic, s.overflow
        self.queue_size, self.timeout = s.queue_size, s.timeout
        self.spool_dir, self.spool_fsync = s.spool_dir, s.spool_fsync
        self._json = JSONFormatter(s.fields, max_bytes=s.max_record_bytes)
        # Below WARNING, records are shed once the queue is this full (drop and spool).
        self._soft_limit = (s.queue_size if s.overflow == "block"
                            else max(1, int(s.queue_size * 0.8)))
        self._closed = False
        self._start_lock = threading.Lock()
        self._fresh_process_state()
        _LIVE.add(self)
        self._start()

    # -- per-process state (fresh after fork) ----------------------------------------------

    def _fresh_process_state(self) -> None:
        s = self.settings
        self._box = Mailbox()
        self._backlog = Backlog(s.spool_dir if s.spooling else None, fsync=s.spool_fsync,
                                max_bytes=s.spool_max_bytes)
        self._counters = Counters()
        self._sender = Sender(s, self._box, self._counters, self._backlog, self._format)
        self._started = False

    def _after_fork(self) -> None:
        """In a forked child: forget the parent's queue, spool, session and thread."""
        self._backlog.after_fork()
        self._start_lock = threading.Lock()
        self._fresh_process_state()

    # -- the caller's side ----------------------------------------------------------------

    def handle(self, record: logging.LogRecord) -> logging.LogRecord | bool:
        """Filter, prepare and enqueue ``record``; never takes the handler lock."""
        if self.filters:
            rv = self.filter(record)
            if not rv:
                return False
            if isinstance(rv, logging.LogRecord):
                record = rv
        if threading.get_ident() in self._sender.idents:
            return False  # the sender's own libraries logging: never loop back
        if self._closed:
            self._counters.drop(1)
            return False
        if not self._started:
            self._start()
        try:
            self.enqueue(self.prepare(record))
        except Exception:  # noqa: BLE001 - a bad format string is the app's bug: report it
            self.handleError(record)
        return record

    def emit(self, record: logging.LogRecord) -> None:
        """Enqueue ``record`` (for callers that call ``emit`` directly)."""
        self.handle(record)

    def prepare(self, record: logging.LogRecord) -> dict[str, Any]:
        """A snapshot of ``record`` for the queue: its attributes, with the message text as
        it is now and the traceback as text; the record itself is left as it is for other
        handlers. (A plain dict rather than a copy of the record: once its values are
        strings and numbers the garbage collector stops tracking it, so a long queue costs
        the application's threads no collection passes.)"""
        attrs = record.__dict__.copy()
        attrs["msg"] = record.getMessage()
        attrs["args"] = None
        attrs.update(trace_ids())  # the span is this thread's: the sender has none
        if record.exc_info:
            if not record.exc_text:
                attrs["exc_text"] = _TRACEBACKS.formatException(record.exc_info)
            attrs["exc_info"] = None
        if record.__class__ is not logging.LogRecord:
            attrs[RECORD_CLASS] = record.__class__
        return attrs

    def enqueue(self, snapshot: dict[str, Any]) -> None:
        """Append a :meth:`prepare`'d record to the queue without blocking
        (``overflow="block"`` waits at most ``timeout`` for room)."""
        box = self._box
        size = len(box.queue)
        if size < self._soft_limit or (size < self.queue_size
                                       and snapshot["levelno"] >= logging.WARNING) or (
                self.overflow == "block" and self._wait_for_room()):
            box.queue.append(snapshot)
            if size >= box.wake_at:
                box.wake.set()
        else:
            self._counters.drop(1)

    def _wait_for_room(self) -> bool:
        box = self._box
        deadline = time.monotonic() + self.timeout
        with box.space:
            box.blocked += 1
            try:
                while len(box.queue) >= self.queue_size:
                    box.wake.set()
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._closed:
                        return False
                    box.space.wait(min(remaining, 0.1))
                return True
            finally:
                box.blocked -= 1

    def _format(self, record: logging.LogRecord) -> str:
        """The record's text: the handler's formatter if one is set, else the JSON format."""
        formatter = self.formatter
        if formatter is None:
            return self._json.format(record)
        text = formatter.format(record)
        if len(text) * 4 > self.settings.max_record_bytes:
            text = fit_text(text, self.settings.max_record_bytes)
        return text

    # -- public control -------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """``queued`` (in memory), ``sent`` (acknowledged), ``spooled`` (on disk now),
        ``dropped``, ``retries`` (failed send attempts), ``last_error`` (``None`` once the
        broker answers again, unless records were dropped for a reason of their own)."""
        memory, disk = self._backlog.counts()
        queued = sum(1 for r in list(self._box.queue) if type(r) is dict)
        c = self._counters
        return {"queued": queued + memory, "sent": c.sent, "spooled": disk,
                "dropped": c.dropped, "retries": c.retries, "last_error": c.last_error}

    def flush(self) -> None:
        """Wait (at most ``timeout``) until every record enqueued so far is sent, or spooled
        while the broker is down."""
        sender = self._sender
        if (not self._started or self._closed or sender.thread is None
                or threading.get_ident() in self._sender.idents):
            return
        mark = FlushMark()
        with self._start_lock:
            self._box.queue.append(mark)
            self._box.flushes += 1
        self._box.wake.set()
        if not mark.event.wait(self.timeout):
            diagnostics.warning("flush() gave up after %.1fs (%s)", self.timeout,
                                self._counters.last_error or "broker slow")

    def close(self) -> None:
        """Stop the sender: deliver what is queued within ``timeout``, spool (or count as
        dropped) the rest, release the spool file. Idempotent; never raises."""
        if self._closed:
            return
        self._closed = True
        try:
            self._shutdown()
        except Exception as exc:  # noqa: BLE001
            diagnostics.error("close() failed: %r", exc)
        _LIVE.discard(self)
        super().close()

    # -- the sender's lifecycle -----------------------------------------------------------

    def _start(self) -> None:
        with self._start_lock:
            if self._started:
                return
            self._sender.start()
            self._started = True
        _hook_multiprocessing_exit()

    def _shutdown(self) -> None:
        sender, thread = self._sender, self._sender.thread
        if thread is None or not thread.is_alive():
            if not self._backlog.abandoned:
                sender.leave()
            return
        sender.stopping = True
        self._box.queue.append(Stop())
        self._box.wake.set()
        with self._box.space:
            self._box.space.notify_all()
        thread.join(self.timeout)
        if thread.is_alive():
            diagnostics.warning("the sender did not finish within %.1fs; spooling the rest",
                                self.timeout)
            sender.leave()

    @property
    def _sender_ident(self) -> int | None:
        """The sender thread's id (records logged on it are dropped)."""
        return self._sender.ident

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.topic!r} -> {', '.join(self.urls)} "
                f"({logging.getLevelName(self.level)})>")


__all__ = ["OVERFLOW_POLICIES", "LogQueueHandler", "diagnostics"]
