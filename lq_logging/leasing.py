"""The worker of a named pipeline: leases, so runners sharing a name share the work.

Each batch is a lease (a contiguous range of offsets the broker hands to one holder at a
time): take it, write and flush every sink while a :class:`~sdk.leases.LeaseKeeper` extends
it, then ack. A runner that dies loses its leases when they expire, and another runner writes
them again (at least once; the SQL sink keys rows by (topic, offset), so it holds each once).
A range handed out more than ``max_deliveries`` times goes to the dead-letter file, then is
acked, so one bad record cannot stop the group.

Prefetch takes the next lease (without waiting) while the one in hand is written. Stopping:
the lease in hand is finished and acked, the prefetched one released (handed out again at
once); a lease whose batch could not be written is released too.
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
        self._lost_said = False

    def _lease(self, wait: float) -> Lease | None:
        return self.consumer.lease(self.topic, max=self.pipeline.config.batch, wait=wait,
                                   lease_ms=self.lease_ms)

    def _run(self) -> None:
        if not self._register():
            return
        self.progress.ready()
        ahead: Future[Lease | None] | None = None
        try:
            while self.gate.keep_going(self.pipeline):
                lease = _result(ahead)
                ahead = None
                if lease is None:
                    got = self._broker("lease", lambda: (self._lease(self.wait_s),))
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
                ahead = self._prefetch_lease() if self.prefetch else None
                self._work(lease)
                if self.gate.stopping:
                    self._release(_result(ahead))  # while still busy: before the exit
                    ahead = None
                self._leave_busy()
        finally:
            self.keeper.close()
            self._release(_result(ahead, timeout=1.0))

    def _work(self, lease: Lease) -> None:
        """Deliver the lease's records (or dead-letter them), then ack; a batch that could not
        be written is released."""
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
        self._finish(f"the ack of offsets {lease.first}-{lease.last}", lambda: self._ack(lease))
        self.progress.delivered(len(entries))

    def _ack(self, lease: Lease) -> None:
        try:
            self.consumer.ack(lease)
        except LeaseLost:
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

    def _prefetch_lease(self) -> Future[Lease | None]:
        """The next lease, without waiting, on a daemon thread (a failure leaves the next
        regular lease to back off and report)."""
        future: Future[Lease | None] = Future()

        def take() -> None:
            try:
                future.set_result(self._lease(0.0))
            except BaseException as exc:  # noqa: BLE001 - handed to the worker
                future.set_exception(exc)

        threading.Thread(target=take, name=f"{self.name}:prefetch", daemon=True).start()
        return future

    def _release(self, lease: Lease | None) -> None:
        """Give a lease back (one try: unreleased, it is handed out again once it expires)."""
        if lease is None:
            return
        with contextlib.suppress(LogQueueError):
            self.consumer.release(lease)


def _result(future: Future[Lease | None] | None, timeout: float | None = None) -> Lease | None:
    """The prefetched lease, or None (none prefetched, or the prefetch failed)."""
    if future is None:
        return None
    try:
        return future.result(timeout)
    except (LogQueueError, TimeoutError):
        return None


__all__ = ["LeaseWorker"]
