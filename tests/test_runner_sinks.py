"""Each sink receives exactly what was produced, fields intact (real broker, real files, real
PostgreSQL, a real HTTP server, `lq consume` as a subprocess)."""

from __future__ import annotations

import json
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from runner_helpers import (
    Endpoint,
    make_record,
    new_topic,
    position,
    produce,
    produce_records,
    read_jsonl,
    run_once,
)
from support import wait_until

from lq_logging.sinks.sql import normalize_url

RAW = "a classic producer's plain text, not JSON {"


def _produce_mix(url: str, topic: str, n: int = 200) -> list[dict]:
    """n handler records plus one raw (non-JSON) message; returns what sinks should get."""
    records = [make_record(i) for i in range(n)]
    produce_records(url, topic, records)
    produce(url, topic, [RAW])
    return [*records, {"message": RAW}]


def _drain(url: str, topic: str, sinks: list[str], tmp_path: Path, *extra: str) -> str:
    args = ["--url", url, "--topic", topic, "--name", "sinks-test", "--until-empty",
            "--wait", "0.2"]
    for spec in sinks:
        args += ["--sink", spec]
    done = run_once([*args, *extra], tmp_path)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_file_sink_gets_every_record_intact(sqlite_broker, tmp_path: Path) -> None:
    topic = new_topic()
    expected = _produce_mix(sqlite_broker.url, topic)
    out = tmp_path / "logs" / "app.jsonl"
    _drain(sqlite_broker.url, topic, [f"file:{out}"], tmp_path)
    assert read_jsonl(out) == expected
    assert position(sqlite_broker.url, topic, "sinks-test") == len(expected)


def test_file_sink_text_format_and_rotation(sqlite_broker, tmp_path: Path) -> None:
    topic = new_topic()
    expected = _produce_mix(sqlite_broker.url, topic, n=300)
    out = tmp_path / "rot.log"
    _drain(sqlite_broker.url, topic, [f"file:{out}?max_bytes=20kB&backups=50"], tmp_path,
           "--batch", "37")
    files = [out, *sorted(tmp_path.glob("rot.log.*"), key=lambda p: -int(p.suffix[1:]))]
    assert len(files) > 3, "expected several rotations"
    assert all(p.stat().st_size <= 20 * 1024 for p in files)
    # oldest backup first: the concatenation is the topic in order
    lines = []
    for p in [*files[1:], files[0]]:
        lines += [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines()]
    assert lines == expected

    text_out = tmp_path / "app.txt"
    _drain(sqlite_broker.url, topic, [f"file:{text_out}?format=text"], tmp_path,
           "--name", "text-reader")
    text = text_out.read_text(encoding="utf-8")
    assert "2024-05-01T12:00:01.000001Z INFO     app.db: message 1 héllo ✓" in text
    assert "ValueError: bad" in text
    assert text.rstrip().endswith(RAW)


def test_stdout_sink_json_and_text(sqlite_broker, tmp_path: Path) -> None:
    topic = new_topic()
    expected = _produce_mix(sqlite_broker.url, topic, n=50)
    out = _drain(sqlite_broker.url, topic, ["stdout:json"], tmp_path)
    assert [json.loads(line) for line in out.splitlines()] == expected
    out = _drain(sqlite_broker.url, topic, ["stdout"], tmp_path, "--name", "text")
    lines = out.splitlines()
    assert "\x1b[" not in out, "no colours when stdout is not a terminal"
    assert lines[0] == f"{expected[0]['time']} DEBUG    app: {expected[0]['message']}"
    assert lines[-1].endswith(" -        " + RAW)


def test_sql_sink_stores_each_record_once(sqlite_broker, sink_db: str,
                                          tmp_path: Path) -> None:
    topic = new_topic()
    expected = _produce_mix(sqlite_broker.url, topic, n=250)
    _drain(sqlite_broker.url, topic, [f"sql:{sink_db}"], tmp_path, "--batch", "100")
    # An anonymous consumer reads the whole topic again: the table stays the same.
    done = run_once(["--url", sqlite_broker.url, "--topic", topic, "--sink", f"sql:{sink_db}",
                     "--until-empty", "--wait", "0.2"], tmp_path)
    assert done.returncode == 0, done.stderr
    engine = sa.create_engine(normalize_url(sink_db))
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(
                'SELECT topic, "offset", time, level, logger, message, host, record '
                "FROM lq_records WHERE topic = :t ORDER BY \"offset\""), {"t": topic}).all()
    finally:
        engine.dispose()
    assert [r.offset for r in rows] == list(range(len(expected)))
    for row, rec in zip(rows, expected, strict=True):
        stored = row.record if isinstance(row.record, dict) else json.loads(row.record)
        assert stored == rec
        assert (row.topic, row.level, row.logger, row.message, row.host) == (
            topic, rec.get("level"), rec.get("logger"), rec["message"], rec.get("host"))
    assert str(rows[1].time).replace("T", " ").startswith("2024-05-01 12:00:01.000001")
    assert rows[-1].time is None and rows[-1].level is None


def test_http_sink_posts_every_record(sqlite_broker, tmp_path: Path) -> None:
    topic = new_topic()
    expected = _produce_mix(sqlite_broker.url, topic, n=230)
    with Endpoint() as endpoint:
        _drain(sqlite_broker.url, topic, [endpoint.url], tmp_path, "--batch", "100")
        assert endpoint.records == expected
        assert [len(b) for b in endpoint.batches] == [100, 100, 31]
        assert endpoint.headers[0]["X-LQ-Topic"] == topic
        assert endpoint.headers[1]["X-LQ-Offsets"] == "100-199"


def test_http_4xx_goes_to_dead_letter_and_is_committed(sqlite_broker,
                                                       tmp_path: Path) -> None:
    topic = new_topic()
    records = [make_record(i, message="poison pill" if i in (3, 17, 41) else f"ok {i}")
               for i in range(60)]
    produce_records(sqlite_broker.url, topic, records)
    dead = tmp_path / "dead.jsonl"
    with Endpoint(mode="poison") as endpoint:
        _drain(sqlite_broker.url, topic, [endpoint.url], tmp_path, "--batch", "25",
               "--dead-letter", str(dead))
        assert endpoint.records == [r for r in records if r["message"] != "poison pill"]
    letters = read_jsonl(dead)
    assert [d["offset"] for d in letters] == [3, 17, 41]
    assert all(d["topic"] == topic and d["reason"].startswith("http: HTTP 400")
               and d["sink"] == endpoint.url for d in letters)
    assert [json.loads(d["message"]) for d in letters] == [records[3], records[17], records[41]]
    assert position(sqlite_broker.url, topic, "sinks-test") == 60


def test_sql_sink_dead_letters_a_record_postgresql_cannot_store(
        sqlite_broker, pg_url: str, tmp_path: Path) -> None:
    topic = new_topic()
    records = [make_record(i) for i in range(20)]
    records[7]["message"] = "NUL \x00 inside"
    produce_records(sqlite_broker.url, topic, records)
    dead = tmp_path / "dead.jsonl"
    _drain(sqlite_broker.url, topic, [f"sql:{pg_url}"], tmp_path, "--dead-letter", str(dead))
    letters = read_jsonl(dead)
    assert [d["offset"] for d in letters] == [7] and "sql:" in letters[0]["reason"]
    engine = sa.create_engine(normalize_url(pg_url))
    with engine.connect() as conn:
        offsets = conn.execute(sa.text('SELECT "offset" FROM lq_records WHERE topic = :t '
                                       'ORDER BY "offset"'), {"t": topic}).scalars().all()
    engine.dispose()
    assert offsets == [i for i in range(20) if i != 7]


def test_logging_sink_rebuilds_log_records(sqlite_broker, tmp_path: Path) -> None:
    topic = new_topic()
    expected = _produce_mix(sqlite_broker.url, topic, n=40)
    out = tmp_path / "local.log"
    config = tmp_path / "runner.toml"
    fmt = "%(levelname)s|%(name)s|%(funcName)s:%(lineno)d|%(message)s|%(order_id)s|%(service)s"
    config.write_text(textwrap.dedent(f"""
        url = "{sqlite_broker.url}"
        until_empty = true
        [[pipeline]]
        name = "relog"
        topics = ["{topic}"]
        wait = 0.2
        [[pipeline.sink]]
        type = "logging"
        logger_prefix = "remote."
        [pipeline.sink.dict_config]
        formatters.plain.format = "{fmt}"
        handlers.file.class = "logging.FileHandler"
        handlers.file.filename = "{out}"
        handlers.file.formatter = "plain"
        handlers.file.encoding = "utf-8"
        root = {{ handlers = ["file"], level = "DEBUG" }}
    """))
    done = run_once(["--config", str(config)], tmp_path)
    assert done.returncode == 0, done.stderr
    lines = out.read_text(encoding="utf-8").split("\n")
    rec = expected[1]
    assert lines[0] == f"DEBUG|remote.app|create:40|{expected[0]['message']}|0|shop"
    assert lines[1] == f"INFO|remote.app.db|create:41|{rec['message']}|1|shop"
    assert lines[3:6] == [f"ERROR|remote.other|create:43|{expected[3]['message']}|3|shop",
                          "Traceback (most recent call last):", "  File ..."]


def test_user_sink_by_dotted_path(sqlite_broker, tmp_path: Path) -> None:
    topic = new_topic()
    expected = _produce_mix(sqlite_broker.url, topic, n=30)
    (tmp_path / "mysinks.py").write_text(textwrap.dedent("""
        import json, os

        class Collect:
            def __init__(self):
                self.fh = open(os.environ["COLLECT_PATH"], "a")
            def write(self, batch):
                for e in batch:
                    self.fh.write(json.dumps([e.topic, e.offset, e.record]) + "\\n")
            def flush(self):
                self.fh.flush()
            def close(self):
                self.fh.close()
    """))
    out = tmp_path / "collected.jsonl"
    done = run_once(["--url", sqlite_broker.url, "--topic", topic, "--sink", "mysinks:Collect",
                     "--until-empty", "--wait", "0.2"], tmp_path,
                    env={"PYTHONPATH": str(tmp_path), "COLLECT_PATH": str(out)})
    assert done.returncode == 0, done.stderr
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert got == [[topic, i, rec] for i, rec in enumerate(expected)]


def test_sinks_run_in_process_too(tmp_path: Path) -> None:
    """The sink classes are usable on their own (no broker): the SPEC parser builds them."""
    from lq_logging.sinks import Entry, build_sink

    sink = build_sink(f"file:{tmp_path / 'x.jsonl'}?fsync=false")
    sink.write([Entry.decode("t", 0, json.dumps({"message": "m"})), Entry.decode("t", 1, "raw")])
    sink.close()
    assert read_jsonl(tmp_path / "x.jsonl") == [{"message": "m"}, {"message": "raw"}]
    assert sys.executable  # the subprocess tests use the console script next to it


def test_sql_sink_copy_and_insert_store_the_same_rows(sqlite_broker, pg_url: str,
                                                      tmp_path: Path) -> None:
    """PostgreSQL: the COPY path (default) and the multi-row INSERT path (copy = false) store
    identical rows, whatever the text holds (COPY's own escapes: tab, newline, backslash,
    \\N), and a re-delivered topic adds nothing to either."""
    topic = new_topic()
    tricky = ["tab\there", "new\nline", "cr\rhere", "back\\slash", "\\N", "\\.", "end\\", "",
              "quote ' \" ", "é ✓ 𝄞"]
    records = [make_record(i, message=tricky[i % len(tricky)],
                           logger=tricky[(i + 3) % len(tricky)]) for i in range(300)]
    records[15]["time"] = "not a time"
    records[16]["message"] = {"structured": [1, 2.5, None]}
    produce_records(sqlite_broker.url, topic, records)
    produce(sqlite_broker.url, topic, ["plain\ttext\\N"])
    config = tmp_path / "runner.toml"
    for consumer in ("first", "again"):  # "again": every record delivered a second time
        config.write_text(textwrap.dedent(f"""
            url = "{sqlite_broker.url}"
            until_empty = true
            [[pipeline]]
            name = "{consumer}"
            topics = ["{topic}"]
            batch = 64
            wait = 0.2
            [[pipeline.sink]]
            spec = "sql:{pg_url}"
            table = "via_copy"
            [[pipeline.sink]]
            spec = "sql:{pg_url}"
            table = "via_insert"
            copy = false
        """))
        done = run_once(["--config", str(config)], tmp_path)
        assert done.returncode == 0, done.stderr
    engine = sa.create_engine(normalize_url(pg_url))
    try:
        with engine.connect() as conn:
            tables = [conn.execute(sa.text(
                f'SELECT topic, "offset", time, level, logger, message, host, record FROM {t} '
                'WHERE topic = :t ORDER BY "offset"'), {"t": topic}).all()
                for t in ("via_copy", "via_insert")]
    finally:
        engine.dispose()
    assert tables[0] == tables[1]
    rows = tables[0]
    assert [r.offset for r in rows] == list(range(301))
    assert [r.record for r in rows] == [*records, {"message": "plain\ttext\\N"}]
    assert [r.message for r in rows[:10]] == tricky
    assert rows[15].time is None and rows[16].message == '{"structured": [1, 2.5, null]}'


def test_http_sink_backoff_ends_when_the_stop_event_is_set() -> None:
    """A sink's retry wait (pause) ends at once with Interrupted inside ``interruptible``; on
    its own it is a plain wait and the sink's own error comes after its retries."""
    from lq_logging.sinks import Entry, Interrupted, interruptible
    from lq_logging.sinks.http import HTTPDeliveryError, HTTPSink

    batch = [Entry.decode("t", 0, '{"message": "m"}')]
    with Endpoint(mode="unavailable") as endpoint:
        sink = HTTPSink(endpoint.url, retries=5, backoff=120, backoff_max=120)
        stop = threading.Event()
        outcome: list[BaseException] = []

        def write() -> None:
            with interruptible(stop):
                try:
                    sink.write(batch)
                except BaseException as exc:  # noqa: BLE001 - the test inspects it
                    outcome.append(exc)

        thread = threading.Thread(target=write, daemon=True)
        thread.start()
        wait_until(lambda: endpoint.refused >= 1, timeout=30, message="a 503")
        stop.set()
        thread.join(60)  # the backoff is 60-120 s: only the stop event ends it in time
        assert not thread.is_alive()
        assert isinstance(outcome[0], Interrupted) and "HTTP 503" in str(outcome[0])
        assert endpoint.requests == 1
        sink.close()
    with Endpoint(mode="unavailable") as endpoint:
        sink = HTTPSink(endpoint.url, retries=2, backoff=0.01)
        with pytest.raises(HTTPDeliveryError, match="failed 3 times"):
            sink.write(batch)
        assert endpoint.requests == 3
        sink.close()
