"""OTLP/HTTP logs in (`POST /v1/logs`) against a real broker on both databases: the real
OpenTelemetry SDK's exporter (protobuf, gzip) with a LoggingHandler inside a span, a
hand-written OTLP/JSON payload, partial success, auth, and bad payloads refused with JSON."""

from __future__ import annotations

import gzip
import json
import logging
import os
import secrets
from typing import Any

import pytest
import requests
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from support import BrokerProcess

from sdk import Client

pytestmark = pytest.mark.filterwarnings("ignore:`LoggingHandler` in `opentelemetry-sdk`")

TRACE_HEX = "5b8efff798038103d269b633813fc60c"
SPAN_HEX = "eee19b7ec3c1b174"


def read_topic(url: str, topic: str, token: str | None = None) -> list[dict[str, Any]]:
    """Every message of `topic` as parsed JSON, in offset order (fetch never moves anyone)."""
    with Client(url, token=token) as client:
        messages, _ = client.consumer().fetch(topic, offset=0, max=1000)
    return [json.loads(m.value) for m in messages]


def export_with_sdk(url: str, service: str, *, token: str | None = None) -> tuple[str, str, str]:
    """Log through the real OpenTelemetry SDK (LoggingHandler -> OTLPLogExporter, protobuf,
    gzip): three records inside a span, one outside. Returns the span's ids and the logger."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    exporter = OTLPLogExporter(endpoint=url + "/v1/logs", headers=headers,
                               compression=Compression.Gzip, timeout=10)
    provider = LoggerProvider(resource=Resource.create({"service.name": service,
                                                        "deployment.environment": "test"}))
    provider.add_log_record_processor(BatchLogRecordProcessor(exporter))
    logger = logging.getLogger(f"shop.orders.{secrets.token_hex(3)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    handler = LoggingHandler(level=logging.DEBUG, logger_provider=provider)
    logger.addHandler(handler)
    tracer = TracerProvider().get_tracer("test")
    try:
        with tracer.start_as_current_span("checkout") as span:
            logger.info("order %d created", 1, extra={"order_id": 1})
            logger.warning("order %d slow", 2)
            logger.error("order %d failed", 3)
        logger.debug("outside the span")
        assert provider.force_flush(10_000)
    finally:
        logger.removeHandler(handler)
        provider.shutdown()
    context = span.get_span_context()
    return format(context.trace_id, "032x"), format(context.span_id, "016x"), logger.name


def test_sdk_exporter_records_in_service_topic_with_trace_ids(broker: BrokerProcess) -> None:
    service = f"shop/orders {secrets.token_hex(4)}"  # '/' and ' ' are outside the topic rule
    trace_id, span_id, logger_name = export_with_sdk(broker.url, service)
    records = read_topic(broker.url, service.replace("/", "-").replace(" ", "-"))
    assert [r["message"] for r in records] == ["order 1 created", "order 2 slow",
                                               "order 3 failed", "outside the span"]
    assert [r["level"] for r in records] == ["INFO", "WARN", "ERROR", "DEBUG"]
    assert [r["levelno"] for r in records] == [20, 30, 40, 10]
    for record in records[:3]:
        assert record["trace_id"] == trace_id
        assert record["span_id"] == span_id
    assert "trace_id" not in records[3]
    first = records[0]
    assert first["logger"] == logger_name
    assert first["service"] == service
    assert first["extra"]["service.name"] == service
    assert first["extra"]["deployment.environment"] == "test"
    assert first["extra"]["order_id"] == 1
    assert first["time"].endswith("Z") and first["time"][:4].isdigit()


def json_payload(service: str, other: str) -> dict[str, Any]:
    """A hand-written OTLP/JSON request as the spec writes it: hex ids, lowerCamelCase,
    int64 as strings, enums as numbers; two resources, so two topics."""
    return {"resourceLogs": [
        {"resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": service}},
            {"key": "host.name", "value": {"stringValue": "web-1"}}]},
         "scopeLogs": [{"scope": {"name": "payments.api", "version": "1.2"}, "logRecords": [
             {"timeUnixNano": "1714564800123456789", "severityNumber": 17,
              "severityText": "Error", "body": {"stringValue": "card declined"},
              "traceId": TRACE_HEX, "spanId": SPAN_HEX, "unknownField": 1,
              "attributes": [{"key": "amount", "value": {"doubleValue": 9.5}},
                             {"key": "retries", "value": {"intValue": "3"}},
                             {"key": "tags", "value": {"arrayValue": {"values": [
                                 {"stringValue": "a"}, {"boolValue": True}]}}}]},
             {"observedTimeUnixNano": "1714564800000000000", "severityNumber": 9,
              "body": {"kvlistValue": {"values": [
                  {"key": "event", "value": {"stringValue": "login"}}]}}}]}]},
        {"resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": other}}]},
         "scopeLogs": [{"scope": {"name": "worker"}, "logRecords": [
             {"severityNumber": 21, "body": {"stringValue": "out of memory"}}]}]},
    ]}


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_handwritten_json_payload(broker: BrokerProcess, compress: bool) -> None:
    service, other = f"pay-{secrets.token_hex(4)}", f"work-{secrets.token_hex(4)}"
    body = json.dumps(json_payload(service, other)).encode()
    headers = {"Content-Type": "application/json"}
    if compress:
        body, headers["Content-Encoding"] = gzip.compress(body), "gzip"
    reply = requests.post(broker.url + "/v1/logs", data=body, headers=headers, timeout=10)
    assert reply.status_code == 200, reply.text
    assert reply.headers["Content-Type"].startswith("application/json")
    assert reply.json() == {}  # full success: no partialSuccess
    error, event = read_topic(broker.url, service)
    assert error["time"] == "2024-05-01T12:00:00.123456Z"
    assert (error["level"], error["levelno"], error["logger"]) == ("Error", 40, "payments.api")
    assert (error["message"], error["trace_id"], error["span_id"]) == (
        "card declined", TRACE_HEX, SPAN_HEX)
    assert error["host"] == "web-1"
    assert error["extra"] == {"service.name": service, "host.name": "web-1", "amount": 9.5,
                              "retries": 3, "tags": ["a", True]}
    assert event["time"] == "2024-05-01T12:00:00.000000Z"
    assert (event["level"], event["levelno"]) == ("INFO", 20)
    assert json.loads(event["message"]) == {"event": "login"}
    assert "trace_id" not in event
    [fatal] = read_topic(broker.url, other)
    assert (fatal["level"], fatal["levelno"], fatal["message"]) == ("CRITICAL", 50,
                                                                   "out of memory")


def test_protobuf_reply_in_protobuf(broker: BrokerProcess) -> None:
    service = f"proto-{secrets.token_hex(4)}"
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    attribute = resource_logs.resource.attributes.add()
    attribute.key, attribute.value.string_value = "service.name", service
    scope_logs = resource_logs.scope_logs.add()
    scope_logs.scope.name = "proto.scope"
    for n in range(3):
        scope_logs.log_records.add().body.string_value = f"line {n}"
    reply = requests.post(broker.url + "/v1/logs", data=request.SerializeToString(),
                          headers={"Content-Type": "application/x-protobuf"}, timeout=10)
    assert reply.status_code == 200
    assert reply.headers["Content-Type"] == "application/x-protobuf"
    parsed = ExportLogsServiceResponse.FromString(reply.content)
    assert not parsed.HasField("partial_success")
    records = read_topic(broker.url, service)
    assert [(r["message"], r["logger"], r["level"]) for r in records] == [
        (f"line {n}", "proto.scope", "NOTSET") for n in range(3)]


BAD = [
    ("application/x-protobuf", b"\xff\xff\xff\xff not protobuf", {}, 400),
    ("application/json", b"{not json", {}, 400),
    ("application/json", b"[1, 2]", {}, 400),
    ("application/json", json.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": [
        {"traceId": "xyz"}]}]}]}).encode(), {}, 400),
    ("application/json", json.dumps({"resourceLogs": "many"}).encode(), {}, 400),
    ("application/json", b"\x1f\x8b\x08\x00 corrupt", {"Content-Encoding": "gzip"}, 400),
    ("application/json", gzip.compress(b"{}", mtime=0)[:-6], {"Content-Encoding": "gzip"}, 400),
    ("application/json", b"{}", {"Content-Encoding": "br"}, 415),
    ("text/plain", b"hello", {}, 415),
]


@pytest.mark.parametrize(("content_type", "body", "headers", "status"), BAD)
def test_bad_payloads_get_json_errors(broker: BrokerProcess, content_type: str, body: bytes,
                                      headers: dict[str, str], status: int) -> None:
    reply = requests.post(broker.url + "/v1/logs", data=body,
                          headers={"Content-Type": content_type, **headers}, timeout=10)
    assert reply.status_code == status
    failure = reply.json()
    assert failure["status"] == "failure"
    # An unknown Content-Encoding is refused as on every other endpoint (wire.py).
    unsupported = "unsupported_encoding" if "Content-Encoding" in headers else \
        "unsupported_media_type"
    assert failure["error"] == {400: "bad_request", 415: unsupported}[status]
    assert "Traceback" not in failure["message"]


def test_gzip_bomb_refused_while_inflating(broker: BrokerProcess) -> None:
    bomb = gzip.compress(b"\0" * (17 * 1024 * 1024))  # ~17 KB that inflates past 16 MiB
    assert len(bomb) < 100_000
    reply = requests.post(broker.url + "/v1/logs", data=bomb, timeout=10, headers={
        "Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert reply.status_code == 413
    assert reply.json()["error"] == "too_large"


def test_partial_success_fixed_topic_and_token(start_broker, tmp_path) -> None:
    token = secrets.token_hex(8)
    proc = start_broker(f"sqlite:///{tmp_path / 'lq.db'}", token=token,
                        args=["--otlp-topic", "all-otel", "--max-message-bytes", "2000"])
    payload = json_payload("svc-a", "svc-b")
    payload["resourceLogs"][0]["scopeLogs"][0]["logRecords"].append(
        {"body": {"stringValue": "x" * 5000}})
    body = json.dumps(payload).encode()
    url = proc.url + "/v1/logs"
    refused = requests.post(url, data=body, headers={"Content-Type": "application/json"},
                            timeout=10)
    assert refused.status_code == 401
    assert refused.json()["error"] == "unauthorized"
    reply = requests.post(url, data=body, timeout=10, headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    assert reply.status_code == 200
    partial = reply.json()["partialSuccess"]
    assert int(partial["rejectedLogRecords"]) == 1
    assert "at most 2000 bytes" in partial["errorMessage"]
    records = read_topic(proc.url, "all-otel", token)
    assert [r["message"] for r in records][::2] == ["card declined", "out of memory"]
    assert {r["service"] for r in records} == {"svc-a", "svc-b"}
    # The real exporter sends the same header, as OTEL_EXPORTER_OTLP_HEADERS would set it.
    export_with_sdk(proc.url, "ignored-service", token=token)
    assert len(read_topic(proc.url, "all-otel", token)) == 3 + 4


def test_without_the_otlp_extra_a_clear_501(start_broker, tmp_path) -> None:
    shim = tmp_path / "no-otlp"
    shim.mkdir()  # a broker that cannot import the protobuf classes, as without the extra
    (shim / "sitecustomize.py").write_text(
        "import sys\nsys.modules['opentelemetry.proto'] = None\n")
    path = os.pathsep.join(filter(None, [str(shim), os.environ.get("PYTHONPATH")]))
    proc = start_broker(f"sqlite:///{tmp_path / 'lq.db'}", env={"PYTHONPATH": path})
    for content_type in ("application/json", "application/x-protobuf"):
        reply = requests.post(proc.url + "/v1/logs", data=b"{}", timeout=10,
                              headers={"Content-Type": content_type})
        assert reply.status_code == 501
        assert reply.json()["error"] == "not_installed"
        assert "pip install 'logqueue[otlp]'" in reply.json()["message"]
    assert requests.get(proc.url + "/topics", timeout=10).json()["status"] == "success"


# --- trace correlation in the record format (lq_logging/record.py) ---------------------------
def test_formatter_adds_the_active_span_ids() -> None:
    from lq_logging import JSONFormatter

    formatter = JSONFormatter()

    def formatted(**extra: Any) -> dict[str, Any]:
        record = logging.LogRecord("shop", logging.INFO, __file__, 1, "hello", None, None)
        record.__dict__.update(extra)
        return json.loads(formatter.format(record))

    with TracerProvider().get_tracer("test").start_as_current_span("op") as span:
        inside = formatted()
    context = span.get_span_context()
    assert inside["trace_id"] == format(context.trace_id, "032x")
    assert inside["span_id"] == format(context.span_id, "016x")
    assert "trace_id" not in inside["extra"]
    outside = formatted()
    assert "trace_id" not in outside and "span_id" not in outside
    # Ids stamped where the record was logged (a queue's other thread formats it) win, and
    # are fields of the record, not extra.
    stamped = formatted(trace_id=TRACE_HEX, span_id=SPAN_HEX, order=7)
    assert (stamped["trace_id"], stamped["span_id"]) == (TRACE_HEX, SPAN_HEX)
    assert stamped["extra"] == {"order": 7}


def test_formatter_never_imports_opentelemetry() -> None:
    import subprocess
    import sys

    script = ("import json, logging, sys\n"
              "from lq_logging import JSONFormatter\n"
              "text = JSONFormatter().format(logging.makeLogRecord({'msg': 'x'}))\n"
              "assert 'trace_id' not in json.loads(text)\n"
              "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "[]"


def test_scoped_tokens_apply_to_otlp(start_broker, tmp_path) -> None:
    """A produce token for `svc-*` writes its services' logs; a request naming a service
    outside its globs, or from a consume-only token, is refused whole (403), nothing written."""
    admin = secrets.token_hex(8)
    proc = start_broker(f"sqlite:///{tmp_path / 'lq.db'}", token=admin)

    def new_token(**scopes: Any) -> str:
        reply = requests.post(proc.url + "/tokens", json=scopes, timeout=10,
                              headers={"Authorization": f"Bearer {admin}"})
        assert reply.status_code == 200, reply.text
        return reply.json()["token"]

    def export(token: str, service: str, other: str) -> requests.Response:
        return requests.post(proc.url + "/v1/logs", json=json_payload(service, other),
                             timeout=10, headers={"Authorization": f"Bearer {token}"})

    writer = new_token(name="otel-writer", produce=["svc-*"])
    reader = new_token(name="otel-reader", consume=["*"])
    assert export(writer, "svc-a", "svc-b").status_code == 200
    mixed = export(writer, "svc-c", "billing")
    assert mixed.status_code == 403 and mixed.json()["error"] == "forbidden"
    assert export(reader, "svc-d", "svc-e").status_code == 403
    topics = requests.get(proc.url + "/topics", timeout=10,
                          headers={"Authorization": f"Bearer {admin}"}).json()
    names = set(topics.get("topics", topics.get("message", [])))
    assert {"svc-a", "svc-b"} <= names
    assert not names & {"svc-c", "billing", "svc-d", "svc-e"}
