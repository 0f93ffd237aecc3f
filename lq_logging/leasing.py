"""The worker of a named pipeline: leases, so runners sharing a name share the work.

Each batch is a lease (a contiguous range of offsets the broker hands to one holder at a
time): take it, write and flush every sink while a :class:`~sdk.leases.LeaseKeeper` extends
it, then ack. A runner that dies loses its leases when they expire, and another runner writes
them again (at least once; the SQL sink keys rows by (topic, offset), so it holds each once).
A range handed out more than ``max_deliveries`` times goes to the dead-letter file, then is
acked, so one bad record cannot stop the group.

One request per batch: once a lease is written, one request acks it and takes the next one
(the broker does both in one transaction), so the next lease is in hand when the sinks are
free again. The ack is answered before the next batch is written: a runner killed mid-batch
leaves only the lease in hand to be written again. (Sending it while the next batch is
written would hide its round trip too, at the price of a second batch written twice after
a kill -9.) Only when that request finds no work does the runner long-poll for a lease.
Without prefetch (``prefetch = false``), the ack goes alone and the next lease is asked for
after it: two requests per batch.

Stopping: the lease in hand is finished and acked, one taken with its ack released (handed
out again at once); a lease whose batch could not be written is released too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from lq_logging.pipeline import Pipeline, PipelineFailed
from lq_logging.sinks import Interrupted
from lq_logging.worker import TopicWorker, decode_entries
from sdk import Consumer, LogQueueError
from sdk.exceptions import LeaseLost
from sdk.leases import Lease, LeaseKeeper

#: While other holders' leases are outstanding, an --until-empty runner waits this long per try
#: for them to be acked or to expire (the broker re-checks expiries about once a second).
DRAIN_WAIT = 1.0


class LeaseWorker(TopicWorker):
    """Lease -> deliver -> ack (with the next lease) for one topic of one named pipeline.

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
        self._done: Lease | None = None  # written, not acked yet
        self._lost_said = False

    def _run(self) -> None:
        if not self._register():
            return
        self.progress.ready()
        lease: Lease | None = None
        try:
            while self.gate.keep_going(self.pipeline):
                if lease is None:
                    got = self._broker("lease", lambda: (self._take(None),))
                    if got is None:
                        return  # stopping
                    lease = got[0]
                if lease is None:
                    if self.until_empty and self._drained():
                        return
                    continue
                if not self._busy and not self._enter_busy():
                    return  # the lease is released below
                current, lease = lease, None
                self._work(current)
                if self.gate.stopping or not self.prefetch:  # still busy: before any exit
                    self._finish_done()
                else:
                    lease = self._ack_and_take()
                    if self.gate.stopping:
                        self._release(lease)
                        lease = None
                if lease is None:
                    # Idle until the next lease. With the next one in hand the worker stays
                    # busy: no leave and enter per batch, each waking the main thread.
                    self._leave_busy()
        finally:
            self.keeper.close()
            self._release(lease)
            self._finish_done(last=True)

    def _take(self, ack: Lease | None, wait: float | None = None, quiet: bool = False
              ) -> Lease | None:
        """A lease (long-polling ``wait``, by default the pipeline's), acking ``ack`` first. A
        lost ``ack`` is said (unless ``quiet``: an earlier try of this request may have acked
        it) and the lease asked for again without it."""
        ask = {"max": self.pipeline.config.batch, "lease_ms": self.lease_ms,
               "wait": self.wait_s if wait is None else wait}
        try:
            return self.consumer.lease(self.topic, ack=ack, **ask)
        except LeaseLost:
            if ack is None:
                raise
            if not quiet:
                self._said_lost(ack)
        return self.consumer.lease(self.topic, **ask)

    def _ack_and_take(self) -> Lease | None:
        """Ack the written lease and take the next one without waiting, in one request,
        retried while the broker is away (:meth:`_finish`)."""
        ack, tries = self._done, 0
        if ack is None:
            return None

        def call() -> Lease | None:
            nonlocal tries
            tries += 1
            return self._take(ack, 0.0, quiet=tries > 1)

        lease = self._finish(f"the ack of offsets {ack.first}-{ack.last}", call)
        self._done = None
        return lease

    def _work(self, lease: Lease) -> None:
        """Deliver the lease's records (or dead-letter them); the ack follows. A batch that
        could not be written is released."""
        entries = decode_entries(self.topic, lease.messages)
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

    def _finish_done(self, last: bool = False) -> None:
        """Ack the written lease on its own (stopping: no next lease wanted): retried while the
        broker is away (:meth:`_finish`), or, ``last`` (the worker is ending with a reason already),
        one try, a failure left to redelivery."""
        lease, self._done = self._done, None
        if lease is None:
            return
        if last:
            with contextlib.suppress(LogQueueError):
                self._ack(lease)
            return
        self._finish(f"the ack of offsets {lease.first}-{lease.last}", lambda: self._ack(lease))

    def _ack(self, lease: Lease) -> None:
        try:
            self.consumer.ack(lease)
        except LeaseLost:
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
