"""The sender: one daemon thread per handler and process that batches records and sends them.

Like the stdlib's ``QueueListener``, it is one loop on one thread, woken by an
:class:`~threading.Event` with a timeout, so a flush or a close wakes it at once. Each turn
it moves records from the caller's queue into the :class:`~lq_logging.backlog.Backlog`,
sends the backlog's head, and releases the ``flush()`` callers whose records are settled.
The request itself runs on a second daemon thread (:class:`Poster`) while the loop encodes
the next batch; one batch is in flight at a time, so order and seqs hold.

Batching. While the broker answers and the spool is empty, a record that wakes an idle
sender goes out within :data:`LINGER` (5 ms, with whatever else arrived meanwhile); records
that arrive during a send make the next batch (throughput), up to ``batch_size`` records or
4 MiB. While the broker is down, or the spool still holds batches, records go to the spool
in large batches: when ``batch_size`` records wait, when the oldest has waited
``flush_interval``, or on a flush or close. So a replay sends large batches too, and the
spool takes one write (and one fsync) per batch, not per record.

Backoff. A failed send is retried, with the same producer id and seq, after 50 ms, then
twice as long each time up to ``4 x flush_interval`` (at most 2 s); nothing behind it is
sent first. When the broker answers again the sender adopts spools that dead processes
left, and ships the count of lost records as one WARNING record of the logger
``lq_logging``.

Refused batches (413 ``too_large``, 400 ``bad_request``): see :mod:`lq_logging.refusals`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from lq_logging.backlog import Backlog, Batch, Head
from lq_logging.diagnostics import diagnostics
from lq_logging.mailbox import BUSY, Counters, FlushMark, Mailbox, restore
from lq_logging.record import escape_surrogates
from lq_logging.refusals import mend
from lq_logging.seqs import Seqs
from lq_logging.settings import Settings
from sdk import BadRequest, Client, LogQueueError, NotRegistered, Producer, TooLarge, UnknownId

MAX_BATCH_BYTES = 4 * 1024 * 1024
#: Seconds the sender, woken from idle by a record, waits for more before it sends.
LINGER = 0.005


class Poster:
    """Runs the sender's requests, one at a time, on a daemon thread of its own."""

    def __init__(self, idents: set[int]) -> None:
        self.idents = idents  # the threads whose own records the handler drops
        self._jobs: queue.SimpleQueue[tuple[Future, Callable[..., Any], tuple] | None] = (
            queue.SimpleQueue())
        self._thread: threading.Thread | None = None

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="lq-poster", daemon=True)
            self._thread.start()
            self.idents.add(self._thread.ident)  # type: ignore[arg-type]
        future: Future = Future()
        self._jobs.put((future, fn, args))
        return future

    def stop(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn, args = job
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to the sender, which sorts it
                future.set_exception(exc)


class Backoff:
    """When to retry a failed send: 50 ms, doubling, up to ``4 x flush_interval`` (2 s max)."""

    MIN, MAX = 0.05, 2.0

    def __init__(self, flush_interval: float) -> None:
        self.cap = min(self.MAX, max(self.MIN, 4 * flush_interval))
        self.delay = self.MIN
        self.down = False
        self.retry_at = 0.0

    def failed(self) -> None:
        self.down = True
        self.retry_at = time.monotonic() + self.delay
        self.delay = min(self.delay * 2, self.cap)

    def answered(self) -> bool:
        """The broker answered; returns whether it was down."""
        was, self.down, self.delay = self.down, False, self.MIN
        return was

    def wait(self) -> float:
        """Seconds until the next attempt is due (0 when it is)."""
        return max(0.0, self.retry_at - time.monotonic()) if self.down else 0.0


class Sender:
    """The loop (see the module docstring). ``format_record`` turns a record into its text."""

    def __init__(self, settings: Settings, box: Mailbox, counters: Counters, backlog: Backlog,
                 format_record: Callable[[logging.LogRecord], str]) -> None:
        self.settings = settings
        self.box = box
        self.counters = counters
        self.backlog = backlog
        self.format_record = format_record
        self.seqs = Seqs(self._producer)
        #: The sender's threads: records logged on them are dropped (never loop back).
        self.idents: set[int] = set()
        self.poster = Poster(self.idents)
        self.backoff = Backoff(settings.flush_interval)
        self.client: Client | None = None
        self.marks: list[FlushMark] = []
        self.marks_taken = 0
        self.stopping = False
        self.ident: int | None = None
        self.thread: threading.Thread | None = None
        self._spool_failing = False
        self._gather = max(1, min(settings.batch_size, settings.queue_size // 4))

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, name="lq-sender", daemon=True)
        self.thread.start()

    def _producer(self) -> Producer:
        if self.client is None:
            s = self.settings
            self.client = Client(list(s.urls), token=s.token, verify=s.verify,
                                 retries=len(s.urls) - 1, connect_timeout=min(3.05, s.timeout),
                                 read_timeout=max(s.timeout, 1.0), backoff=0.05,
                                 backoff_max=0.5)
        return self.client.producer()

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> None:
        self.ident = threading.get_ident()
        self.idents.add(self.ident)
        try:
            if self.settings.spooling:
                self._adopt()
            while not self.backlog.abandoned:
                moved = self.drain()
                sent = self.send_head()
                self._release_marks()
                if self.stopping and self._finished():
                    break
                if not (moved or sent):
                    self._idle()
        except Exception as exc:  # noqa: BLE001 - the sender must report, not vanish
            diagnostics.exception("the sender thread failed: %r", exc)
            self.counters.error(repr(exc))
        finally:
            self.box.wake_at = BUSY
            if not self.backlog.abandoned:
                self.leave()

    def _to_spool(self) -> bool:
        """New batches go to the spool (not the outbox) now."""
        return (self.settings.spooling and self.backlog.spool_usable()
                and (self.backoff.down or self.backlog.own_spooled()))

    def _due(self) -> bool:
        """A batch for the spool is ready: full, old enough, or wanted by a flush or close."""
        queue = self.box.queue
        if (len(queue) >= self._gather or self.stopping
                or self.box.flushes > self.marks_taken):
            return True
        first = queue[0] if queue else None
        return type(first) is dict and (
            time.time() - first["created"] >= self.settings.flush_interval)

    def drain(self, room: int = 1) -> bool:
        """Move records from the queue into the backlog; returns whether any moved. In
        memory, the outbox takes batches up to ``room``; the queue holds the rest."""
        moved = False
        while True:
            to_spool = self._to_spool()
            if to_spool and self.backlog.spool_error:
                self._add([], True)  # a spool that failed is tried again: the outbox first
                to_spool = self.backlog.spool_error is None
            if not to_spool and len(self.backlog.outbox) >= room:
                return moved
            if to_spool and not self._due():
                return moved
            records, marked = self._take()
            if records:
                moved = True
                self._add(self.encode(records), to_spool)
            if marked or not records or not to_spool:
                return moved

    def _add(self, batches: list[Batch], to_spool: bool) -> None:
        lost = self.backlog.add(batches, to_spool, self.seqs.at_write)
        error = self.backlog.spool_error
        if lost:
            self.counters.drop(lost, "the spool is full (spool_max_bytes)")
        if error and to_spool:
            if error != self.counters.last_error and not self._spool_failing:
                diagnostics.error("cannot write the spool in %s (%s); holding records in "
                                  "memory", self.settings.spool_dir, error)
            self.counters.error(error, "spool")
        elif not error and self._spool_failing:
            self.counters.clear("spool")
            diagnostics.info("the spool in %s takes writes again", self.settings.spool_dir)
        self._spool_failing = bool(error)
        if self.box.blocked:
            with self.box.space:
                self.box.space.notify_all()

    def _take(self) -> tuple[list[logging.LogRecord], bool]:
        """Up to ``batch_size`` records from the queue; stops at a flush mark."""
        queue = self.box.queue
        records: list[logging.LogRecord] = []
        limit = self.settings.batch_size
        while queue and len(records) < limit:
            item = queue.popleft()
            if type(item) is dict:
                records.append(restore(item))
            elif isinstance(item, FlushMark):
                self.marks.append(item)
                self.marks_taken += 1
                return records, True
        return records, False

    def encode(self, records: list[logging.LogRecord]) -> list[Batch]:
        """Records as batches of text (at most 4 MiB each); a record that cannot be formatted
        is dropped and counted."""
        topic, out = self.settings.topic, []
        messages: list[str] = []
        size = 0
        for record in records:
            try:
                text = self.format_record(record)
            except Exception as exc:  # noqa: BLE001 - one bad record must not stop the rest
                self.counters.drop(1, f"cannot format a record: {exc!r}")
                continue
            if not text.isascii():
                text = escape_surrogates(text)
            if messages and size + len(text) > MAX_BATCH_BYTES // 4:
                out.append(Batch(topic, messages))
                messages, size = [], 0
            messages.append(text)
            size += len(text)
        if messages:
            out.append(Batch(topic, messages))
        return out

    def _idle(self) -> None:
        """Sleep until enough records arrive, a retry or a batch is due, or
        ``flush_interval`` passes."""
        box = self.box
        box.wake.clear()
        timeout = self.settings.flush_interval
        if self._to_spool():
            box.wake_at = self._gather - 1
            queue = box.queue
            if queue and type(queue[0]) is dict:
                age = time.time() - queue[0]["created"]
                timeout = min(timeout, max(0.0, self.settings.flush_interval - age))
        elif self.backlog.outbox:
            box.wake_at = BUSY  # waiting for the broker: records wait in the queue
        else:
            box.wake_at = 0
        if self.backoff.down:
            timeout = min(timeout, self.backoff.wait())
        lingering = box.wake_at == 0
        if len(box.queue) <= box.wake_at and timeout > 0 and box.wake.wait(timeout):
            box.wake_at = BUSY
            if lingering and not self.stopping and box.flushes == self.marks_taken:
                # Woken by a record: let the rest of a burst join it (Kafka's linger.ms),
                # rather than one request, and one GIL hand-over, per few records.
                time.sleep(LINGER)
        box.wake_at = BUSY

    def _finished(self) -> bool:
        """While stopping: done once nothing is left, or the broker failed (the rest is
        spooled or dropped by :meth:`leave`)."""
        if self.backoff.down:
            return True
        queued = any(type(r) is dict for r in self.box.queue)
        return not queued and self.backlog.empty()

    def _release_marks(self) -> None:
        """Wake flush() callers once what they waited for is sent (or spooled while the
        broker is down)."""
        if not self.marks or self.backlog.outbox:
            return
        if not self.backoff.down and self.backlog.spooled():
            return
        marks, self.marks = self.marks, []
        for mark in marks:
            mark.event.set()

    # -- sending --------------------------------------------------------------------------

    def send_head(self) -> bool:
        """Send the oldest batch if a send is due; returns whether one was settled."""
        if self.backoff.down and self.backoff.wait() > 0 and not self.stopping:
            return False
        head = self.backlog.head()
        if head is None:
            return False
        try:
            messages = self.backlog.read(head)
        except (OSError, ValueError) as exc:
            self.counters.drop(self.backlog.ack(head), f"an unreadable spooled batch: {exc!r}")
            diagnostics.error("dropped an unreadable spooled batch: %r", exc)
            return True
        batch = head.batch
        try:
            if batch.seq is None and not self._assign(head):
                return False
            self._post(batch.topic, messages, batch.producer_id, batch.seq)
        except (NotRegistered, UnknownId) as exc:
            # The broker does not know this producer id (e.g. a new database): send the
            # batch again under a fresh registration.
            self._failed(exc)
            self.seqs.forget()
            self.backlog.forget_ids(head)
            return False
        except (TooLarge, BadRequest, UnicodeError) as exc:
            # Refused for what it holds (UnicodeError: the SDK cannot even encode it, e.g. a
            # lone surrogate in a spool from an older version): nothing was appended and the
            # seq stays unused. Never retried as is: split, cut down, or dropped.
            self._refused(head, messages, exc)
            return True
        except (LogQueueError, OSError) as exc:
            self._failed(exc)
            return False
        self._delivered(head)
        return True

    def _post(self, topic: str, messages: list[str], producer_id: int | None,
              seq: int | None) -> None:
        """Send one batch on the poster thread; meanwhile encode the next one (so the
        broker's work and ours overlap), then raise what the send raised."""
        future = self.poster.submit(self.seqs.send, topic, messages, producer_id, seq)
        if not self.backoff.down:  # (while down, a drain could move the outbox to the spool)
            self.drain(room=2)
        future.result()

    def _assign(self, head: Head) -> bool:
        topic = head.batch.topic
        pid, seq = self.seqs.at_send(topic)
        if self.settings.spooling and not self.seqs.ready(topic):
            self.seqs.warm(topic)  # from now on, spooled batches carry their seq
        try:
            return self.backlog.assign(head, pid, seq)
        except OSError as exc:
            # Not durable, so not sent yet (a full disk, and no r line: see spool.py).
            self.counters.error(f"spool: cannot record a seq: {exc!r}", "spool")
            self._back_off()
            return False

    def _delivered(self, head: Head) -> None:
        self.counters.sent += self.backlog.ack(head)
        self.counters.clear("broker")
        if self.backoff.answered():
            diagnostics.info("the broker answers again; delivering the backlog")
            if self.settings.spooling:
                self._adopt()
        if self.counters.unreported:
            self._report_drops()

    def _refused(self, head: Head, messages: list[str], exc: Exception) -> None:
        """Send ``head`` again as two halves (in its place, each under a new seq), or a
        single record cut down; drop a single record that cannot be mended (counted)."""
        parts = mend(messages, exc)
        if parts is None:
            reason = f"{type(exc).__name__}: {exc}"
            self.counters.drop(self.backlog.ack(head),
                               f"the broker refused a record and it was dropped: {reason}")
            diagnostics.error("dropped a record the broker refused: %s", reason)
            return
        try:
            self.backlog.replace(head, parts)
        except OSError as exc2:
            # The spool holds the batch as it was: try again later.
            self.counters.error(f"spool: {exc2!r}", "spool")
            diagnostics.error("cannot split a refused batch in the spool: %r", exc2)
            self._back_off()

    def _failed(self, exc: BaseException) -> None:
        self.counters.error(f"{type(exc).__name__}: {exc}", "broker")
        if not self.backoff.down:
            diagnostics.warning("cannot reach the broker (%s); %s", self.counters.last_error,
                                "spooling to " + self.settings.spool_dir
                                if self.settings.spooling else "holding records in memory")
        self._back_off()

    def _back_off(self) -> None:
        """Retry the head later; meanwhile what waits in memory goes to the spool."""
        self.counters.retries += 1
        self.backoff.failed()
        if self._to_spool() and self.backlog.outbox:
            self._add([], True)

    def _adopt(self) -> None:
        found = self.backlog.adopt()
        if found:
            diagnostics.info("taking over %d orphaned spool file(s) with %d records",
                             len(found), sum(s.live_records for s in found))

    def _report_drops(self) -> None:
        lost, reason = self.counters.take_unreported()
        # Drops come from a full queue or spool (overflow) or from records the broker refused
        # for good: the error current when they were dropped says which.
        record = logging.LogRecord("lq_logging", logging.WARNING, __file__, 0,
                                   "LogQueueHandler dropped %d records (overflow=%s; last "
                                   "error: %s)", (lost, self.settings.overflow, reason),
                                   None, "_report_drops")
        record.lq_dropped = lost
        self._add(self.encode([record]), self._to_spool())

    # -- the end --------------------------------------------------------------------------

    def leave(self) -> None:
        """Keep what is left (queue and outbox: spooled, or counted as dropped), release the
        spool files, wake every flush() caller. Runs once, on the sender or the closing
        thread; a sender still running then sees the backlog abandoned and stops."""
        records = [restore(r) for r in self.box.queue if type(r) is dict]
        self.box.queue.clear()
        batches = self.encode(records) if records else []
        lost = self.backlog.abandon(batches, keep=self.settings.spooling)
        if lost:
            self.counters.drop(lost, self.backlog.spool_error)
        lost, reason = self.counters.take_unreported()
        if lost:
            diagnostics.warning("%d records were dropped (overflow=%s; last error: %s)",
                                lost, self.settings.overflow, reason)
        for mark in self.marks:
            mark.event.set()
        self.poster.stop()
        if self.client is not None:
            self.client.close()


__all__ = ["Backoff", "Sender"]
