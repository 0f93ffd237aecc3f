"""Records logged inside an OpenTelemetry span carry its trace and span ids, through the
handler (stamped in the logging thread, formatted on the sender's) and JSONFormatter."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from support import BrokerProcess, TopicReader

from lq_logging import JSONFormatter, LogQueueHandler

sdk_trace = pytest.importorskip("opentelemetry.sdk.trace", reason="the test extra brings it")


def test_handler_records_carry_the_active_spans_ids(broker: BrokerProcess,
                                                    tmp_path: Path) -> None:
    tracer = sdk_trace.TracerProvider().get_tracer("test")
    handler = LogQueueHandler(url=broker.url, topic="traced", spool_dir=str(tmp_path / "sp"),
                              flush_interval=0.05)
    log = logging.getLogger("traced.app")
    log.propagate, log.level = False, logging.INFO
    log.addHandler(handler)
    try:
        log.info("before any span")
        with tracer.start_as_current_span("request") as span:
            context = span.get_span_context()
            log.info("inside the span", extra={"order_id": 7})
        log.info("after the span")
        handler.flush()
    finally:
        log.removeHandler(handler)
        handler.close()
    before, inside, after = TopicReader(broker.url, "traced").until(3)
    assert inside["trace_id"] == format(context.trace_id, "032x")
    assert inside["span_id"] == format(context.span_id, "016x")
    assert inside["extra"] == {"order_id": 7}
    assert "trace_id" not in before and "trace_id" not in after


def test_json_formatter_alone_adds_the_ids_inside_a_span() -> None:
    tracer = sdk_trace.TracerProvider().get_tracer("test")
    record = logging.LogRecord("plain", logging.INFO, __file__, 1, "hello", None, None)
    formatter = JSONFormatter()
    assert "trace_id" not in json.loads(formatter.format(record))
    with tracer.start_as_current_span("job") as span:
        data = json.loads(formatter.format(record))
    assert data["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert data["extra"] == {}
