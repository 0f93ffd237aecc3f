"""Wakeups in one process, without a broker: no wake-up is missed, none is spurious."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from broker.wakeups import Wakeups

LONG = 30.0  # a wait that only a wake-up ends within a test


def test_a_notify_after_the_version_was_read_wakes_the_waiter() -> None:
    wakeups = Wakeups()
    seen = wakeups.version(1)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(wakeups.wait, 1, seen, LONG)
        wakeups.notify(1)
        assert waiting.result(10) is True


def test_a_notify_before_the_wait_is_not_missed() -> None:
    """The waiter read the version, checked the database, then the append came: its wait
    returns at once instead of sleeping through it."""
    wakeups = Wakeups()
    seen = wakeups.version(7)
    wakeups.notify(7)
    assert wakeups.version(7) != seen
    assert wakeups.wait(7, seen, LONG) is True


def test_a_wait_without_a_notify_times_out() -> None:
    wakeups = Wakeups()
    assert wakeups.wait(3, wakeups.version(3), 0.01) is False


def test_a_notify_on_another_topic_does_not_wake() -> None:
    wakeups = Wakeups()
    seen = wakeups.version(1)
    wakeups.notify(2)
    assert wakeups.version(1) == seen
    assert wakeups.wait(1, seen, 0.01) is False


def test_every_waiter_of_a_topic_wakes() -> None:
    wakeups = Wakeups()
    seen = wakeups.version(5)
    started = threading.Barrier(4)

    def wait() -> bool:
        started.wait(10)
        return wakeups.wait(5, seen, LONG)

    with ThreadPoolExecutor(3) as pool:
        waiting = [pool.submit(wait) for _ in range(3)]
        started.wait(10)
        wakeups.notify(5)
        assert [w.result(10) for w in waiting] == [True, True, True]


def test_close_ends_every_wait_and_later_ones_return_at_once() -> None:
    wakeups = Wakeups()
    seen = wakeups.version(9)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(wakeups.wait, 9, seen, LONG)
        wakeups.close()
        assert waiting.result(10) is True
    assert wakeups.closed
    assert wakeups.wait(4, wakeups.version(4), LONG) is True
