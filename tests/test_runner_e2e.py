"""End to end: an application logs through LogQueueHandler (dictConfig) -> broker ->
`lq consume` -> file sink; the file holds every record. Also: the logging sink never sends a
record back into a LogQueueHandler."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from runner_helpers import (
    new_topic,
    read_jsonl,
    run_once,
)
from support import clean_env

from sdk import Client

APP = '''
import logging, logging.config, sys

url, topic, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
logging.config.dictConfig({
    "version": 1,
    "handlers": {"lq": {"class": "lq_logging.LogQueueHandler", "url": url, "topic": topic,
                        "spool_dir": sys.argv[4], "fields": {"service": "shop"}}},
    "root": {"handlers": ["lq"], "level": "DEBUG"},
})
log = logging.getLogger("shop.orders")
for i in range(n):
    if i % 100 == 7:
        try:
            1 / 0
        except ZeroDivisionError:
            log.exception("order %d failed", i, extra={"order_id": i})
    else:
        log.info("order %d created", i, extra={"order_id": i, "amount": 9.5})
logging.shutdown()
'''


def test_app_logs_reach_the_file_sink(sqlite_broker, tmp_path: Path) -> None:
    topic, n = new_topic("e2e"), 2_000
    app = tmp_path / "app.py"
    app.write_text(APP)
    subprocess.run([sys.executable, str(app), sqlite_broker.url, topic, str(n),
                    str(tmp_path / "spool")], env=clean_env(), check=True, timeout=60)
    out = tmp_path / "app.jsonl"
    done = run_once(["--url", sqlite_broker.url, "--topic", topic, "--name", "e2e",
                     "--sink", f"file:{out}", "--until-empty", "--wait", "0.5"], tmp_path)
    assert done.returncode == 0, done.stderr
    got = read_jsonl(out)
    assert [r["extra"]["order_id"] for r in got] == list(range(n))
    first, failed = got[0], got[7]
    assert first["message"] == "order 0 created" and first["level"] == "INFO"
    assert first["logger"] == "shop.orders" and first["service"] == "shop"
    assert first["extra"] == {"order_id": 0, "amount": 9.5}
    assert failed["level"] == "ERROR" and "ZeroDivisionError" in failed["exception"]


def test_logging_sink_never_routes_into_a_logqueue_handler(sqlite_broker,
                                                          tmp_path: Path) -> None:
    source, loop = new_topic("src"), new_topic("loop")
    with Client(sqlite_broker.url) as client:
        client.producer().send_many(source, ['{"message": "hello", "level": "INFO", '
                                             '"levelno": 20, "logger": "a"}'] * 3)
        client.create_topic(loop)
    out = tmp_path / "local.log"
    config = tmp_path / "runner.toml"
    config.write_text(textwrap.dedent(f"""
        url = "{sqlite_broker.url}"
        until_empty = true
        [[pipeline]]
        name = "relog"
        topics = ["{source}"]
        wait = 0.2
        [[pipeline.sink]]
        type = "logging"
        [pipeline.sink.dict_config]
        handlers.file.class = "logging.FileHandler"
        handlers.file.filename = "{out}"
        handlers.lq.class = "lq_logging.LogQueueHandler"
        handlers.lq.url = "{sqlite_broker.url}"
        handlers.lq.topic = "{loop}"
        handlers.lq.spool_dir = "{tmp_path / 'spool'}"
        root = {{ handlers = ["file", "lq"], level = "WARNING" }}
    """))
    done = run_once(["--config", str(config)], tmp_path)
    assert done.returncode == 0, done.stderr
    assert out.read_text().splitlines() == ["hello"] * 3
    stats = {t.topic: t for t in Client(sqlite_broker.url).stats()}
    assert stats[loop].messages == 0, "a record went back to the broker"
