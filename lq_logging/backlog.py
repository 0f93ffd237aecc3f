"""The backlog: every batch not yet acknowledged, in the order it must be delivered.

Order: the spools this process adopted (left by dead processes, oldest first), then its own
spool, then the in-memory outbox. :meth:`Backlog.head` is the next batch to send;
:meth:`Backlog.ack` settles it, :meth:`Backlog.replace` swaps it for its parts (a batch the
broker refused). Nothing behind the head is sent before it, so order holds across memory,
disk and restarts.

No loss. Once a batch is in the spool it leaves only by an ack (or by the spool's bound,
counted). New batches join the spool while the broker is down or the spool still holds
live batches, so nothing overtakes what waits on disk. When the spool cannot be written
(a full disk, a read-only directory), batches stay in memory behind the spooled ones, and
the spool is tried again :data:`SPOOL_RETRY` seconds later; the outbox then goes to disk
first, so the order holds there too. Memory is bounded by the caller's queue: the sender
moves records out of it only while the outbox has room (see ``sender.py``).

No duplicate. A spooled batch carries its producer id and seq in the spool before it is
sent: given when it was written (the ``b`` line), or recorded by :meth:`Backlog.assign`
(an ``a`` line, synced) just before its first send. See ``seqs.py`` for where seqs come
from, and ``spool.py`` for the file's crash rules.

Threads: the sender thread drives it; ``stats()`` and ``close()`` on other threads take the
same lock. After :meth:`abandon` (a close that gave up waiting) every call is a no-op, so
a sender still blocked in a request cannot touch files that are no longer its own.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from lq_logging.spool import Spool, SpoolBatch, adopt_orphans

#: Seconds before a spool that failed to write is tried again.
SPOOL_RETRY = 1.0

#: Gives a (producer id, seq) to a batch as it is written to the spool, or None.
WriteSeq = Callable[[str], "tuple[int, int] | None"]


@dataclass(slots=True)
class Batch:
    """A batch in memory: encoded messages, and its producer id and seq once it has them."""

    topic: str
    messages: list[str]
    producer_id: int | None = None
    seq: int | None = None

    @property
    def count(self) -> int:
        return len(self.messages)


@dataclass(slots=True, frozen=True)
class Head:
    """The next batch to send, and the spool that holds it (``None``: the outbox)."""

    spool: Spool | None
    batch: SpoolBatch | Batch


class Backlog:
    """See the module docstring. ``directory``: where spool files live (``None``: memory only)."""

    def __init__(self, directory: str | None, *, fsync: bool = True,
                 max_bytes: int = 256 * 1024 * 1024) -> None:
        self.directory = directory
        self.fsync = fsync
        self.max_bytes = max_bytes
        self.lock = threading.Lock()
        self.adopted: deque[Spool] = deque()
        self.own: Spool | None = None
        self.outbox: deque[Batch] = deque()
        self.abandoned = False
        #: The last spool write error, until a spool write succeeds again.
        self.spool_error: str | None = None
        self._retry_spool_at = 0.0

    # -- what is where ----------------------------------------------------------------------

    def spool_usable(self) -> bool:
        return self.directory is not None and (self.spool_error is None
                                               or time.monotonic() >= self._retry_spool_at)

    def own_spooled(self) -> bool:
        """Our spool holds live batches: new batches must go behind them."""
        return self.own is not None and bool(self.own.batches)

    def spooled(self) -> bool:
        return self.own_spooled() or any(s.batches for s in self.adopted)

    def empty(self) -> bool:
        return not self.outbox and not self.spooled()

    def counts(self) -> tuple[int, int]:
        """(records in the outbox, records in spools)."""
        with self.lock:
            memory = sum(b.count for b in self.outbox)
            disk = sum(s.live_records for s in (self.own, *self.adopted) if s is not None)
        return memory, disk

    # -- adding -------------------------------------------------------------------------

    def add(self, batches: list[Batch], to_spool: bool, write_seq: WriteSeq) -> int:
        """Queue ``batches`` behind everything else: into the spool (``to_spool``, with the
        outbox ahead of them), else into the outbox. Returns the records the spool's bound
        dropped. Raises nothing: a spool that fails leaves the batches in memory."""
        with self.lock:
            if self.abandoned:
                return 0
            if to_spool and self.spool_usable():
                pending = deque(self.outbox)
                pending.extend(batches)
                self.outbox.clear()
                try:
                    return self._write(pending, write_seq)
                finally:
                    self.outbox.extend(pending)  # what could not be written, in order
            self.outbox.extend(batches)
            return 0

    def _write(self, pending: deque[Batch], write_seq: WriteSeq) -> int:
        try:
            spool = self._own_spool()
            while pending:
                batch = pending[0]
                if batch.seq is None:
                    ids = write_seq(batch.topic)
                    if ids is not None:
                        batch.producer_id, batch.seq = ids
                spool.append(batch.topic, batch.messages, batch.producer_id, batch.seq,
                             sync=False)
                pending.popleft()
            spool.sync()
        except OSError as exc:
            self.spool_error = f"spool: {exc!r}"
            self._retry_spool_at = time.monotonic() + SPOOL_RETRY
            return 0
        self.spool_error = None
        return spool.trim(self.max_bytes)

    def _own_spool(self) -> Spool:
        if self.own is None or self.own.closed:
            assert self.directory is not None
            self.own = Spool.create(self.directory, fsync=self.fsync)
        return self.own

    def adopt(self) -> list[Spool]:
        """Take over the spool files nobody holds; they are delivered first."""
        if self.directory is None:
            return []
        exclude = [self.own.path] if self.own is not None else []
        found = adopt_orphans(self.directory, exclude, fsync=self.fsync)
        with self.lock:
            if self.abandoned:
                for spool in found:
                    spool.close()
                return []
            self.adopted.extend(found)
        return found

    # -- the head -----------------------------------------------------------------------

    def head(self) -> Head | None:
        """The oldest undelivered batch; adopted spools that are done are closed here."""
        with self.lock:
            while self.adopted:
                spool = self.adopted[0]
                if spool.batches:
                    return Head(spool, spool.batches[0])
                spool.close()
                self.adopted.popleft()
            if self.own is not None and self.own.batches:
                return Head(self.own, self.own.batches[0])
            if self.outbox:
                return Head(None, self.outbox[0])
            return None

    def read(self, head: Head) -> list[str]:
        """The messages of ``head``; raises OSError or ValueError for a damaged spool entry."""
        if head.spool is None:
            return head.batch.messages  # type: ignore[union-attr]
        with self.lock:
            return head.spool.read(head.batch)  # type: ignore[arg-type]

    def assign(self, head: Head, producer_id: int, seq: int) -> bool:
        """Give ``head`` its producer id and seq, durably (in the spool) before it is sent.
        False once abandoned; raises OSError when the spool cannot record it."""
        with self.lock:
            if self.abandoned:
                return False
            if head.spool is not None:
                head.spool.assign(head.batch, producer_id, seq)  # type: ignore[arg-type]
            else:
                head.batch.producer_id, head.batch.seq = producer_id, seq
            return True

    def forget_ids(self, head: Head) -> None:
        """The broker does not know ``head``'s producer id: it gets a new one at its next
        send (recorded then; the spool keeps the old one until that is written)."""
        with self.lock:
            if not self.abandoned:
                head.batch.producer_id, head.batch.seq = None, None

    def ack(self, head: Head) -> int:
        """``head`` is settled (delivered, or dropped for good); returns its record count."""
        with self.lock:
            if self.abandoned:
                return 0
            if head.spool is not None:
                head.spool.done(head.batch)  # type: ignore[arg-type]
            elif self.outbox and self.outbox[0] is head.batch:
                self.outbox.popleft()
            return head.batch.count

    def replace(self, head: Head, parts: list[list[str]]) -> None:
        """Put ``parts`` where ``head`` is, each without a producer id or seq: atomically in
        the spool (see :meth:`Spool.replace`; raises OSError, leaving ``head`` as it was)."""
        with self.lock:
            if self.abandoned:
                return
            if head.spool is not None:
                head.spool.replace(head.batch, parts)  # type: ignore[arg-type]
            elif self.outbox and self.outbox[0] is head.batch:
                self.outbox.popleft()
                self.outbox.extendleft(Batch(head.batch.topic, p) for p in reversed(parts))

    # -- the end ------------------------------------------------------------------------

    def abandon(self, batches: Iterable[Batch], keep: bool) -> int:
        """On the closing thread: spool the outbox and ``batches`` when ``keep`` (else drop
        them), release every spool file, and make further calls no-ops. Returns the records
        lost."""
        with self.lock:
            if self.abandoned:
                return sum(b.count for b in batches)
            pending = deque(self.outbox)
            pending.extend(batches)
            self.outbox.clear()
            if keep and pending and self.directory is not None:
                self._write(pending, lambda topic: None)
            lost = sum(b.count for b in pending)
            self.abandoned = True
            for spool in (self.own, *self.adopted):
                if spool is not None:
                    spool.close()
            self.adopted.clear()
            return lost

    def after_fork(self) -> None:
        """In a forked child: drop the parent's files without unlocking them."""
        for spool in (self.own, *self.adopted):
            if spool is not None:
                spool.abandon()
        self.own = None
        self.adopted.clear()
        self.outbox.clear()
        self.lock = threading.Lock()


__all__ = ["SPOOL_RETRY", "Backlog", "Batch", "Head"]
