"""The worker of a named pipeline: leases, so runners sharing a name share the work.

Each batch is a lease (a contiguous range of offsets the broker hands to one holder at a
time): take it, write and flush every sink while a :class:`~sdk.leases.LeaseKeeper` extends
it, then ack. A runner that dies loses its leases when they expire, and another runner writes
them again (at least once; the SQL sink keys rows by (topic, offset), so it holds each once).
A range handed out more than ``max_deliveries`` times goes to the dead-letter file, then is
acked, so one bad record cannot stop the group.

One request per batch, off the sinks' path: the ack of a written lease rides on the next
lease request (the broker acks it in the hand-out's transaction), and with prefetch that
request (ack of N-1, lease N+1) runs on a short-lived thread while lease N is written. So a
runner always has its next lease in hand when its sinks finish, and a slow remote sink is
the only thing it waits on. A prefetch that failed leaves its ack to be sent on its own.

Stopping: the lease in hand is finished and acked, the prefetched one released (handed out
again at once); a lease whose batch could not be written is released too.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from lq_logging.pipeline import Pipeline, PipelineFailed
from lq_logging.sinks import Entry, Interrupted
from lq_logging.worker import TopicWorker
from sdk import Consumer, LogQueueError
from sdk.exceptions import LeaseLost
from sdk.leases import Lease, LeaseKeeper

#: While other holders' leases are outstanding, an --until-empty runner waits this long per try
#: for them to be acked or to expire (the broker re-checks expiries about once a second).
DRAIN_WAIT = 1.0


class _Ahead:
    """A lease asked for on a short-lived thread, and the written lease its request acks."""

    def __init__(self, ack: Lease | None, take: Callable[[], Lease | None], name: str) -> None:
        self.ack = ack
        self.future: Future[Lease | None] = Future()
        threading.Thread(target=self._run, args=(take,), name=name, daemon=True).start()

    def _run(self, take: Callable[[], Lease | None]) -> None:
        try:
            self.future.set_result(take())
        except BaseException as exc:  # noqa: BLE001 - handed to the worker
            self.future.set_exception(exc)


class LeaseWorker(TopicWorker):
    """Lease -> deliver -> ack for one topic of one named pipeline.

    ``until_empty``: end once no lease is handed out and no lease of the name is outstanding
    (another holder's, even a dead one's until it expires, is waited for).
    """

    def __init__(self, pipeline: Pipeline, topic: str, consumer: Consumer, *,
                 lease_ms: int, max_deliveries: int, say: Callable[[str], None],
                 **options: Any) -> None:
        super().__init__(pipeline, topic, consumer, **options)
        self.say = say
        self.lease_ms = lease_ms
        self.max_deliveries = max_deliveries
        self.keeper = LeaseKeeper(consumer, lease_ms)
        self._done: Lease | None = None  # written, its ack not sent yet
        self._lost_said = False

    def _take(self, ack: Lease | None, wait: float, quiet: bool = False) -> Lease | None:
        """The next lease, acking ``ack`` in the same request. A lost ``ack`` is said (unless
        ``quiet``: an earlier try of this request may have acked it) and the lease asked for
        again without it."""
        try:
            return self.consumer.lease(self.topic, max=self.pipeline.config.batch, wait=wait,
                                       lease_ms=self.lease_ms, ack=ack)
        except LeaseLost:
            if ack is None:
                raise
            if not quiet:
                self._said_lost(ack)
        return self.consumer.lease(self.topic, max=self.pipeline.config.batch, wait=wait,
                                   lease_ms=self.lease_ms)

    def _next(self) -> tuple[Lease | None] | None:
        """A lease (long-polling), carrying the pending ack; None when stopping."""
        ack, tries = self._done, 0

        def call() -> tuple[Lease | None]:
            nonlocal tries
            tries += 1
            return (self._take(ack, self.wait_s, quiet=tries > 1),)

        got = self._broker("lease", call)
        if got is not None:
            self._done = None  # acked (or lost) with it
        return got

    def _run(self) -> None:
        if not self._register():
            return
        self.progress.ready()
        ahead: _Ahead | None = None
        try:
            while self.gate.keep_going(self.pipeline):
                lease = self._collect(ahead)
                ahead = None
                if lease is None:
                    got = self._next()
                    if got is None:
                        return  # stopping
                    lease = got[0]
                if lease is None:
                    if self.until_empty and self._drained():
                        return
                    continue
                if not self._enter_busy():
                    self._release(lease)
                    return
                if self.prefetch:
                    ahead, self._done = self._prefetch(self._done), None
                self._work(lease)
                if self.gate.stopping:  # while still busy: before the exit
                    self._release(self._collect(ahead))
                    ahead = None
                    self._finish_done()
                self._leave_busy()
        finally:
            self.keeper.close()
            self._release(self._collect(ahead, last=True))
            self._finish_done(last=True)

    def _work(self, lease: Lease) -> None:
        """Deliver the lease's records (or dead-letter them); its ack is then pending. A batch
        that could not be written is released."""
        entries = [Entry.decode(self.topic, m.offset, m.value, m.ts) for m in lease.messages]
        self.keeper.hold(lease)
        try:
            if lease.deliveries > self.max_deliveries:
                self.pipeline.give_up(self.topic, entries,
                                      f"handed out {lease.deliveries} times (max_deliveries "
                                      f"{self.max_deliveries})")
            else:
                self.pipeline.deliver(self.topic, entries)
        except (PipelineFailed, Interrupted):
            self.keeper.drop(lease)
            self._release(lease)
            raise
        self.keeper.drop(lease)
        self._done = lease
        self.progress.delivered(len(entries))

    def _prefetch(self, ack: Lease | None) -> _Ahead:
        """The next lease without waiting (acking ``ack``), while this one is written."""
        return _Ahead(ack, lambda: self._take(ack, 0.0), f"{self.name}:prefetch")

    def _collect(self, ahead: _Ahead | None, last: bool = False) -> Lease | None:
        """The prefetched lease, or None (none was asked for, or the request failed: then its
        ack is sent on its own). ``last``: the worker is ending (failed or stopped): one try."""
        if ahead is None:
            return None
        try:
            return ahead.future.result()
        except LogQueueError:
            if ahead.ack is not None:
                self._finish_ack(ahead.ack, last)
            return None

    def _finish_done(self, last: bool = False) -> None:
        done, self._done = self._done, None
        if done is not None:
            self._finish_ack(done, last)

    def _finish_ack(self, lease: Lease, last: bool) -> None:
        """Ack on its own, retried while the broker is away (:meth:`_finish`); ``last``: one
        try, a failure left to redelivery (the worker is already ending with a reason)."""
        if last:
            with contextlib.suppress(LogQueueError):
                self._ack(lease, quiet=True)
            return
        self._finish(f"the ack of offsets {lease.first}-{lease.last}",
                     lambda: self._ack(lease, quiet=True))

    def _ack(self, lease: Lease, quiet: bool = False) -> None:
        try:
            self.consumer.ack(lease)
        except LeaseLost:
            if not quiet:
                self._said_lost(lease)

    def _said_lost(self, lease: Lease) -> None:
        if not self._lost_said:  # once per worker: a slow sink would say it every batch
            self._lost_said = True
            self.say(f"pipeline {self.pipeline.name!r}: a lease of topic {self.topic!r} "
                     f"(offsets {lease.first}-{lease.last}) expired before its ack and "
                     "went to another holder, which writes it again; consider a longer "
                     "lease")

    def _drained(self) -> bool:
        """Whether no lease of the name is outstanding. While some are (other holders',
        perhaps dead ones'), lease requests long-poll, until they are acked or expire."""
        size = self._broker("size", lambda: self.consumer.size(self.topic))
        if size:
            self.wait_s = DRAIN_WAIT
        return size == 0

    def _release(self, lease: Lease | None) -> None:
        """Give a lease back (one try: unreleased, it is handed out again once it expires)."""
        if lease is None:
            return
        with contextlib.suppress(LogQueueError):
            self.consumer.release(lease)


__all__ = ["LeaseWorker"]
