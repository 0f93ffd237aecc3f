"""`lq consume` options: help, SPEC errors, --dry-run, TOML pipelines with filters, the
environment, topic creation, --progress."""

from __future__ import annotations

import json
import signal
import textwrap
from pathlib import Path

from click.testing import CliRunner, Result
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
from support import free_port, wait_until

from lq_logging.cli import consume_command


def test_help_has_examples(tmp_path: Path) -> None:
    done = run_once(["--help"], tmp_path)
    assert done.returncode == 0
    assert "Examples:" in done.stdout and "lq consume --config runner.toml" in done.stdout
    assert "LQ_URL" in done.stdout and "file:PATH" in done.stdout
    assert "--lease DURATION" in done.stdout and "--max-deliveries N" in done.stdout
    assert "--lease 2m --max-deliveries 3" in done.stdout, "an example of a group"


def test_bad_sink_specs_name_the_option(tmp_path: Path) -> None:
    for spec, words in [("nonsense", "unknown sink"),
                        ("no_such_module_x:Sink", "cannot import"),
                        ("file:/x?format=yaml", "format"),
                        ("sql:mysql://u@h/db", "sql")]:
        done = run_once(["--topic", "t", "--sink", spec], tmp_path)
        assert done.returncode == 2, done.stderr
        assert "Invalid value for --sink" in done.stderr and words in done.stderr, done.stderr
    done = run_once(["--topic", "t"], tmp_path)
    assert done.returncode == 2 and "--sink" in done.stderr


def test_dry_run_validates_without_consuming(sqlite_broker, tmp_path: Path) -> None:
    topic = new_topic("dry")
    produce_records(sqlite_broker.url, topic, [make_record(i) for i in range(5)])
    config = tmp_path / "runner.toml"
    config.write_text(textwrap.dedent(f"""
        url = "{sqlite_broker.url}"
        [[pipeline]]
        name = "dry"
        topics = ["{topic}"]
        min_level = "warning"
        sinks = ["stdout", "file:{tmp_path / 'dry.jsonl'}"]
    """))
    done = run_once(["--config", str(config), "--dry-run"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "configuration OK" in done.stdout and "level >= 30" in done.stdout
    assert position(sqlite_broker.url, topic, "dry") == 0

    config.write_text(config.read_text().replace('"stdout"', '"sql:postgresql://nobody@127.0.0.1:1/x"'))
    done = run_once(["--config", str(config), "--dry-run"], tmp_path)
    assert done.returncode == 2
    assert "--config (pipeline 'dry', sink 1)" in done.stderr

    config.write_text(config.read_text() + "\nmin_levle = 3\n")
    done = run_once(["--config", str(config), "--dry-run"], tmp_path)
    assert done.returncode == 2 and "min_levle" in done.stderr


def test_two_pipelines_with_filters(sqlite_broker, tmp_path: Path) -> None:
    app, worker = new_topic("app"), new_topic("worker")
    records = [make_record(i) for i in range(200)]
    produce_records(sqlite_broker.url, app, records[:100])
    produce_records(sqlite_broker.url, worker, records[100:])
    warn, db = tmp_path / "warn.jsonl", tmp_path / "db.jsonl"
    config = tmp_path / "runner.toml"
    config.write_text(textwrap.dedent(f"""
        url = "{sqlite_broker.url}"
        until_empty = true
        [[pipeline]]
        name = "warnings"
        topics = ["{app}", "{worker}"]
        min_level = "WARNING"
        wait = 0.2
        sinks = ["file:{warn}"]
        [[pipeline]]
        name = "db"
        topic = "{app}"
        logger_prefix = ["app.db"]
        wait = 0.2
        [[pipeline.sink]]
        type = "file"
        path = "{db}"
    """))
    done = run_once(["--config", str(config)], tmp_path)
    assert done.returncode == 0, done.stderr
    got = read_jsonl(warn)
    assert sorted(got, key=lambda r: r["extra"]["order_id"]) == [
        r for r in records if r["levelno"] >= 30]
    assert read_jsonl(db) == [r for r in records[:100] if r["logger"] == "app.db"]
    # filtered-out records are committed too
    assert position(sqlite_broker.url, app, "warnings") == 100
    assert position(sqlite_broker.url, worker, "warnings") == 100
    assert position(sqlite_broker.url, app, "db") == 100


def test_missing_topic_is_created_and_env_gives_the_url(sqlite_broker, runners,
                                                        tmp_path: Path) -> None:
    topic = new_topic("later")
    out = tmp_path / "later.jsonl"
    runner = start_runner(runners, ["--topic", topic, "--name", "later", "--sink", f"file:{out}",
                                    "--progress"], tmp_path, env={"LQ_URL": sqlite_broker.url})
    records = [make_record(i) for i in range(25)]
    produce_records(sqlite_broker.url, topic, records)
    wait_until(lambda: count_lines(out) == 25, timeout=20, message="records in the file")
    wait_until(lambda: position(sqlite_broker.url, topic, "later") == 25, timeout=10,
               message="the commit")
    runner.signal(signal.SIGTERM)
    assert runner.wait(10) == 0, runner.stderr
    assert read_jsonl(out) == records
    assert "done: 25 records" in runner.stderr


def test_a_deleted_topic_stops_the_pipeline_with_a_clear_error(sqlite_broker, runners,
                                                                tmp_path: Path) -> None:
    import requests

    topic = new_topic("gone")
    out = tmp_path / "gone.jsonl"
    produce_records(sqlite_broker.url, topic, [make_record(i) for i in range(3)])
    runner = start_runner(runners, ["--url", sqlite_broker.url, "--topic", topic, "--name", "g",
                                    "--wait", "0.2", "--sink", f"file:{out}"], tmp_path)
    wait_until(lambda: count_lines(out) == 3, timeout=30, message="the first records")
    assert requests.delete(sqlite_broker.url + "/topics", json={"topic": topic}).ok
    assert runner.wait(30) == 1, runner.stderr
    assert "gone (deleted, or expired" in runner.stderr
    assert "Traceback" not in runner.stderr


def test_a_broker_that_does_not_answer_is_reported_every_few_seconds(
        runners, start_broker, tmp_path: Path) -> None:
    """One short line, again and again while it lasts (not one urllib3 dump, then silence);
    once a broker answers on that port, the runner says so and drains the topic."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    out = tmp_path / "late.jsonl"
    runner = start_runner(runners, ["--url", url, "--topic", "late", "--name", "late",
                                    "--sink", f"file:{out}"], tmp_path, ready=False)
    line = f"lq consume: broker {url} not answering (connection refused); retrying"
    wait_until(lambda: runner.stderr.count(line) >= 2, timeout=40,
               message=f"two reports: {runner.stderr}")
    assert "HTTPConnectionPool" not in runner.stderr and "Traceback" not in runner.stderr
    assert all(text.startswith("lq consume: ") for text in runner.stderr.splitlines())

    broker = start_broker(f"sqlite:///{tmp_path / 'lq.db'}", port=port)
    produce_records(broker.url, "late", [make_record(i) for i in range(5)])
    wait_until(lambda: count_lines(out) == 5, timeout=40, message="the records")
    assert f"lq consume: broker {url} answers again" in runner.stderr
    runner.signal(signal.SIGTERM)
    assert runner.wait(10) == 0, runner.stderr


def test_until_empty_ends_at_the_first_empty_fetch(sqlite_broker, tmp_path: Path) -> None:
    """--until-empty does not long-poll: with --wait 30, the old runner sat out the whole
    30 s on the last, empty fetch; the subprocess's deadline is shorter than that."""
    topic = new_topic("empty")
    records = [make_record(i) for i in range(7)]
    produce_records(sqlite_broker.url, topic, records)
    out = tmp_path / "empty.jsonl"
    done = run_once(["--url", sqlite_broker.url, "--topic", topic, "--sink", f"file:{out}",
                     "--until-empty", "--wait", "30"], tmp_path, timeout=20)
    assert done.returncode == 0, done.stderr
    assert read_jsonl(out) == records


def test_dry_run_checks_the_broker_and_the_token(start_broker, tmp_path: Path) -> None:
    base = ["--topic", "t", "--sink", "stdout", "--dry-run"]
    nobody = f"http://127.0.0.1:{free_port()}"
    done = run_once(["--url", nobody, *base], tmp_path)
    assert done.returncode == 1
    assert done.stderr == f"lq consume: broker {nobody} not answering (connection refused)\n"
    assert "configuration OK" not in done.stdout

    broker = start_broker(f"sqlite:///{tmp_path / 'lq.db'}", token="s3cret")
    done = run_once(["--url", broker.url, "--token", "wrong", *base], tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith(f"lq consume: broker {broker.url} refused the token")
    assert len(done.stderr.splitlines()) == 1
    done = run_once(["--url", broker.url, *base], tmp_path, env={"LQ_TOKEN": "s3cret"})
    assert done.returncode == 0, done.stderr
    assert f"broker {broker.url} answers and accepts the token" in done.stdout
    assert "configuration OK" in done.stdout


def test_lease_and_max_deliveries_options_are_checked_and_reach_every_pipeline(
        sqlite_broker, tmp_path: Path) -> None:
    """The command itself, in this process (click's runner: a dozen subprocesses would take
    half a minute); the flags' effect on a running runner is the next test's."""
    def consume(*args: str) -> Result:
        return CliRunner().invoke(consume_command, list(args))

    named = ["--url", sqlite_broker.url, "--topic", "t", "--sink", "stdout", "--name", "n"]
    for option, value, allowed in [("--lease", "500ms", "a duration from 1s to 1h"),
                                   ("--lease", "2h", "a duration from 1s to 1h"),
                                   ("--lease", "soon", "a duration from 1s to 1h"),
                                   ("--max-deliveries", "0", "a whole number, 1 or more"),
                                   ("--max-deliveries", "many", "a whole number, 1 or more")]:
        done = consume(*named, option, value, "--dry-run")
        assert done.exit_code == 2, done.output
        assert f"Invalid value for {option}: {allowed}" in done.stderr, done.stderr
        assert f"(got '{value}')" in done.stderr
    done = consume(*named[:-2], "--lease", "1m", "--dry-run")
    assert done.exit_code == 2 and "--lease needs --name" in done.stderr, done.stderr

    done = consume(*named, "--lease", "90s", "--dry-run")
    assert done.exit_code == 0, done.output
    assert "consumer n (leases of 90s, dead-letter after 5 deliveries)" in done.stdout

    config = tmp_path / "two.toml"
    config.write_text(textwrap.dedent(f"""
        url = "{sqlite_broker.url}"
        [[pipeline]]
        name = "a"
        topics = ["t"]
        sinks = ["stdout"]
        lease = "5m"
        [[pipeline]]
        name = "b"
        topics = ["u"]
        sinks = ["stdout"]
        max_deliveries = 9
    """))
    done = consume("--config", str(config), "--dry-run")
    assert done.exit_code == 0, done.output
    assert "consumer a (leases of 5m, dead-letter after 5 deliveries)" in done.stdout
    assert "consumer b (leases of 30s, dead-letter after 9 deliveries)" in done.stdout
    done = consume("--config", str(config), "--max-deliveries", "2", "--dry-run")
    assert done.exit_code == 0, done.output
    assert "consumer a (leases of 5m, dead-letter after 2 deliveries)" in done.stdout
    assert "consumer b (leases of 30s, dead-letter after 2 deliveries)" in done.stdout
    done = consume("--config", str(config), "--lease", "0", "--dry-run")
    assert done.exit_code == 2 and "Invalid value for --lease" in done.stderr, done.stderr

    config.write_text(config.read_text().replace('"5m"', '"forever"'))
    done = consume("--config", str(config), "--dry-run")
    assert done.exit_code == 2, done.output
    assert "Invalid value for --config" in done.stderr
    assert "pipeline 1 ('a'): lease: a duration from 1s to 1h" in done.stderr


def test_a_dead_runners_short_lease_comes_back_and_is_dead_lettered(
        sqlite_broker, runners, tmp_path: Path) -> None:
    """Through the flags: the first runner holds its lease (its sink hangs) for --lease 1s at
    a time; killed, its batch is handed out again after that second, and the second runner,
    with --max-deliveries 1, writes that second hand-out to the dead-letter file. With the
    default 30 s lease the second runner would still be waiting at its deadline."""
    topic = new_topic("flags")
    records = [make_record(i) for i in range(10)]
    produce_records(sqlite_broker.url, topic, records)
    common = ["--url", sqlite_broker.url, "--topic", topic, "--name", "flags"]
    with Endpoint(mode="hang") as hanging, Endpoint() as fine:
        holder = start_runner(runners, [*common, "--sink", hanging.url, "--lease", "1s"],
                              tmp_path)
        wait_until(lambda: hanging.requests >= 1, timeout=30, message="the batch in the sink")
        holder.kill9()
        dead = tmp_path / "dead.jsonl"
        done = run_once([*common, "--sink", fine.url, "--max-deliveries", "1", "--until-empty",
                         "--dead-letter", str(dead)], tmp_path, timeout=25)
        assert done.returncode == 0, done.stderr
        assert fine.records == [], "the twice-handed-out batch went to the sink"
    letters = read_jsonl(dead)
    assert [json.loads(d["message"]) for d in letters] == records
    assert all("handed out 2 times (max_deliveries 1)" in d["reason"] for d in letters)
    assert position(sqlite_broker.url, topic, "flags") == 10
