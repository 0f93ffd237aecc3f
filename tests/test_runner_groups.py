"""Consumer groups through `lq consume`: runners sharing one name share the work (leases),
a killed runner's lease goes to the others, a range handed out too often is dead-lettered.
Real brokers on PostgreSQL, real runners, a real SQL sink."""

from __future__ import annotations

import json
import signal
import textwrap
import threading
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa
from lqhttp import metric, scrape
from runner_helpers import (
    Endpoint,
    RunnerProcess,
    count_lines,
    new_topic,
    position,
    produce,
    read_jsonl,
    run_once,
    start_runner,
)
from support import wait_until

from lq_logging.sinks.sql import normalize_url
from sdk import Client

N = 30_000
BATCH = 200


def _config(path: Path, broker_url: str, topic: str, sinks: list[str], **pipeline: object
            ) -> Path:
    extra = "".join(f"{key} = {json.dumps(value)}\n" for key, value in pipeline.items())
    path.write_text(textwrap.dedent(f"""
        url = "{broker_url}"
        dead_letter = "{path.parent / 'dead.jsonl'}"
        [[pipeline]]
        name = "shared"
        topics = ["{topic}"]
        batch = {BATCH}
        wait = 0.5
        sinks = {json.dumps(sinks)}
    """) + extra)
    return path


def _table_offsets(url: str, topic: str) -> tuple[int, int]:
    engine = sa.create_engine(normalize_url(url))
    try:
        with engine.connect() as conn:
            return tuple(conn.execute(sa.text(
                'SELECT count(*), count(DISTINCT "offset") FROM lq_records WHERE topic = :t'),
                {"t": topic}).one())
    except sa.exc.ProgrammingError:  # no table yet
        return (0, 0)
    finally:
        engine.dispose()


def _start_group(runners: list[RunnerProcess], tmp_path: Path, broker_url: str, topic: str,
                 sql_url: str, count: int = 3, **pipeline: object) -> list[Path]:
    """`count` runners named "shared", each into the SQL sink and a file of its own."""
    files = []
    for index in range(count):
        out = tmp_path / f"out{index}.jsonl"
        config = _config(tmp_path / f"runner{index}.toml", broker_url, topic,
                         [f"sql:{sql_url}", f"file:{out}"], **pipeline)
        start_runner(runners, ["--config", str(config)], tmp_path)
        files.append(out)
    return files


def _messages(start: int, stop: int) -> list[str]:
    return [json.dumps({"message": f"record {i}", "i": i}) for i in range(start, stop)]


def _file_offsets(path: Path) -> list[int]:
    return [r["i"] for r in read_jsonl(path)]


def test_three_runners_share_one_name_and_write_each_record_once(
        pg_url: str, start_broker, runners, tmp_path: Path) -> None:
    broker = start_broker(pg_url)
    topic = new_topic("group")
    with Client(broker.url) as client:
        client.create_topic(topic)
    files = _start_group(runners, tmp_path, broker.url, topic, pg_url)
    produce(broker.url, topic, _messages(0, N))

    wait_until(lambda: _table_offsets(pg_url, topic)[1] == N, timeout=180,
               message=f"{N} records in the table")
    assert _table_offsets(pg_url, topic) == (N, N), "each (topic, offset) once in the table"
    shares = [len(_file_offsets(f)) for f in files]
    assert all(share > 0 for share in shares), f"a runner did no share: {shares}"
    everything = sorted(o for f in files for o in _file_offsets(f))
    assert everything == list(range(N)), "no record written by two runners, none missed"
    wait_until(lambda: position(broker.url, topic, "shared") == N, timeout=30,
               message="every lease acked")
    for runner in runners:
        runner.signal(signal.SIGTERM)
        assert runner.wait(30) == 0, runner.stderr


def test_kill_9_one_runner_while_producing_loses_nothing(
        pg_url: str, start_broker, runners, tmp_path: Path) -> None:
    broker = start_broker(pg_url)
    topic = new_topic("groupk")
    with Client(broker.url) as client:
        client.create_topic(topic)
    files = _start_group(runners, tmp_path, broker.url, topic, pg_url, lease=2)
    produced = threading.Event()

    def producing() -> None:
        for start in range(0, N, 1000):
            produce(broker.url, topic, _messages(start, start + 1000))
        produced.set()

    producer = threading.Thread(target=producing)
    producer.start()
    wait_until(lambda: count_lines(files[0]) >= 2 * BATCH, timeout=120,
               message="the first runner at work")
    assert not produced.is_set(), "production ended before the kill; make N larger"
    runners[0].kill9()
    killed = set(_file_offsets(files[0]))
    producer.join(180)

    wait_until(lambda: _table_offsets(pg_url, topic)[1] == N, timeout=180,
               message=f"{N} records in the table")
    assert _table_offsets(pg_url, topic) == (N, N)
    survivors = Counter(o for f in files[1:] for o in _file_offsets(f))
    assert set(survivors) | killed == set(range(N)), "a record is missing"
    twice = {o for o in set(survivors) & killed} | {o for o, n in survivors.items() if n > 1}
    # Written twice only what the killed runner had in hand (its lease, not yet acked).
    assert twice <= killed and len(twice) <= BATCH, sorted(twice)[:20]
    wait_until(lambda: position(broker.url, topic, "shared") == N, timeout=30,
               message="every lease acked")


def test_a_range_handed_out_too_often_is_dead_lettered_and_acked(
        pg_url: str, start_broker, tmp_path: Path) -> None:
    broker = start_broker(pg_url)
    topic = new_topic("groupd")
    with Client(broker.url) as client:
        client.create_topic(topic)
    produce(broker.url, topic, _messages(0, 10))
    with Endpoint(mode="fail") as endpoint:
        config = _config(tmp_path / "runner.toml", broker.url, topic, [endpoint.url],
                         max_deliveries=1)
        config.write_text(config.read_text().replace(
            'url = "', 'sink_retries = 0\nuntil_empty = true\nurl = "', 1))
        failed = run_once(["--config", str(config)], tmp_path)
        assert failed.returncode == 1, failed.stderr
        assert position(broker.url, topic, "shared") == 0, "a failed batch is not acked"

        endpoint.mode = "ok"
        done = run_once(["--config", str(config)], tmp_path)
        assert done.returncode == 0, done.stderr
        assert endpoint.records == [], "the range went to the sink anyway"
    dead = read_jsonl(tmp_path / "dead.jsonl")
    assert [json.loads(d["message"])["i"] for d in dead] == list(range(10))
    assert all("handed out 2 times (max_deliveries 1)" in d["reason"] for d in dead)
    assert position(broker.url, topic, "shared") == 10


@pytest.mark.parametrize(("prefetch", "leases", "acks"), [(True, 7, 0), (False, 6, 5)])
def test_a_runner_acks_each_lease_with_the_request_for_the_next(
        pg_url: str, start_broker, tmp_path: Path, prefetch: bool, leases: int,
        acks: int) -> None:
    """One request per batch: the ack of each written lease rides on the next lease request
    (5 leases, each acked by the next request, the last by one that finds no work, then one
    empty lease before --until-empty ends). Without prefetch, each ack goes alone. A fresh
    broker, so its counters are this runner's."""
    broker = start_broker(pg_url)
    topic = new_topic("groupr")
    produce(broker.url, topic, _messages(0, 5 * BATCH))
    out = tmp_path / "out.jsonl"
    config = _config(tmp_path / "runner.toml", broker.url, topic, [f"file:{out}"])
    config.write_text(config.read_text().replace(
        'url = "', f"until_empty = true\nprefetch = {str(prefetch).lower()}\nurl = \"", 1))
    done = run_once(["--config", str(config)], tmp_path)
    assert done.returncode == 0, done.stderr
    assert _file_offsets(out) == list(range(5 * BATCH))
    assert position(broker.url, topic, "shared") == 5 * BATCH
    samples = scrape(broker.url)
    requests = {path: metric(samples, "lq_http_requests_total", endpoint=path, method="POST",
                             status="200") for path in ("/consumer/lease", "/consumer/ack")}
    assert requests == {"/consumer/lease": leases, "/consumer/ack": acks}, requests
