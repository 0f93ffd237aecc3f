"""GroupCommit in one process, without a broker: grouping, one-by-one retry, shared errors.

The group writer here is a plain function that records each group it gets; requests are
strings, and a request starting with "bad" makes any group holding it fail.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
from support import wait_until

from broker.errors import Unavailable
from broker.groupcommit import MAX_GROUP_MESSAGES, GroupCommit


class DatabaseDown(Exception):
    """Stands for a failure every member of a group shares (the database did not answer)."""


class Writer:
    """Records each group; the first group can be held open so others queue behind it."""

    def __init__(self, fail_with: type[Exception] = ValueError) -> None:
        self.groups: list[list[str]] = []
        self.fail_with = fail_with
        self.hold_first = threading.Event()
        self.hold_first.set()
        self.first_started = threading.Event()

    def __call__(self, group: Sequence[str]) -> list[str]:
        self.groups.append(list(group))
        self.first_started.set()
        self.hold_first.wait(10)
        if any(r.startswith("bad") for r in group):
            raise self.fail_with(f"refused {[r for r in group if r.startswith('bad')]}")
        return [r.upper() for r in group]


def queue_behind_a_held_group(commit: GroupCommit, writer: Writer, pool: ThreadPoolExecutor,
                              requests: list[str]) -> tuple[Future, list[Future]]:
    """Start one request whose group the writer holds open, queue `requests` behind it (all
    of them pending), then let the writer go on."""
    writer.hold_first.clear()
    first = pool.submit(commit.submit, "first")
    assert writer.first_started.wait(10)
    queued = [pool.submit(commit.submit, r) for r in requests]
    wait_until(lambda: commit.pending == len(requests), timeout=10,
               message=f"{len(requests)} requests queued")
    writer.hold_first.set()
    return first, queued


@pytest.fixture
def pool() -> ThreadPoolExecutor:
    with ThreadPoolExecutor(8) as executor:
        yield executor


def test_requests_queued_behind_a_group_make_the_next_group(pool: ThreadPoolExecutor) -> None:
    writer = Writer()
    commit: GroupCommit[str, str] = GroupCommit(writer)
    first, queued = queue_behind_a_held_group(commit, writer, pool, ["a", "b", "c"])
    assert first.result(10) == "FIRST"
    assert [f.result(10) for f in queued] == ["A", "B", "C"]
    assert writer.groups[0] == ["first"]
    assert sorted(writer.groups[1]) == ["a", "b", "c"] and len(writer.groups) == 2
    assert commit.pending == 0


def test_a_failed_group_is_retried_one_by_one(pool: ThreadPoolExecutor) -> None:
    writer = Writer()
    commit: GroupCommit[str, str] = GroupCommit(writer)
    _, queued = queue_behind_a_held_group(commit, writer, pool, ["a", "bad1", "b"])
    futures = dict(zip(["a", "bad1", "b"], queued, strict=True))
    assert futures["a"].result(10) == "A" and futures["b"].result(10) == "B"
    with pytest.raises(ValueError, match="bad1"):
        futures["bad1"].result(10)
    group = sorted(writer.groups[1])
    assert group == ["a", "b", "bad1"], "first written together"
    assert sorted(map(tuple, writer.groups[2:])) == [("a",), ("b",), ("bad1",)], "then alone"


def test_a_shared_error_fails_every_member_and_is_not_retried(pool: ThreadPoolExecutor) -> None:
    writer = Writer(fail_with=DatabaseDown)
    commit: GroupCommit[str, str] = GroupCommit(writer, shared_errors=(DatabaseDown,))
    _, queued = queue_behind_a_held_group(commit, writer, pool, ["a", "bad", "b"])
    errors = []
    for future in queued:
        with pytest.raises(DatabaseDown) as info:
            future.result(10)
        errors.append(info.value)
    assert errors[0] is errors[1] is errors[2], "one failure, handed to all"
    assert len(writer.groups) == 2, "no one-by-one retry after a shared failure"


def test_a_lone_request_that_fails_is_not_written_twice() -> None:
    writer = Writer()
    commit: GroupCommit[str, str] = GroupCommit(writer)
    with pytest.raises(ValueError):
        commit.submit("bad")
    assert writer.groups == [["bad"]]
    assert commit.submit("ok") == "OK"


def test_a_group_holds_at_most_max_group_messages(pool: ThreadPoolExecutor) -> None:
    writer = Writer()
    commit: GroupCommit[str, str] = GroupCommit(writer)
    writer.hold_first.clear()
    first = pool.submit(commit.submit, "first")
    assert writer.first_started.wait(10)
    half = MAX_GROUP_MESSAGES // 2
    queued = [pool.submit(commit.submit, name, half) for name in ("x", "y", "z")]
    wait_until(lambda: commit.pending == 3, timeout=10, message="3 requests queued")
    writer.hold_first.set()
    assert first.result(10) == "FIRST"
    assert sorted(f.result(10) for f in queued) == ["X", "Y", "Z"]
    assert [len(g) for g in writer.groups] == [1, 2, 1], writer.groups


def test_a_waiter_gives_up_after_the_timeout_and_the_next_group_still_runs(
        pool: ThreadPoolExecutor) -> None:
    """A group stuck on the database (held here) must not hold its queue past the timeout:
    the queued requests answer 503 and are never written, and once the stuck group ends
    the next request leads a group of its own (no stall behind a waiter that left)."""
    writer = Writer()
    commit: GroupCommit[str, str] = GroupCommit(writer, timeout=0.2)
    writer.hold_first.clear()
    first = pool.submit(commit.submit, "first")
    assert writer.first_started.wait(10)
    queued = [pool.submit(commit.submit, r) for r in ("a", "b")]
    for future in queued:
        with pytest.raises(Unavailable, match="outcome of this append is unknown"):
            future.result(10)
    assert commit.pending == 0, "a waiter that gave up leaves the queue"
    writer.hold_first.set()
    assert first.result(10) == "FIRST"
    assert commit.submit("later") == "LATER"
    assert writer.groups == [["first"], ["later"]], "what gave up was never written"
