"""``LogQueueHandler``: ship stdlib logging records to a LogQueue broker.

::

    logging.config.dictConfig({
        "version": 1,
        "handlers": {"lq": {"class": "lq_logging.LogQueueHandler",
                            "url": "http://127.0.0.1:5000", "topic": "app-logs",
                            "fields": {"service": "shop", "env": "prod"}}},
        "root": {"level": "INFO", "handlers": ["lq"]},
    })

Caller's thread. :meth:`LogQueueHandler.handle` is overridden so the handler lock is never
taken: it runs the filters, then :meth:`prepare` (``getMessage()``, the traceback text, a
shallow copy) and :meth:`enqueue` (a non-blocking append to a bounded deque). No JSON, no
I/O. A full queue goes to the ``overflow`` policy and a counter, never to ``handleError``.

Sender thread. One daemon thread per handler and process encodes records as JSON
(:class:`~lq_logging.record.JSONFormatter`, or the handler's own formatter), batches them
and sends each batch through the SDK :class:`sdk.Producer` with an explicit producer id and
seq. When records are waiting and nothing is in flight it sends at once (latency); records
that arrive while a batch is in flight make the next batch (throughput), up to
``batch_size`` records or 4 MiB. One batch is in flight at a time, and a failed batch is
retried with the same id and seq before anything after it, so order is kept and the
broker appends every batch once.

Broker down (``overflow="spool"``, the default). The failed batch and everything after it
go to this process's spool file (:mod:`lq_logging.spool`) until the spool drains; the
sender retries the oldest batch with backoff (from 50 ms up to ``flush_interval`` x 4,
at most 2 s). At start the sender takes over spool files that no live process holds and
delivers them first, with the producer ids and seqs they were first sent with. The spool
is bounded (``spool_max_bytes``): the oldest batches are dropped and counted.
Spool writes are fsynced (``spool_fsync``, on by default) once per batch, and before a
spooled batch is sent its producer id and seq, so a power cut neither loses what was
spooled nor lets a replay duplicate what was sent.
``overflow="drop"``: the failed batch is retried in memory; the queue fills up, and then
records below WARNING are shed first (once the queue is 80% full), WARNING and above only
when it is full. ``overflow="block"``: the caller waits for room, at most ``timeout``.
Every loss is counted in :meth:`stats` and, once the broker answers again, shipped as one
WARNING record of the logger ``lq_logging``.

Refused batches. The broker refuses a whole batch (413 ``too_large``, 400 ``bad_request``)
for one bad record in it, e.g. one over a per-message limit smaller than
``max_record_bytes``. Such a batch is sent again as two halves, in order, recursively, so
only the bad records remain. A single record refused as too large is cut to half its size
with the truncation marker (a JSON record stays valid JSON: its free text is cut, as
:class:`~lq_logging.record.JSONFormatter` does) and sent again, until it fits. A record
that cannot be cut further, or is refused for another reason, is dropped and counted
(``last_error`` says why). A refusal appends nothing, and every part is sent under a seq of
its own (a spooled batch is swapped for its parts in one atomic spool write), so neither a
retry nor a crash part-way duplicates or loses a part. (A lone surrogate, which no broker
can store, never gets that far: it is sent as its ``\\udXXX`` escape, the same character
once a JSON record is parsed.)

Never deadlock, never recurse. Records emitted on the sender thread (urllib3's debug lines,
say) are dropped by thread id. The handler's own complaints go to a private,
non-propagating, rate-limited stderr logger. :meth:`flush` and :meth:`close` wait at most
``timeout`` seconds; what is left then goes to the spool (or is counted as dropped).
Handlers are closed at exit (``atexit``, and multiprocessing's exit hook in child
processes). After ``os.fork()`` a child gets its own queue, locks, HTTP session, producer
id, spool file and sender thread; the parent's pending records stay the parent's.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import re
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lq_logging.record import (
    DEFAULT_MAX_BYTES,
    JSONFormatter,
    escape_surrogates,
    fit_text,
    shrink_record,
    utf8_size,
)
from lq_logging.sinks import parse_bool
from lq_logging.spool import Spool, SpoolBatch, adopt_orphans
from sdk import BadRequest, Client, LogQueueError, NotRegistered, Producer, TooLarge, UnknownId
from sdk.transport import parse_verify

OVERFLOW_POLICIES = ("spool", "drop", "block")
TOPIC_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$")
MAX_BATCH_BYTES = 4 * 1024 * 1024
MAX_BATCH_RECORDS = 10_000
_RETRY_MIN = 0.05
_RETRY_MAX = 2.0
#: A record refused as too large is not cut below this many bytes (then it is dropped).
_MIN_RECORD_BYTES = 256

_TRACEBACKS = logging.Formatter()


# --- diagnostics: a private, non-propagating, rate-limited stderr logger -----------------

class _RateLimit(logging.Filter):
    """At most ``burst`` messages per ``period`` seconds; then one line saying how many
    were suppressed."""

    def __init__(self, burst: int = 5, period: float = 60.0) -> None:
        super().__init__()
        self.burst, self.period = burst, period
        self._window = 0.0
        self._count = 0
        self._suppressed = 0
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        with self._lock:
            now = time.monotonic()
            if now - self._window > self.period:
                if self._suppressed:
                    record.msg = f"{record.msg} ({self._suppressed} similar messages suppressed)"
                self._window, self._count, self._suppressed = now, 0, 0
            self._count += 1
            if self._count > self.burst:
                self._suppressed += 1
                return False
            return True


def _make_diagnostics() -> logging.Logger:
    # Not created through logging.getLogger: dictConfig cannot disable it, logging's cache
    # clearing never touches it (so it never takes logging's module lock once warmed), and
    # no application handler is ever attached to it.
    logger = logging.Logger("lq_logging.diagnostics", logging.INFO)
    logger.propagate = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s lq_logging %(levelname)s: %(message)s"))
    handler.addFilter(_RateLimit())
    logger.addHandler(handler)
    for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR):
        logger.isEnabledFor(level)
    return logger


diagnostics = _make_diagnostics()
_diagnostics_handler = diagnostics.handlers[0]


# --- process-wide registry: exit and fork hooks ------------------------------------------

_LIVE: weakref.WeakSet[LogQueueHandler] = weakref.WeakSet()
_mp_hooked_pid = 0


def _close_all() -> None:
    """Close every live handler (atexit, and multiprocessing's exit in a child)."""
    for handler in list(_LIVE):
        try:
            handler.close()
        except Exception:  # noqa: BLE001 - exit must go on
            pass


def _after_fork_in_child() -> None:
    for flt in _diagnostics_handler.filters:
        if isinstance(flt, _RateLimit):
            flt._lock = threading.Lock()
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

@dataclass(slots=True)
class _Batch:
    """A batch in memory: encoded messages, and the producer id/seq once given one."""

    topic: str
    messages: list[str]
    producer_id: int | None = None
    seq: int | None = None


class _FlushMark:
    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = threading.Event()


class _Stop:
    pass


def _default_spool_dir(urls: Sequence[str], topic: str) -> str:
    base = os.environ.get("LQ_SPOOL_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "logqueue", "spool")
    key = hashlib.sha256(("\n".join(urls) + "\n" + topic).encode()).hexdigest()[:12]
    return os.path.join(base, f"{topic}-{key}")


class LogQueueHandler(logging.Handler):
    """Send records to a LogQueue topic in batches from a background thread.

    Args:
        url: the broker url, a list of urls (failover in order) or a comma-separated string.
        topic: the topic (created by the broker on first use).
        token: the broker's token, if it requires one.
        verify: for ``https://`` urls, the CA file that signs the broker's certificate
            (``False`` or ``"false"``: no check; default: the system's CAs).
        batch_size: most records per request (<= 10,000).
        flush_interval: seconds; the sender wakes at least this often, and retries a down
            broker at most ``4 x flush_interval`` apart (and at most 2 s).
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
    """

    def __init__(self, url: str | Sequence[str] = "http://127.0.0.1:5000", topic: str = "logs",
                 token: str | None = None, batch_size: int = 500, flush_interval: float = 0.5,
                 queue_size: int = 50_000, spool_dir: str | None = None,
                 overflow: str = "spool", timeout: float = 5.0,
                 fields: Mapping[str, Any] | None = None, level: int | str = logging.NOTSET,
                 max_record_bytes: int = DEFAULT_MAX_BYTES,
                 spool_max_bytes: int = 256 * 1024 * 1024,
                 spool_fsync: bool | str = True, verify: bool | str = True) -> None:
        super().__init__(level)
        if overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"overflow must be one of {OVERFLOW_POLICIES}, not {overflow!r}")
        if not TOPIC_RE.match(topic or ""):
            raise ValueError(f"invalid topic name {topic!r}")
        if not 1 <= int(batch_size) <= MAX_BATCH_RECORDS:
            raise ValueError(f"batch_size must be between 1 and {MAX_BATCH_RECORDS}")
        if int(queue_size) < 1:
            raise ValueError("queue_size must be >= 1")
        if isinstance(url, str):
            url = url.split(",")
        self.urls = [u.strip() for u in url if u and u.strip()]
        if not self.urls:
            raise ValueError("at least one broker url is required")
        self.topic = topic
        self.token = token
        self.verify = parse_verify(verify)
        self.batch_size = int(batch_size)
        self.flush_interval = float(flush_interval)
        self.queue_size = int(queue_size)
        self.overflow = overflow
        self.timeout = float(timeout)
        self.fields = dict(fields or {})
        self.max_record_bytes = int(max_record_bytes)
        self.spool_max_bytes = int(spool_max_bytes)
        self.spool_fsync = parse_bool(spool_fsync)
        self.spool_dir = (os.path.abspath(spool_dir) if spool_dir
                          else _default_spool_dir(self.urls, topic))
        self._json = JSONFormatter(self.fields, max_bytes=self.max_record_bytes)
        # Below WARNING, records are shed once the queue is this full (drop and spool).
        self._soft_limit = (self.queue_size if overflow == "block"
                            else max(1, int(self.queue_size * 0.8)))
        self._closed = False
        self._reset_process_state()
        _LIVE.add(self)
        self._start()

    # -- per-process state (fresh after fork) ----------------------------------------------

    def _reset_process_state(self) -> None:
        self._pid = os.getpid()
        self._queue: deque[Any] = deque()
        self._wake = threading.Event()
        self._sleeping = False
        self._space = threading.Condition(threading.Lock())
        self._blocked = 0
        # outbox + spool handoff: held for spool writes (and their fsync), never for network
        # waits; the application's threads never take it (only stats() and close() do)
        self._state_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._sender_ident: int | None = None
        self._started = False
        self._stop = False
        self._abandoned = False
        self._client: Client | None = None
        self._producer: Producer | None = None
        self._outbox: deque[_Batch] = deque()
        self._spool: Spool | None = None
        self._adopted: list[Spool] = []
        self._marks: list[_FlushMark] = []
        self._down = False
        self._retry_at = 0.0
        self._retry_delay = _RETRY_MIN
        self._sent = 0
        self._dropped = 0
        self._unreported = 0
        self._retries = 0
        self._last_error: str | None = None

    def _after_fork(self) -> None:
        """In a forked child: forget the parent's queue, spool, session and thread."""
        for spool in [self._spool, *self._adopted]:
            if spool is not None:
                spool.abandon()
        closed = self._closed
        self._reset_process_state()
        self._closed = closed

    # -- the caller's side ----------------------------------------------------------------

    def handle(self, record: logging.LogRecord) -> logging.LogRecord | bool:
        """Filter, prepare and enqueue ``record``; never takes the handler lock."""
        if self.filters:
            rv = self.filter(record)
            if not rv:
                return False
            if isinstance(rv, logging.LogRecord):
                record = rv
        if threading.get_ident() == self._sender_ident:
            return False  # the sender's own libraries logging: never loop back
        if self._closed:
            self._count_drop(1)
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

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        """The message text now, the traceback text, in a shallow copy (the original is left
        for other handlers)."""
        msg = record.getMessage()
        cls = record.__class__
        copy = cls.__new__(cls)
        copy.__dict__.update(record.__dict__)
        copy.msg = msg
        copy.args = None
        if record.exc_info:
            if not copy.exc_text:
                copy.exc_text = _TRACEBACKS.formatException(record.exc_info)
            copy.exc_info = None
        return copy

    def enqueue(self, record: logging.LogRecord) -> None:
        """Append ``record`` to the queue without blocking (``overflow="block"`` waits at
        most ``timeout`` for room)."""
        queue = self._queue
        size = len(queue)
        if size < self._soft_limit or (size < self.queue_size
                                       and record.levelno >= logging.WARNING) or self.overflow == "block" and self._wait_for_room():
            queue.append(record)
            if self._sleeping:
                self._wake.set()
        else:
            self._count_drop(1)

    def _wait_for_room(self) -> bool:
        deadline = time.monotonic() + self.timeout
        with self._space:
            self._blocked += 1
            try:
                while len(self._queue) >= self.queue_size:
                    if self._wake is not None and self._sleeping:
                        self._wake.set()
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._closed:
                        return False
                    self._space.wait(min(remaining, 0.1))
                return True
            finally:
                self._blocked -= 1

    def _count_drop(self, n: int) -> None:
        with self._count_lock:
            self._dropped += n
            self._unreported += n

    # -- public control -------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """``queued`` (in memory), ``sent`` (acknowledged), ``spooled`` (on disk now),
        ``dropped``, ``retries`` (failed send attempts), ``last_error``."""
        with self._state_lock:
            queued = sum(len(b.messages) for b in self._outbox)
            spooled = sum(s.live_records for s in [self._spool, *self._adopted]
                          if s is not None)
        return {"queued": len(self._queue) + queued, "sent": self._sent, "spooled": spooled,
                "dropped": self._dropped, "retries": self._retries,
                "last_error": self._last_error}

    def flush(self) -> None:
        """Wait (at most ``timeout``) until every record enqueued so far is sent, or spooled
        while the broker is down."""
        if (not self._started or self._closed or self._thread is None
                or threading.get_ident() == self._sender_ident):
            return
        mark = _FlushMark()
        self._queue.append(mark)
        self._wake.set()
        if not mark.event.wait(self.timeout):
            diagnostics.warning("flush() gave up after %.1fs (%s)", self.timeout,
                                self._last_error or "broker slow")

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

    # -- sender thread lifecycle ----------------------------------------------------------

    def _start(self) -> None:
        with self._start_lock:
            if self._started:
                return
            self._thread = threading.Thread(target=self._run, name="lq-sender", daemon=True)
            self._thread.start()
            self._started = True
        _hook_multiprocessing_exit()

    def _shutdown(self) -> None:
        thread = self._thread
        if thread is None or not thread.is_alive():
            self._take_over_leftovers()
            return
        self._stop = True
        self._queue.append(_Stop())
        self._wake.set()
        with self._space:
            self._space.notify_all()
        thread.join(self.timeout)
        if thread.is_alive():
            diagnostics.warning("the sender did not finish within %.1fs; spooling the rest",
                                self.timeout)
            self._take_over_leftovers()

    def _take_over_leftovers(self) -> None:
        """On the closing thread: keep what the sender left (queue and outbox), release
        the spool files. The sender, if still alive, sees ``_abandoned`` and stops."""
        with self._state_lock:
            self._abandoned = True
            records = [r for r in self._queue if isinstance(r, logging.LogRecord)]
            self._queue.clear()
            batches = list(self._outbox)
            self._outbox.clear()
            if records:
                batches.extend(self._encode_batches(records))
            if batches:
                if self.overflow == "spool":
                    try:
                        spool = self._own_spool()
                        for b in batches:
                            spool.append(b.topic, b.messages, b.producer_id, b.seq,
                                         sync=False)
                        spool.sync()
                    except OSError as exc:
                        diagnostics.error("cannot spool %d batches: %r", len(batches), exc)
                        self._count_drop(sum(len(b.messages) for b in batches))
                else:
                    self._count_drop(sum(len(b.messages) for b in batches))
            for spool in [self._spool, *self._adopted]:
                if spool is not None:
                    spool.close()
            self._adopted = []
        if self._unreported:
            diagnostics.warning("%d records were dropped (overflow=%s; last error: %s)",
                                self._unreported, self.overflow, self._last_error)
        for mark in self._marks:
            mark.event.set()
        if self._client is not None:
            self._client.close()

    # -- the sender thread ----------------------------------------------------------------

    def _run(self) -> None:
        self._sender_ident = threading.get_ident()
        try:
            if self.overflow == "spool":
                self._adopt()
            while not self._abandoned:
                moved = self._drain()
                sent = self._send_one()
                self._release_marks()
                if self._stop and self._finished():
                    break
                if not (moved or sent):
                    self._idle()
        except Exception as exc:  # noqa: BLE001 - the sender must report, not vanish
            diagnostics.exception("the sender thread failed: %r", exc)
            self._last_error = repr(exc)
        finally:
            if not self._abandoned:
                self._take_over_leftovers()

    def _idle(self) -> None:
        """Sleep until a record arrives, a retry is due, or ``flush_interval`` passes."""
        self._wake.clear()
        self._sleeping = True
        try:
            if self._queue and not self._blocked_by_failure():
                return
            timeout = self.flush_interval
            if self._down:
                timeout = max(0.0, min(timeout, self._retry_at - time.monotonic()))
            if timeout > 0:
                self._wake.wait(timeout)
        finally:
            self._sleeping = False

    def _blocked_by_failure(self) -> bool:
        """Records are waiting but cannot move (memory mode, a failed batch pending)."""
        return (self._down and self.overflow != "spool" and bool(self._outbox)
                and not self._stop)

    def _finished(self) -> bool:
        """While stopping: done once nothing is left, or the broker failed (the rest is
        spooled or dropped by ``_take_over_leftovers``)."""
        if self._down:
            return True
        queue_empty = not any(isinstance(r, logging.LogRecord) for r in self._queue)
        spooled = any(s.batches for s in self._adopted) or (self._spool is not None
                                                           and bool(self._spool.batches))
        return queue_empty and not self._outbox and not spooled

    def _spooling(self) -> bool:
        if self.overflow != "spool":
            return False
        return self._down or bool(self._spool is not None and self._spool.batches)

    def _drain(self) -> bool:
        """Move records from the queue into batches: into the spool while the broker is
        down or the spool is not empty, else one batch into the (empty) outbox. Returns
        whether anything moved."""
        moved = False
        while True:
            spooling = self._spooling()
            if not spooling and self._outbox:
                return moved  # memory mode: the outbox batch goes first
            records, stop = self._take()
            if records:
                moved = True
                batches = self._encode_batches(records)
                with self._state_lock:
                    if self._abandoned:
                        return moved
                    if spooling:
                        self._to_spool(batches)
                    else:
                        self._outbox.extend(batches)
                if self._blocked:
                    with self._space:
                        self._space.notify_all()
            if stop or not records or not spooling:
                return moved

    def _take(self) -> tuple[list[logging.LogRecord], bool]:
        """Up to ``batch_size`` records from the queue; stop at a flush mark or stop."""
        queue = self._queue
        records: list[logging.LogRecord] = []
        limit = self.batch_size
        while queue and len(records) < limit:
            item = queue.popleft()
            if isinstance(item, logging.LogRecord):
                records.append(item)
            elif isinstance(item, _FlushMark):
                self._marks.append(item)
                return records, True
            else:  # _Stop
                return records, True
        return records, False

    def _encode_batches(self, records: list[logging.LogRecord]) -> list[_Batch]:
        formatter = self.formatter
        out: list[_Batch] = []
        messages: list[str] = []
        size = 0
        for record in records:
            try:
                if formatter is None:
                    text = self._json.format(record)
                else:
                    text = formatter.format(record)
                    if len(text) * 4 > self.max_record_bytes:
                        text = fit_text(text, self.max_record_bytes)
            except Exception as exc:  # noqa: BLE001 - one bad record must not stop the rest
                self._count_drop(1)
                self._last_error = f"cannot format a record: {exc!r}"
                continue
            if not text.isascii():
                text = escape_surrogates(text)
            if messages and size + len(text) > MAX_BATCH_BYTES // 4:
                out.append(_Batch(self.topic, messages))
                messages, size = [], 0
            messages.append(text)
            size += len(text)
        if messages:
            out.append(_Batch(self.topic, messages))
        return out

    def _own_spool(self) -> Spool:
        if self._spool is None or self._spool.closed:
            self._spool = Spool.create(self.spool_dir, fsync=self.spool_fsync)
        return self._spool

    def _to_spool(self, batches: list[_Batch]) -> None:
        """Append ``batches`` to the spool (state lock held), then keep it in bounds."""
        try:
            spool = self._own_spool()
            for b in batches:
                spool.append(b.topic, b.messages, b.producer_id, b.seq, sync=False)
            spool.sync()
            lost = spool.trim(self.spool_max_bytes)
            if lost:
                self._count_drop(lost)
        except OSError as exc:
            self._count_drop(sum(len(b.messages) for b in batches))
            self._last_error = f"spool: {exc!r}"
            diagnostics.error("cannot write the spool in %s: %r", self.spool_dir, exc)

    def _adopt(self) -> None:
        exclude = [self._spool.path] if self._spool is not None else []
        found = adopt_orphans(self.spool_dir, exclude, fsync=self.spool_fsync)
        if found:
            with self._state_lock:
                self._adopted.extend(found)
            diagnostics.info("taking over %d orphaned spool file(s) with %d records",
                             len(found), sum(s.live_records for s in found))

    def _release_marks(self) -> None:
        """Wake flush() callers once what they waited for is sent (or spooled while the
        broker is down)."""
        if not self._marks or self._outbox:
            return
        if not self._down and (any(s.batches for s in self._adopted)
                               or (self._spool is not None and self._spool.batches)):
            return
        marks, self._marks = self._marks, []
        for mark in marks:
            mark.event.set()

    # -- sending --------------------------------------------------------------------------

    def _producer_for(self) -> Producer:
        if self._producer is None:
            self._client = Client(self.urls, token=self.token, verify=self.verify,
                                  retries=len(self.urls) - 1,
                                  connect_timeout=min(3.05, self.timeout),
                                  read_timeout=max(self.timeout, 1.0), backoff=0.05,
                                  backoff_max=0.5)
            self._producer = self._client.producer()
        return self._producer

    def _head(self) -> tuple[Spool | None, SpoolBatch | _Batch | None]:
        """The oldest undelivered batch: orphaned spools, then our spool, then memory."""
        while self._adopted:
            spool = self._adopted[0]
            head = spool.head()
            if head is not None:
                return spool, head
            with self._state_lock:
                spool.close()
                self._adopted.pop(0)
        if self._spool is not None and self._spool.batches:
            return self._spool, self._spool.head()
        if self._outbox:
            return None, self._outbox[0]
        return None, None

    def _send_one(self) -> bool:
        """Send the oldest batch if a send is due; returns whether one was settled."""
        if self._down and time.monotonic() < self._retry_at and not self._stop:
            return False
        spool, batch = self._head()
        if batch is None:
            return False
        if spool is not None:
            try:
                messages = spool.read(batch)
            except (OSError, ValueError) as exc:
                self._ack(spool, batch, delivered=False)
                diagnostics.error("dropped an unreadable spooled batch: %r", exc)
                return True
        else:
            messages = batch.messages
        producer = self._producer_for()
        try:
            if batch.producer_id is None or batch.seq is None:
                pid = producer.register(batch.topic)
                seq = producer.next_seq(batch.topic, pid)
                with self._state_lock:
                    if self._abandoned:
                        return False
                    if spool is not None:
                        spool.assign(batch, pid, seq)
                    else:
                        batch.producer_id, batch.seq = pid, seq
            producer.send_batch(batch.topic, messages, producer_id=batch.producer_id,
                                seq=batch.seq)
        except (NotRegistered, UnknownId) as exc:
            # The broker does not know this producer id (e.g. a new database): send the
            # batch again under a fresh registration (a new Producer registers anew).
            self._failed(exc)
            if batch.producer_id == producer.producer_ids.get(batch.topic):
                self._producer = self._client.producer() if self._client else None
            with self._state_lock:
                if spool is None and not self._abandoned or spool is not None and isinstance(batch, SpoolBatch):
                    batch.producer_id, batch.seq = None, None
            return False
        except (TooLarge, BadRequest, UnicodeError) as exc:
            # Refused for what it holds (UnicodeError: the SDK cannot even encode it, e.g. a
            # lone surrogate in a spool from an older version): nothing was appended and
            # the seq stays unused. Never retried as is: split, cut down, or dropped.
            self._refused(spool, batch, messages, exc)
            return True
        except (LogQueueError, OSError) as exc:
            self._failed(exc)
            return False
        self._ack(spool, batch, delivered=True)
        if self._down:
            self._down = False
            self._retry_delay = _RETRY_MIN
            diagnostics.info("the broker answers again; delivering the backlog")
            if self.overflow == "spool":
                self._adopt()
        if self._unreported:
            self._report_drops()
        return True

    def _refused(self, spool: Spool | None, batch: SpoolBatch | _Batch, messages: list[str],
                 exc: Exception) -> None:
        """``batch`` was refused for its content: send it again as two halves (in its place,
        each under a new seq), or a single record cut down; drop a single record that
        cannot be mended (counted)."""
        reason = f"{type(exc).__name__}: {exc}"
        if len(messages) > 1:
            half = len(messages) // 2
            parts = [messages[:half], messages[half:]]
            diagnostics.debug("the broker refused a batch of %d records (%s); sending it in "
                              "two halves", len(messages), reason)
        else:
            mended = _mend(messages[0], exc)
            if mended is None:
                self._ack(spool, batch, delivered=False)
                self._last_error = f"the broker refused a record and it was dropped: {reason}"
                diagnostics.error("dropped a record the broker refused: %s", reason)
                return
            parts = [[mended]]
            diagnostics.warning("the broker refused a record of %d bytes (%s); sending it "
                                "cut to %d bytes", utf8_size(messages[0]), reason,
                                utf8_size(mended))
        self._replace(spool, batch, parts)

    def _replace(self, spool: Spool | None, batch: SpoolBatch | _Batch,
                 parts: list[list[str]]) -> None:
        """Put ``parts`` where ``batch`` is: at the head of the outbox, or atomically in the
        spool (see :meth:`Spool.replace`). The parts carry no producer id or seq yet."""
        with self._state_lock:
            if self._abandoned:
                return
            if spool is None:
                if self._outbox and self._outbox[0] is batch:
                    self._outbox.popleft()
                    self._outbox.extendleft(_Batch(batch.topic, p) for p in reversed(parts))
                return
            try:
                spool.replace(batch, parts)
                return
            except OSError as exc:
                error = exc
        # The spool holds the batch as it was (or every part): try again later.
        self._last_error = f"spool: {error!r}"
        diagnostics.error("cannot split a refused batch in the spool %s: %r", spool.path, error)
        self._back_off()

    def _ack(self, spool: Spool | None, batch: SpoolBatch | _Batch, delivered: bool) -> None:
        count = batch.count if isinstance(batch, SpoolBatch) else len(batch.messages)
        with self._state_lock:
            if self._abandoned:
                return
            if spool is not None:
                spool.done(batch)
            elif self._outbox and self._outbox[0] is batch:
                self._outbox.popleft()
        if delivered:
            self._sent += count
        else:
            self._count_drop(count)

    def _failed(self, exc: BaseException) -> None:
        self._last_error = f"{type(exc).__name__}: {exc}"
        if not self._down:
            diagnostics.warning("cannot reach the broker (%s); %s", self._last_error,
                                "spooling to " + self.spool_dir if self.overflow == "spool"
                                else "holding records in memory")
        self._back_off()

    def _back_off(self) -> None:
        """Retry the head batch later (backoff), spooling what waits in memory meanwhile."""
        self._retries += 1
        self._down = True
        now = time.monotonic()
        self._retry_at = now + self._retry_delay
        self._retry_delay = min(self._retry_delay * 2, _RETRY_MAX,
                                max(_RETRY_MIN, 4 * self.flush_interval))
        if self.overflow == "spool" and self._outbox:
            with self._state_lock:
                if not self._abandoned:
                    batches = list(self._outbox)
                    self._outbox.clear()
                    self._to_spool(batches)

    def _report_drops(self) -> None:
        with self._count_lock:
            lost, self._unreported = self._unreported, 0
        # Drops come from a full queue or spool (overflow) or from records the broker refused
        # for good: the last error says which.
        record = logging.LogRecord("lq_logging", logging.WARNING, __file__, 0,
                                   "LogQueueHandler dropped %d records (overflow=%s; last "
                                   "error: %s)", (lost, self.overflow, self._last_error),
                                   None, "_report_drops")
        record.lq_dropped = lost
        batches = self._encode_batches([self.prepare(record)])
        with self._state_lock:
            if self._abandoned:
                return
            if self._spooling():
                self._to_spool(batches)
            else:
                self._outbox.extend(batches)

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.topic!r} -> {', '.join(self.urls)} "
                f"({logging.getLevelName(self.level)})>")


def _mend(text: str, exc: Exception) -> str | None:
    """A version of the single record ``text`` the broker may take after refusing it with
    ``exc``, or ``None`` (then it is dropped)."""
    if isinstance(exc, UnicodeError):
        mended = escape_surrogates(text)
        return mended if mended != text else None
    if isinstance(exc, TooLarge):
        return _shrink(text)
    return None


def _shrink(text: str) -> str | None:
    """``text`` cut to about half its UTF-8 size with the truncation marker, or ``None``
    when that is below ``_MIN_RECORD_BYTES`` or no smaller. A JSON object stays valid JSON
    (its free text is cut, see ``record.shrink_record``); other text is cut at the end."""
    size = utf8_size(text)
    target = size // 2
    if target < _MIN_RECORD_BYTES:
        return None
    data: Any = None
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            data = None
    if isinstance(data, dict):
        shorter = shrink_record(data, target)
    else:
        shorter = fit_text(text, target)
    return shorter if utf8_size(shorter) < size else None


__all__ = ["LogQueueHandler", "OVERFLOW_POLICIES", "diagnostics"]
