"""Group commit: concurrent appends to one topic in one process share one transaction.

Appends to a topic serialize on its counter row anyway, so instead of queueing on a lock each
request joins a pending group. The first request to arrive while nobody is writing leads: it
takes every pending request (itself included), writes them in one transaction, hands each its
outcome, then promotes the oldest newcomer to lead the next group. If a group fails, its
members are retried one by one so one bad request never fails the others, except when the
database itself failed (a commit's outcome may then be unknown, and a retry could append twice).

A member waits a bounded time: one whose group has not answered within `timeout` gives up
with 503 `unavailable` (whatever its leader is blocked on; the leader's own database work
has the same bound, store/watchdog.py). Its outcome is then unknown to it: the client's
retry with the same seq is what makes that safe.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from .errors import Unavailable

Req = TypeVar("Req")
Res = TypeVar("Res")

MAX_GROUP_MESSAGES = 20_000


class _Waiter(Generic[Req, Res]):
    __slots__ = ("request", "size", "done", "promoted", "result", "error")

    def __init__(self, request: Req, size: int) -> None:
        self.request = request
        self.size = size
        self.done = threading.Event()
        self.promoted = False
        self.result: Res | None = None
        self.error: BaseException | None = None


class GroupCommit(Generic[Req, Res]):
    """Batches `submit` calls into calls of `write_group(requests) -> results` (same order)."""

    def __init__(self, write_group: Callable[[Sequence[Req]], list[Res]],
                 shared_errors: tuple[type[BaseException], ...] = (),
                 timeout: float | None = None) -> None:
        """`shared_errors`: failures every member shares (the database is down, or a commit
        whose outcome is unknown): handed to all, never retried one by one. `timeout`: the
        longest a member waits for its group (None: no bound)."""
        self._write_group = write_group
        self._shared_errors = shared_errors
        self._timeout = timeout
        self._mutex = threading.Lock()
        self._queue: list[_Waiter[Req, Res]] = []
        self._busy = False

    @property
    def pending(self) -> int:
        """Requests queued for a group that has not started yet."""
        with self._mutex:
            return len(self._queue)

    def submit(self, request: Req, size: int = 1) -> Res:
        waiter: _Waiter[Req, Res] = _Waiter(request, size)
        with self._mutex:
            self._queue.append(waiter)
            lead = not self._busy
            self._busy = True
        if not lead:
            if not waiter.done.wait(self._timeout) and self._abandon(waiter):
                raise Unavailable(f"no answer from the database within {self._timeout:g} s; "
                                  "the outcome of this append is unknown: retry it with "
                                  "the same seq")
            if not waiter.promoted:
                return self._outcome(waiter)
        self._lead()
        return self._outcome(waiter)

    def _lead(self) -> None:
        with self._mutex:
            take, total = 0, 0
            for waiter in self._queue:
                if take and total + waiter.size > MAX_GROUP_MESSAGES:
                    break
                take += 1
                total += waiter.size
            group, self._queue = self._queue[:take], self._queue[take:]
        try:
            self._run(group)
        finally:
            with self._mutex:
                if self._queue:
                    successor = self._queue[0]
                    successor.promoted = True
                    successor.done.set()
                else:
                    self._busy = False
            for waiter in group:
                if not waiter.promoted:
                    waiter.done.set()

    def _abandon(self, waiter: _Waiter[Req, Res]) -> bool:
        """Give up waiting, unless the waiter was answered or promoted meanwhile (then it
        goes on: a promoted waiter that left would stall every later group)."""
        with self._mutex:
            if waiter.done.is_set():
                return False
            if waiter in self._queue:  # not taken by a group: it will never be written
                self._queue.remove(waiter)
            return True

    def _run(self, group: list[_Waiter[Req, Res]]) -> None:
        try:
            results = self._write_group([w.request for w in group])
            for waiter, result in zip(group, results, strict=True):
                waiter.result = result
            return
        except BaseException as exc:  # noqa: BLE001 - retried one by one below
            if len(group) == 1 or isinstance(exc, self._shared_errors):
                for waiter in group:
                    waiter.error = exc
                return
        for waiter in group:
            try:
                waiter.result = self._write_group([waiter.request])[0]
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting request
                waiter.error = exc

    @staticmethod
    def _outcome(waiter: _Waiter[Req, Res]) -> Res:
        if waiter.error is not None:
            raise waiter.error
        return waiter.result  # type: ignore[return-value]
