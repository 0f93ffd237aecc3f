"""Delivery: kill -9 and restart loses nothing, SIGTERM commits what it wrote, a failing sink
stops its pipeline without committing, SIGTERM during a sink's retry wait exits at once without
committing. Real brokers on SQLite and PostgreSQL."""

from __future__ import annotations

import signal
import textwrap
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa
from runner_helpers import (
    Endpoint,
    count_lines,
    make_record,
    new_topic,
    position,
    produce_records,
    read_jsonl,
    run_once,
    start_runner,
)
from support import wait_until

from lq_logging.runner import EXIT_INTERRUPTED
from lq_logging.sinks.sql import normalize_url

N = 12_000
BATCH = 100


def _ids(path: Path) -> list[int]:
    return [r["extra"]["order_id"] for r in read_jsonl(path)]


def test_kill_9_mid_stream_then_restart_loses_nothing(broker, pg_url: str, runners,
                                                      tmp_path: Path) -> None:
    topic = new_topic("kill")
    produce_records(broker.url, topic, [make_record(i) for i in range(N)])
    out = tmp_path / "out.jsonl"
    args = ["--url", broker.url, "--topic", topic, "--name", "k9", "--batch", str(BATCH),
            "--sink", f"file:{out}", "--sink", f"sql:{pg_url}"]
    first = start_runner(runners, args, tmp_path)
    wait_until(lambda: count_lines(out) >= 2_000, timeout=60, message="records in the file")
    first.kill9()
    killed_at = position(broker.url, topic, "k9")
    assert killed_at < N, "the runner finished before the kill; make N larger"

    done = run_once([*args, "--until-empty", "--wait", "0.3"], tmp_path)
    assert done.returncode == 0, done.stderr

    ids = _ids(out)
    assert set(ids) == set(range(N)), "every record is in the file"
    dupes = sorted(i for i, n in Counter(ids).items() if n > 1)
    assert all(n <= 2 for n in Counter(ids).values())
    if dupes:  # only from the one batch that was written but not committed
        assert dupes[-1] - dupes[0] < BATCH and dupes[0] >= killed_at
    engine = sa.create_engine(normalize_url(pg_url))
    with engine.connect() as conn:
        count, distinct = conn.execute(sa.text(
            'SELECT count(*), count(DISTINCT "offset") FROM lq_records WHERE topic = :t'),
            {"t": topic}).one()
    engine.dispose()
    assert count == distinct == N, "the SQL sink holds each record exactly once"
    assert position(broker.url, topic, "k9") == N


def test_sigterm_commits_what_it_wrote_and_restart_writes_nothing_twice(
        broker, runners, tmp_path: Path) -> None:
    topic = new_topic("term")
    produce_records(broker.url, topic, [make_record(i) for i in range(N)])
    out = tmp_path / "out.jsonl"
    dbfile = tmp_path / "records.db"
    args = ["--url", broker.url, "--topic", topic, "--name", "term", "--batch", "50",
            "--sink", f"file:{out}", "--sink", f"sql:sqlite:///{dbfile}"]
    runner = start_runner(runners, args, tmp_path)
    wait_until(lambda: count_lines(out) >= 1_000, timeout=60, message="records in the file")
    runner.signal(signal.SIGTERM)
    assert runner.wait(30) == 0, runner.stderr
    written = count_lines(out)
    assert position(broker.url, topic, "term") == written, "everything written is committed"

    done = run_once([*args, "--until-empty", "--wait", "0.3"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert _ids(out) == list(range(N)), "in order, each record once"


def test_sigterm_while_idle_exits_at_once(broker, runners, tmp_path: Path) -> None:
    topic = new_topic("idle")
    runner = start_runner(runners, ["--url", broker.url, "--topic", topic, "--name", "idle",
                                    "--wait", "30", "--sink", f"file:{tmp_path / 'o'}"],
                          tmp_path)
    runner.signal(signal.SIGINT)
    assert runner.wait(5) == 0, runner.stderr


def test_failing_sink_stops_the_pipeline_without_committing(broker, runners,
                                                            tmp_path: Path) -> None:
    topic = new_topic("fail")
    produce_records(broker.url, topic, [make_record(i) for i in range(30)])
    with Endpoint(mode="fail") as endpoint:
        config = tmp_path / "runner.toml"
        config.write_text(textwrap.dedent(f"""
            url = "{broker.url}"
            sink_retries = 1
            retry_backoff = 0.05
            [[pipeline]]
            name = "failing"
            topics = ["{topic}"]
            [[pipeline.sink]]
            spec = "{endpoint.url}"
            retries = 1
            backoff = 0.01
        """))
        done = run_once(["--config", str(config)], tmp_path)
        assert endpoint.requests == 4  # (1 + 1 sink retries) x (1 + 1 HTTP retries)
    assert done.returncode == 1
    assert "pipeline 'failing' stopped" in done.stderr
    assert "HTTP 500" in done.stderr and "Nothing of this batch was committed" in done.stderr
    assert position(broker.url, topic, "failing") == 0


def test_second_signal_exits_at_once(broker, runners, tmp_path: Path) -> None:
    topic = new_topic("twice")
    produce_records(broker.url, topic, [make_record(0)])
    with Endpoint(mode="hang") as endpoint:  # the POST stays in flight: the batch is busy
        config = tmp_path / "runner.toml"
        config.write_text(textwrap.dedent(f"""
            url = "{broker.url}"
            [[pipeline]]
            name = "twice"
            topics = ["{topic}"]
            [[pipeline.sink]]
            spec = "{endpoint.url}"
            timeout = 120
        """))
        runner = start_runner(runners, ["--config", str(config)], tmp_path)
        wait_until(lambda: endpoint.requests >= 1, timeout=30, message="the POST")
        runner.signal(signal.SIGTERM)
        wait_until(lambda: "finishing 1 batch" in runner.stderr, timeout=10,
                   message="the first signal")
        runner.signal(signal.SIGTERM)
        assert runner.wait(10) == 128 + signal.SIGTERM
    assert position(broker.url, topic, "twice") == 0


@pytest.mark.parametrize("waiting", ["sink backoff", "runner retry"])
def test_sigterm_during_a_sink_retry_stops_at_once_without_committing(
        broker, runners, tmp_path: Path, waiting: str) -> None:
    """The endpoint answers 503 forever; the runner waits two minutes between retries (in the
    HTTP sink's own backoff, or in the runner's sink retry). SIGTERM ends that wait: the
    runner exits 75 long before the two minutes, the failing batch is not committed, and a
    restart with a working endpoint delivers every record exactly once."""
    topic = new_topic("retry")
    records = [make_record(i) for i in range(160)]
    produce_records(broker.url, topic, records[:100])
    sink_retries, http_retries = (3, 1000) if waiting == "sink backoff" else (1000, 0)
    with Endpoint() as endpoint:
        config = tmp_path / "runner.toml"
        config.write_text(textwrap.dedent(f"""
            url = "{broker.url}"
            sink_retries = {sink_retries}
            retry_backoff = 120
            [[pipeline]]
            name = "retrying"
            topics = ["{topic}"]
            batch = 50
            wait = 0.5
            [[pipeline.sink]]
            spec = "{endpoint.url}"
            retries = {http_retries}
            backoff = 120
            backoff_max = 120
        """))
        runner = start_runner(runners, ["--config", str(config)], tmp_path)
        wait_until(lambda: position(broker.url, topic, "retrying") == 100, timeout=30,
                   message="the first 100 records committed")
        endpoint.mode = "unavailable"
        produce_records(broker.url, topic, records[100:])
        wait_until(lambda: endpoint.refused >= 1, timeout=30, message="a 503")
        if waiting == "runner retry":
            wait_until(lambda: "retry 1/1000 in 120.0s" in runner.stderr, timeout=10,
                       message="the runner's retry")
        runner.signal(signal.SIGTERM)
        assert runner.wait(60) == EXIT_INTERRUPTED, runner.stderr
        assert "HTTP 503" in runner.stderr
        assert "Nothing of this batch was committed" in runner.stderr
        assert position(broker.url, topic, "retrying") == 100, "the failing batch is not committed"
        assert endpoint.records == records[:100]

        endpoint.mode = "ok"
        done = run_once(["--config", str(config), "--until-empty"], tmp_path)
        assert done.returncode == 0, done.stderr
        assert endpoint.records == records, "every record, in order, once"
    assert position(broker.url, topic, "retrying") == 160


@pytest.mark.parametrize("prefetch", [True, False])
def test_prefetch_on_or_off_delivers_in_order_once(broker, tmp_path: Path,
                                                   prefetch: bool) -> None:
    topic = new_topic("pre")
    produce_records(broker.url, topic, [make_record(i) for i in range(2_500)])
    out = tmp_path / "out.jsonl"
    config = tmp_path / "runner.toml"
    config.write_text(textwrap.dedent(f"""
        url = "{broker.url}"
        until_empty = true
        prefetch = {str(prefetch).lower()}
        [[pipeline]]
        name = "pre"
        topics = ["{topic}"]
        batch = 100
        wait = 0.3
        sinks = ["file:{out}"]
    """))
    done = run_once(["--config", str(config)], tmp_path)
    assert done.returncode == 0, done.stderr
    assert _ids(out) == list(range(2_500))
    assert position(broker.url, topic, "pre") == 2_500
