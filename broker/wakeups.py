"""Long-poll wake-ups inside one process: a version number and a condition per topic.

A waiter reads the topic's version, checks the database, and only then waits for the version
to change, so an append that commits between the check and the wait is never missed. Waits
are capped (the caller re-checks the database at least once a second), so a wake-up that
never comes (an append made by another process) costs at most that second.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class _Topic:
    __slots__ = ("cond", "version")

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.version = 0


class Wakeups:
    def __init__(self) -> None:
        self._topics: dict[int, _Topic] = {}
        self._lock = threading.Lock()
        self.closed = False
        self.max_waiters: int | None = None  # the server's cap on held long-polls, if any
        self._waiters = 0

    def close(self) -> None:
        """The process is stopping: every waiter returns now, and no new wait blocks."""
        self.closed = True
        self.notify_all()

    def notify_all(self) -> None:
        """Wake every waiter, whatever its topic: each reads the database again."""
        for topic_id in list(self._topics):
            self.notify(topic_id)

    def _topic(self, topic_id: int) -> _Topic:
        topic = self._topics.get(topic_id)
        if topic is None:
            with self._lock:
                topic = self._topics.setdefault(topic_id, _Topic())
        return topic

    def version(self, topic_id: int) -> int:
        return self._topic(topic_id).version

    def notify(self, topic_id: int) -> None:
        topic = self._topic(topic_id)
        with topic.cond:
            topic.version += 1
            topic.cond.notify_all()

    def wait(self, topic_id: int, seen_version: int, timeout: float) -> bool:
        """Wait until the topic's version differs from `seen_version`; False on timeout."""
        topic = self._topic(topic_id)
        with topic.cond:
            return topic.cond.wait_for(
                lambda: topic.version != seen_version or self.closed, timeout)

    @contextmanager
    def slot(self, wait: float) -> Iterator[float]:
        """How long a long-poll may wait: `wait`, or 0 (an answer at once, as if its wait had
        run out) while `max_waiters` others hold threads, so other requests find one."""
        if wait <= 0 or self.max_waiters is None:
            yield wait
            return
        with self._lock:
            admitted = self._waiters < self.max_waiters
            if admitted:
                self._waiters += 1
        try:
            yield wait if admitted else 0.0
        finally:
            if admitted:
                with self._lock:
                    self._waiters -= 1
