"""`lq tail`: handler records rendered as the stdout sink renders them, and the filters
(--level, --logger, --grep), on the last messages and with -f, against a real broker.

The records are the handler's own format (:class:`lq_logging.JSONFormatter` on real
``LogRecord``s), produced next to plain lines of a classic producer. `-f` is synchronized as
in test_cli.py: a matching marker produced before it starts proves it follows, then the
lines produced afterwards must appear, in order, under a deadline.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pty
import subprocess
import sys

import pytest
from support import LQ, BrokerProcess, clean_env
from test_cli import TIMEOUT, lq, new_topic, ok, one_error_line, tail_follow

from lq_logging import JSONFormatter
from lq_logging.sinks import Entry
from lq_logging.sinks.stdout import StdoutSink
from sdk import Client

FORMATTER = JSONFormatter()


@pytest.fixture(scope="module")
def broker(sqlite_broker: BrokerProcess) -> BrokerProcess:
    """The CLI is a client: what it needs of a broker is the HTTP contract, which
    test_broker_contract.py and the store's tests check on SQLite and PostgreSQL alike; one
    backend here halves the subprocess-heavy runs."""
    return sqlite_broker


def record(logger: str, level: int, message: str, *, error: bool = False) -> str:
    """One record exactly as LogQueueHandler sends it."""
    exc_info = None
    if error:
        try:
            raise ValueError("card declined")
        except ValueError:
            exc_info = sys.exc_info()
    return FORMATTER.format(logging.LogRecord(logger, level, __file__, 1, message, None,
                                              exc_info))


def produce(url: str, topic: str, messages: list[str]) -> None:
    with Client(url) as client:
        client.create_topic(topic, exist_ok=True)
        client.producer().send_many(topic, messages)


def shown(messages: list[str]) -> list[str]:
    """What `lq tail` prints of ``messages`` (no colours): a record as the stdout sink's
    text, anything else as its own text."""
    out = []
    for raw in messages:
        entry = Entry.decode("t", 0, raw)
        if raw.startswith("{") and "message" in entry.record:
            stream = io.StringIO()
            StdoutSink(format="text", colour=False, stream=stream).write([entry])
            out.extend(stream.getvalue().splitlines())
        else:
            out.append(raw)
    return out


#: A topic's worth of mixed messages; the tests name them by key.
MESSAGES = {
    "info": record("shop", logging.INFO, "order 1 created"),
    "db_warning": record("shop.db", logging.WARNING, "pool exhausted"),
    "pool_error": record("shop.db.pool", logging.ERROR, "pool connect failed", error=True),
    "dbx_error": record("shop.dbx", logging.ERROR, "dbx down"),
    "critical": record("shop", logging.CRITICAL, "Disk full on /var"),
    "plain": "deploy 7 started (pool of 4)",
    "object": '{"a": 1}',
    "debug": record("shop.db", logging.DEBUG, "query took 3 ms"),
}


@pytest.fixture(scope="module")
def mixed(broker: BrokerProcess) -> str:
    topic = new_topic()
    produce(broker.url, topic, list(MESSAGES.values()))
    return topic


def tail(broker: BrokerProcess, topic: str, *args: str) -> list[str]:
    return ok("tail", topic, *args, url=broker.url).stdout.splitlines()


def expected(*keys: str) -> list[str]:
    return shown([MESSAGES[key] for key in keys])


# --- rendering -------------------------------------------------------------------------------
def test_records_render_as_the_stdout_sink_does(broker: BrokerProcess, mixed: str) -> None:
    out = tail(broker, mixed, "--from-beginning")
    assert out == expected(*MESSAGES)
    info = json.loads(MESSAGES["info"])
    assert out[0] == f"{info['time']} INFO     shop: order 1 created"  # time, level, logger
    error_at = out.index(expected("pool_error")[0])
    assert out[error_at].endswith(" ERROR    shop.db.pool: pool connect failed")
    assert out[error_at + 1] == "Traceback (most recent call last):"  # traceback below
    assert out[error_at + 4] == "ValueError: card declined"
    assert "deploy 7 started (pool of 4)" in out and '{"a": 1}' in out  # other text as is
    assert not any("\x1b[" in line for line in out)  # no colours into a pipe


def test_colours_on_a_terminal_only(broker: BrokerProcess, mixed: str) -> None:
    terminal, child_end = pty.openpty()
    try:
        proc = subprocess.Popen([LQ, "tail", mixed, "-n", "8"], env=clean_env(LQ_URL=broker.url),
                                stdin=subprocess.DEVNULL, stdout=child_end,
                                stderr=subprocess.PIPE)
        os.close(child_end)
        assert proc.wait(TIMEOUT) == 0, proc.stderr.read()  # type: ignore[union-attr]
        chunks = []
        while True:
            try:
                chunk = os.read(terminal, 65536)
            except OSError:  # EIO: the terminal's other end is closed and drained
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(terminal)
    text = b"".join(chunks).decode()
    assert "\x1b[33mWARNING \x1b[0m shop.db: pool exhausted" in text
    assert "\x1b[1;31mCRITICAL\x1b[0m shop: Disk full on /var" in text
    assert "deploy 7 started (pool of 4)" in text  # plain text uncoloured
    json_out = ok("tail", mixed, "--json", url=broker.url).stdout
    assert "\x1b[" not in json_out


def test_json_prints_the_stored_messages_of_matching_ones(broker: BrokerProcess,
                                                          mixed: str) -> None:
    lines = [json.loads(line) for line in tail(broker, mixed, "--json", "--level", "ERROR")]
    assert [line["message"] for line in lines] == [MESSAGES["pool_error"], MESSAGES["dbx_error"],
                                                   MESSAGES["critical"]]
    assert [line["offset"] for line in lines] == [2, 3, 4] and all(line["ts"] for line in lines)


# --- filters ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("args", "keys"), [
    (["--level", "WARNING"], ["db_warning", "pool_error", "dbx_error", "critical"]),
    (["--level", "error"], ["pool_error", "dbx_error", "critical"]),  # any case
    (["--level", "45"], ["critical"]),  # a number
    (["--level", "DEBUG"], ["info", "db_warning", "pool_error", "dbx_error", "critical",
                            "debug"]),  # plain text and a record-less object have no level
    (["--logger", "shop.db"], ["db_warning", "pool_error", "debug"]),  # not shop.dbx
    (["--logger", "shop"], ["info", "db_warning", "pool_error", "dbx_error", "critical",
                            "debug"]),
    (["--logger", "shop.db.pool"], ["pool_error"]),
    (["--grep", "pool"], ["db_warning", "pool_error", "plain"]),  # records and plain text
    (["--grep", "Disk"], ["critical"]),
    (["--grep", "disk"], []),  # a plain substring is case-sensitive
    (["--grep", "re:(?i)^.*disk full"], ["critical"]),
    (["--grep", r"re:^deploy \d+ started"], ["plain"]),
    (["--grep", "card declined"], ["pool_error"]),  # the traceback is searched too
    (["--grep", "CRITICAL"], ["critical"]),  # the level as shown
    (["--level", "ERROR", "--logger", "shop.db"], ["pool_error"]),  # AND
    (["--level", "WARNING", "--grep", "re:pool|Disk"], ["db_warning", "pool_error", "critical"]),
    (["--logger", "shop.db", "--grep", "query"], ["debug"]),
    (["--logger", "shop.db", "--grep", "dbx"], []),
])
def test_filters(broker: BrokerProcess, mixed: str, args: list[str], keys: list[str]) -> None:
    assert tail(broker, mixed, "--from-beginning", *args) == expected(*keys)


def test_n_counts_the_matching_messages(broker: BrokerProcess) -> None:
    topic = new_topic()
    error = record("shop", logging.ERROR, "the one error")
    noise = [record("shop", logging.INFO, f"step {i}") for i in range(1500)]
    produce(broker.url, topic, [error, *noise, "plain step 1500"])
    # the error is 1501 messages back: lq tail reads back window by window to find it
    assert tail(broker, topic, "--level", "ERROR") == shown([error])
    assert tail(broker, topic, "--level", "ERROR", "-n", "1") == shown([error])
    assert tail(broker, topic, "--grep", "re:step 14\\d\\d$", "-n", "3") == shown(noise[-3:])
    assert tail(broker, topic, "--grep", "step 1", "-n", "2") == [*shown(noise[-1:]),
                                                                  "plain step 1500"]
    assert tail(broker, topic, "--grep", "step", "-n", "0") == []
    assert tail(broker, topic, "--grep", "no such text") == []
    assert tail(broker, topic) == [*shown(noise[-9:]), "plain step 1500"]  # unfiltered as before


def test_bad_filters_are_one_error_line_before_any_request(broker: BrokerProcess,
                                                           mixed: str) -> None:
    error = one_error_line(lq("tail", mixed, "--grep", "re:(unclosed", url=broker.url), 2)
    assert "--grep" in error and "invalid regular expression" in error
    error = one_error_line(lq("tail", mixed, "--level", "LOUD", url=broker.url), 2)
    assert "--level" in error and "LOUD" in error
    # checked before the broker is asked: the same errors with no broker at all
    error = one_error_line(lq("tail", mixed, "--grep", "re:*", url="http://127.0.0.1:9"), 2)
    assert "--grep" in error


# --- follow ----------------------------------------------------------------------------------
def test_follow_applies_the_filters(broker: BrokerProcess) -> None:
    topic = new_topic()
    marker = record("shop.db", logging.WARNING, "marker")
    produce(broker.url, topic, [record("shop.db", logging.ERROR, "old"), marker])
    with tail_follow(broker, topic, "-n", "1", "--level", "WARNING", "--logger", "shop.db"
                     ) as (proc, out):
        out.expect(shown([marker]))  # following now
        new = [record("shop.db", logging.INFO, "too low"),
               record("shop.dbx", logging.ERROR, "other logger"),
               "plain ERROR text",
               record("shop.db.pool", logging.ERROR, "pool down", error=True),
               record("shop.db", logging.CRITICAL, "db gone")]
        produce(broker.url, topic, new)
        out.expect(shown(new[3:]))  # only the matching ones, in order, nothing between
        end = record("shop.db", logging.WARNING, "end")
        produce(broker.url, topic, [record("shop", logging.ERROR, "not shop.db"), end])
        out.expect(shown([end]))
        proc.terminate()
        assert proc.wait(TIMEOUT) == 0
        assert "Traceback" not in proc.stderr.read()


def test_follow_greps_plain_lines_and_records(broker: BrokerProcess) -> None:
    topic = new_topic()
    produce(broker.url, topic, ["deploy 1 done"])
    with tail_follow(broker, topic, "-n", "5", "--grep", r"re:deploy \d+ done") as (proc, out):
        out.expect(["deploy 1 done"])
        matching = record("ops", logging.INFO, "deploy 2 done")
        produce(broker.url, topic, ["deploy 2 started", matching, "deploy x done",
                                    "deploy 3 done"])
        out.expect([*shown([matching]), "deploy 3 done"])
        proc.terminate()
        assert proc.wait(TIMEOUT) == 0
