"""The runner's two-stage stop, shared by the runner's main thread and its workers.

A worker is *idle* while it waits in a fetch and *busy* from the moment a batch is in hand
until it is committed (or the pipeline failed). The first stop request sets :attr:`Gate.stopping`
and the stop event: idle workers are abandoned (they wrote nothing, so nothing is lost), busy
ones finish their batch and commit, and every wait between retries (the broker's backoff, a
sink's retry, a sink's own :func:`~lq_logging.sinks.pause`) ends at once. The main thread
returns from :meth:`Gate.settle` as soon as no worker is busy. A second signal is the runner's
business (it exits at once).

Everything here happens under one condition (an RLock: a signal handler may take it while the
main thread holds it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Protocol

from lq_logging.pipeline import Pipeline


class _Thread(Protocol):
    def is_alive(self) -> bool: ...


class Gate:
    """Who is busy, whether a stop was asked for, which pipeline failed or was interrupted.

    Args:
        say: one diagnostic line (may be called from a signal handler).
    """

    def __init__(self, say: Callable[[str], None]) -> None:
        self._cond = threading.Condition()
        self._say = say
        #: Set by a stop request; every wait between retries (runner and sinks) waits on it.
        self.event = threading.Event()
        self.stopping = False
        self.busy = 0

    def keep_going(self, pipeline: Pipeline) -> bool:
        """May a worker of ``pipeline`` start another fetch?"""
        with self._cond:
            return not self.stopping and pipeline.failed is None

    def enter_busy(self, pipeline: Pipeline) -> bool:
        """A batch is in hand: count the worker busy, unless stopping (then abandon it)."""
        with self._cond:
            if self.stopping or pipeline.failed is not None:
                return False
            self.busy += 1
            return True

    def leave_busy(self) -> None:
        with self._cond:
            self.busy -= 1
            self._cond.notify_all()

    def wait(self, seconds: float) -> bool:
        """Sleep that a stop request cuts short; True when stopping."""
        return self.event.wait(seconds)

    # fail() and interrupt() run on a worker before it leaves busy, so once stopping the main
    # thread sees the outcome, and its message, before it exits.
    def fail(self, pipeline: Pipeline, message: str) -> None:
        with self._cond:
            first = pipeline.failed is None
            if first:
                pipeline.failed = message
            self._cond.notify_all()
        if first:
            self._say(f"error: pipeline {pipeline.name!r} stopped: {message}")

    def interrupt(self, pipeline: Pipeline, message: str) -> None:
        """A stop request cut ``pipeline`` short with a batch left uncommitted."""
        with self._cond:
            pipeline.interrupted = message
            self._cond.notify_all()
        self._say(f"pipeline {pipeline.name!r}: {message}")

    def request_stop(self, reason: str = "stop requested") -> None:
        with self._cond:
            self.stopping = True
            self.event.set()
            self._cond.notify_all()
        busy = self.busy
        self._say(f"{reason}: " + (f"finishing {busy} batch(es), then exiting"
                                   if busy else "exiting") + " (again to exit at once)")

    def settle(self, workers: Sequence[_Thread], pipelines: Sequence[Pipeline],
               tick: Callable[[], None]) -> None:
        """Main thread: return once every worker has ended, or once none is busy and either a
        stop was asked for or every pipeline failed. ``tick`` runs about every 0.2 s."""
        with self._cond:
            while True:
                if not any(w.is_alive() for w in workers):
                    return
                all_failed = all(p.failed for p in pipelines)
                if self.busy == 0 and (self.stopping or all_failed):
                    return
                self._cond.wait(0.2)
                tick()


__all__ = ["Gate"]
