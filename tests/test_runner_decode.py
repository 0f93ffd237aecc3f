"""The runner decodes a batch's records with orjson (lq_logging.worker.decode_entries): the
entries must be exactly what Entry.decode (json) makes, for the records orjson refuses or
would read otherwise too."""

from __future__ import annotations

import pytest

from lq_logging.sinks import Entry
from lq_logging.worker import decode_entries
from sdk import Message

TS = "2026-12-02T13:51:00.123456+00:00"
ODD = [
    '{"a":123456789012345678901234567890}',  # orjson would make it a float
    '{"a":-9223372036854775809}',  # just past 64 bits
    '{"a":18446744073709551615}',
    '{"a":NaN}', '{"a":1e400}', '{"a":1.5e-400}', '{"a":-0.0}',
    '{"a":"\\ud800"}', '{"a":"\ud800"}',  # a lone surrogate, escaped and as it is
    '{"a":1,"a":2}', ' {"a":1}', '{"a":1} ', '{"a":1}x', "{", "{}",
    '{"a":"\u00e9\U0001f600","b":[1,{"c":null}]}',
    "plain text", "[1, 2]", '"a string"', "", "12345678901234567890",
]


@pytest.mark.parametrize("raw", ODD)
@pytest.mark.parametrize("where", ["alone", "first", "last"])
def test_entries_are_what_json_makes(raw: str, where: str) -> None:
    plain = '{"level":"INFO","message":"order 7","n":7}'
    texts = {"alone": [raw], "first": [raw, plain], "last": [plain, raw]}[where]
    messages = [Message("t", 40 + i, text, TS) for i, text in enumerate(texts)]
    got = decode_entries("t", messages)
    want = [Entry.decode("t", 40 + i, text, messages[i].ts) for i, text in enumerate(texts)]
    assert [(e.topic, e.offset, e.raw, e.ts) for e in got] == [
        (e.topic, e.offset, e.raw, e.ts) for e in want]
    # repr tells 1 from 1.0 and keeps NaN comparable: the records, value for value and type
    assert [repr(e.record) for e in got] == [repr(e.record) for e in want]


def test_a_batch_of_log_records() -> None:
    texts = [f'{{"level":"INFO","logger":"shop","message":"order {i}","extra":{{"id":{i}}}}}'
             for i in range(100)]
    got = decode_entries("t", [Message("t", i, text, TS) for i, text in enumerate(texts)])
    assert [e.record["extra"]["id"] for e in got] == list(range(100))
    assert all(e.raw == texts[e.offset] and e.ts is not None for e in got)
