"""`lq topics | produce | tail | stats`: the installed console script against real brokers.

Every command runs as a subprocess of the installed `lq` script. `tail -f` is synchronized by
reading its output line by line under a deadline: a marker line produced before it starts
proves it is following, then the lines produced afterwards must appear.
"""

from __future__ import annotations

import json
import os
import pty
import queue
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import pytest
from support import LQ, BrokerProcess, clean_env, free_port, interruptible

from sdk import Client

TIMEOUT = 20.0


@pytest.fixture(scope="module")
def broker(sqlite_broker: BrokerProcess) -> BrokerProcess:
    """The CLI is a client: what it needs of a broker is the HTTP contract, which
    test_broker_contract.py and the store's tests check on SQLite and PostgreSQL alike; one
    backend here halves the subprocess-heavy runs."""
    return sqlite_broker


def lq(*args: str, url: str, token: str | None = None, input: str | None = None,
       timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    env = clean_env(LQ_URL=url, **({"LQ_TOKEN": token} if token else {}))
    return subprocess.run([LQ, *args], env=env, input=input, capture_output=True, text=True,
                          timeout=timeout, stdin=None if input is not None else subprocess.DEVNULL)


def ok(*args: str, url: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = lq(*args, url=url, **kwargs)  # type: ignore[arg-type]
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result


def one_error_line(result: subprocess.CompletedProcess[str], code: int | None = None) -> str:
    """The command failed with exactly one line on stderr and no traceback."""
    assert result.returncode != 0, result
    if code is not None:
        assert result.returncode == code, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def lq_on_terminal(*args: str, url: str, answer: str) -> subprocess.CompletedProcess[str]:
    """`lq ARGS` with a terminal (a pseudo-terminal) as stdin, on which ``answer`` is typed."""
    terminal, child_end = pty.openpty()
    try:
        proc = subprocess.Popen([LQ, *args], env=clean_env(LQ_URL=url), stdin=child_end,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        os.close(child_end)
        os.write(terminal, answer.encode())  # the terminal holds the line until it is read
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        os.close(terminal)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def new_topic() -> str:
    return f"cli-{secrets.token_hex(4)}"


def describe(url: str, topic: str) -> dict:
    return json.loads(ok("topics", "describe", topic, "--json", url=url).stdout)


class LineReader:
    """The lines a subprocess writes to a pipe, read on a thread, awaited under a deadline."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, wanted: list[str], timeout: float = TIMEOUT) -> None:
        """Wait until the next lines are exactly ``wanted``, in order."""
        deadline = time.monotonic() + timeout
        for want in wanted:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"timed out waiting for {want!r}; saw {self.seen}") from None
            assert line is not None, f"the process ended before {want!r}; saw {self.seen}"
            self.seen.append(line)
            assert line == want, self.seen


# --- help ------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", [[], ["topics"], ["topics", "create"], ["topics", "delete"],
                                     ["topics", "describe"], ["produce"], ["tail"], ["stats"]])
def test_help_explains_with_examples(command: list[str]) -> None:
    result = subprocess.run([LQ, *command, "--help"], env=clean_env(), capture_output=True,
                            text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert "Examples:" in result.stdout or "Example:" in result.stdout
    if command:
        assert "--url" in result.stdout and "LQ_URL" in result.stdout


def test_broker_help_keeps_its_own_options() -> None:
    result = subprocess.run([LQ, "broker", "--help"], env=clean_env(), capture_output=True,
                            text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert "--db" in result.stdout and "--url" not in result.stdout


# --- produce and tail ------------------------------------------------------------------------
def test_produce_stdin_then_tail(broker: BrokerProcess) -> None:
    topic = new_topic()
    lines = [f"line {i}" for i in range(1200)]  # more than one batch of 500
    result = ok("produce", topic, url=broker.url, input="\n".join(lines[:600]) + "\n\n"
                + "\r\n".join(lines[600:]) + "\n")
    assert "Produced 1200 messages" in result.stderr and "offsets 0..1199" in result.stderr
    assert result.stdout == ""

    assert ok("tail", topic, url=broker.url).stdout.splitlines() == lines[-10:]
    assert ok("tail", topic, "-n", "3", url=broker.url).stdout.splitlines() == lines[-3:]
    assert ok("tail", topic, "--from-beginning", url=broker.url).stdout.splitlines() == lines
    assert ok("tail", topic, "-n", "0", url=broker.url).stdout == ""

    ok("produce", topic, "über ✓", '{"a": 1}', url=broker.url)
    records = [json.loads(line) for line in
               ok("tail", topic, "-n", "2", "--json", url=broker.url).stdout.splitlines()]
    assert [(r["offset"], r["message"]) for r in records] == [(1200, "über ✓"),
                                                            (1201, '{"a": 1}')]
    assert all(r["ts"] for r in records)

    info = describe(broker.url, topic)
    assert info["consumers"] == [] and info["producers"] == 0  # nothing left registered


@contextmanager
def tail_follow(broker: BrokerProcess, topic: str, *args: str
                ) -> Iterator[tuple[subprocess.Popen, LineReader]]:
    """`lq tail TOPIC -f ARGS` running; killed afterwards if the test did not stop it."""
    proc = subprocess.Popen(interruptible([LQ, "tail", topic, "-f", *args]),
                            env=clean_env(LQ_URL=broker.url),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        yield proc, LineReader(proc.stdout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_tail_follow_sees_new_lines_and_exits_cleanly(broker: BrokerProcess) -> None:
    topic = new_topic()
    ok("produce", topic, "old", "marker", url=broker.url)
    with tail_follow(broker, topic, "-n", "1") as (proc, out):
        out.expect(["marker"])  # it is following now: its start offset is fixed
        assert len(describe(broker.url, topic)["consumers"]) == 1
        ok("produce", topic, "new 1", "new 2", url=broker.url)
        out.expect(["new 1", "new 2"])
        ok("produce", topic, "new 3", url=broker.url)
        out.expect(["new 3"])
        proc.send_signal(signal.SIGINT)
        assert proc.wait(TIMEOUT) == 0
        assert "Traceback" not in proc.stderr.read()
    assert describe(broker.url, topic)["consumers"] == []


def test_tail_follow_ends_on_sigterm_without_leftovers(broker: BrokerProcess) -> None:
    topic = new_topic()
    ok("produce", topic, "marker", url=broker.url)
    with tail_follow(broker, topic, "--json") as (proc, out):
        deadline = time.monotonic() + TIMEOUT
        line = out.lines.get(timeout=TIMEOUT)
        assert line is not None and json.loads(line)["message"] == "marker"
        assert time.monotonic() < deadline
        proc.terminate()
        assert proc.wait(TIMEOUT) == 0
        assert "Traceback" not in proc.stderr.read()
    assert describe(broker.url, topic)["consumers"] == []


# --- stats -----------------------------------------------------------------------------------
def test_stats_shows_the_lag_of_a_consumer_that_read_half(broker: BrokerProcess) -> None:
    topic = new_topic()
    ok("produce", topic, url=broker.url, input="".join(f"m{i}\n" for i in range(10)))
    with Client(broker.url) as client:
        consumer = client.consumer([topic], name="half")
        assert [m.value for m in consumer.receive(topic, max=5)] == [f"m{i}" for i in range(5)]

    rows = {row["topic"]: row for row in json.loads(ok("stats", "--json", url=broker.url).stdout)}
    assert rows[topic]["messages"] == 10
    assert rows[topic]["consumers"] == 1
    assert rows[topic]["max_lag"] == 5

    table = ok("stats", url=broker.url).stdout.splitlines()
    assert table[0].split() == ["TOPIC", "MESSAGES", "CONSUMERS", "MAX_LAG"]
    assert [line.split() for line in table if line.split()[0] == topic] == [[topic, "10", "1",
                                                                             "5"]]
    described = describe(broker.url, topic)
    assert described["consumers"] == [{"name": "half", "position": 5, "lag": 5}]


def test_stats_watch_refreshes_until_interrupted(broker: BrokerProcess) -> None:
    topic = new_topic()
    ok("topics", "create", topic, url=broker.url)
    proc = subprocess.Popen(interruptible([LQ, "stats", "--watch", "--interval", "0.1"]),
                            env=clean_env(LQ_URL=broker.url), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out = LineReader(proc.stdout)
        tables = 0
        deadline = time.monotonic() + TIMEOUT
        while tables < 2:  # not a TTY: one table per refresh, one after the other
            line = out.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            assert line is not None
            tables += line.startswith("TOPIC")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(TIMEOUT) == 0
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- topics ----------------------------------------------------------------------------------
def test_topics_create_describe_alter_delete(broker: BrokerProcess) -> None:
    topic = new_topic()
    ok("topics", "create", topic, "--retention", "7d", "--retention-messages", "1000",
       url=broker.url)
    assert topic in ok("topics", url=broker.url).stdout.splitlines()
    assert topic in ok("topics", "list", url=broker.url).stdout.splitlines()

    info = describe(broker.url, topic)
    assert info["retention_ms"] == 7 * 86_400_000 and info["retention_messages"] == 1000
    text = ok("topics", "describe", topic, url=broker.url).stdout
    assert "1w, 1000 messages" in text and f"Topic:      {topic}" in text

    error = one_error_line(lq("topics", "create", topic, url=broker.url), 1)
    assert "already exists" in error
    ok("topics", "create", topic, "--if-not-exists", url=broker.url)

    ok("topics", "alter", topic, "--retention", "12h", url=broker.url)
    info = describe(broker.url, topic)
    assert info["retention_ms"] == 12 * 3_600_000 and info["retention_messages"] == 1000

    ok("produce", topic, "a", "b", url=broker.url)
    declined = lq_on_terminal("topics", "delete", topic, url=broker.url, answer="n\n")
    assert declined.returncode == 1 and "Traceback" not in declined.stderr
    assert f"Delete topic {topic!r} with its 2 messages" in declined.stderr
    assert describe(broker.url, topic)["messages"] == 2  # still there

    # No terminal to ask on (a script, a pipe) and no --yes: one line, nothing deleted.
    unasked = one_error_line(lq("topics", "delete", topic, url=broker.url, input="y\n"), 2)
    assert "pass --yes" in unasked
    assert describe(broker.url, topic)["messages"] == 2

    accepted = lq_on_terminal("topics", "delete", topic, url=broker.url, answer="y\n")
    assert accepted.returncode == 0, accepted.stderr
    assert f"Deleted topic {topic!r}." in accepted.stderr
    assert topic not in ok("topics", url=broker.url).stdout.splitlines()
    assert "does not exist" in one_error_line(lq("topics", "describe", topic, url=broker.url))
    assert "does not exist" in one_error_line(lq("topics", "delete", topic, "--yes",
                                                 url=broker.url))

    ok("topics", "create", topic, url=broker.url)  # the name can be reused
    assert topic in ok("topics", url=broker.url).stdout.splitlines()
    # (Not `describe` of the re-created topic: on PostgreSQL with several workers the broker
    # answers "does not exist" from a stale per-process topic-id cache; reported to the lead.)


# --- errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [["topics"], ["topics", "describe", "x"], ["produce", "x", "m"],
                                  ["tail", "x"], ["tail", "x", "-f"], ["stats"]])
def test_broker_down_is_one_line(args: list[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    error = one_error_line(lq(*args, url=url), 1)
    assert f"cannot reach the broker at {url}" in error


def test_a_malformed_url_is_refused_before_any_request() -> None:
    error = one_error_line(lq("topics", url="http//127.0.0.1:5000"), 2)
    assert "bad --url" in error and "not a broker url" in error


def test_bad_names_and_unknown_topics(broker: BrokerProcess) -> None:
    for args in (["topics", "create", "bad name"], ["produce", "--", "-x", "m"],
                 ["tail", "a/b"], ["topics", "describe", "x" * 201]):
        assert "invalid topic name" in one_error_line(lq(*args, url=broker.url), 2)
    assert "does not exist" in one_error_line(lq("tail", "no-such-topic", url=broker.url), 1)
    assert "--retention" in one_error_line(lq("topics", "create", "t", "--retention", "7 years",
                                              url=broker.url), 2)
    # A bare number could be seconds or milliseconds: refused, as the broker's --retention does.
    topic = new_topic()
    error = one_error_line(lq("topics", "create", topic, "--retention", "500", url=broker.url), 2)
    assert "--retention" in error and "give a unit" in error
    assert topic not in ok("topics", url=broker.url).stdout.splitlines()


def test_token_missing_or_wrong(start_broker, tmp_path: Path) -> None:
    proc = start_broker(f"sqlite:///{tmp_path / 'auth.db'}", token="s3cret")
    assert "requires a token" in one_error_line(lq("stats", url=proc.url), 1)
    assert "refused the token" in one_error_line(lq("topics", url=proc.url, token="wrong"), 1)
    assert "refused the token" in one_error_line(lq("stats", "--token", "wrong",
                                                    url=proc.url, token="s3cret"), 1)
    ok("produce", "t", "hello", url=proc.url, token="s3cret")
    assert ok("tail", "t", "--token", "s3cret", url=proc.url).stdout == "hello\n"
    # an option given to the group applies to its subcommand
    topics = subprocess.run([LQ, "topics", "--url", proc.url, "--token", "s3cret", "describe",
                             "t", "--json"], env=clean_env(), capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert topics.returncode == 0 and json.loads(topics.stdout)["messages"] == 1
