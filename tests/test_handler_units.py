"""The record format and the spool on their own (no broker needed), and handler options."""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

import pytest

from lq_logging import JSONFormatter, LogQueueHandler
from lq_logging.spool import Spool, adopt_orphans


def test_json_formatter_works_with_any_stdlib_handler() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONFormatter(fields={"service": "shop", "message": "ignored"}))
    log = logging.getLogger("test.units.formatter")
    log.propagate = False
    log.addHandler(handler)
    try:
        try:
            raise KeyError("k")
        except KeyError:
            log.error("bad %s", "thing", exc_info=True, extra={"obj": object, "n": 1})
    finally:
        log.removeHandler(handler)
    data = json.loads(stream.getvalue())
    assert data["message"] == "bad thing" and data["level"] == "ERROR"
    assert data["levelno"] == 40 and data["logger"] == "test.units.formatter"
    assert data["function"] == "test_json_formatter_works_with_any_stdlib_handler"
    assert data["service"] == "shop"
    assert data["extra"] == {"obj": "<class 'object'>", "n": 1}
    assert "KeyError: 'k'" in data["exception"] and "stack" not in data


def test_oversized_record_is_truncated_with_a_marker() -> None:
    formatter = JSONFormatter(max_bytes=10_000)
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "é" * 50_000, None, None)
    text = formatter.format(record)
    data = json.loads(text)
    assert len(text.encode()) <= 10_000
    assert data["truncated"] is True and "[truncated by lq_logging" in data["message"]


def test_spool_survives_a_torn_write_and_is_adopted_once(tmp_path: Path) -> None:
    spool = Spool.create(str(tmp_path))
    first = spool.append("t", ["a", "b"])
    second = spool.append("t", ["c"])
    spool.assign(first, 7, 100)
    spool.done(first)
    third = spool.append("t", ["d"], 8, 200)
    assert [b.id for b in spool] == [second.id, third.id]
    assert adopt_orphans(str(tmp_path)) == []  # held by this "process"
    os.write(spool.fd, b'{"op": "b", "id": 99, "t": "t", "m": ["torn')  # kill -9 mid-write
    spool.abandon()  # the descriptor goes away without unlinking: like a dead process
    [adopted] = adopt_orphans(str(tmp_path))
    assert [(b.id, b.producer_id, b.seq) for b in adopted] == [(second.id, None, None),
                                                              (third.id, 8, 200)]
    assert adopted.read(adopted.head()) == ["c"]
    assert adopt_orphans(str(tmp_path)) == []  # now held by the adopter
    adopted.done(adopted.head())
    adopted.done(adopted.head())
    adopted.close()
    assert list(tmp_path.glob("*.spool")) == []


def test_spool_is_bounded_oldest_first(tmp_path: Path) -> None:
    spool = Spool.create(str(tmp_path))
    for i in range(10):
        spool.append("t", [f"m{i}" * 100])
    lost = spool.trim(1000)
    assert lost > 0 and spool.live_records == 10 - lost
    assert spool.read(spool.head()) == [f"m{lost}" * 100]
    spool.close()


@pytest.mark.parametrize("kwargs", [{"overflow": "never"}, {"topic": "bad topic"},
                                    {"batch_size": 0}, {"url": []}])
def test_bad_options_fail_at_configuration(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        LogQueueHandler(**kwargs)
