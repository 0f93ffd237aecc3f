"""OTLP/HTTP logs in: `POST /v1/logs`, OpenTelemetry's protobuf and JSON encodings, gzip.

Any language's OpenTelemetry SDK or Collector can send logs here. Each log record becomes one
message in LogQueue's record format (see lq_logging/record.py; `logger` is the scope's name,
`trace_id`/`span_id` are hex, resource and record attributes are under `extra`), in the topic
named by its resource's `service.name` (or the broker's one topic, `LQ_OTLP_TOPIC`), created
if missing, and appended through the store's group commit: one batch per topic. The reply is
the spec's ExportLogsServiceResponse in the request's encoding; records that could not be
stored are counted in its `partial_success`.

OTLP's request is not one of the API's pydantic bodies, hence a blueprint of its own. The
protobuf classes (the `otlp` extra, opentelemetry-proto) are imported when the endpoint is
first hit, so a broker without them serves everything else.
"""

from __future__ import annotations

import base64
import functools
import json
import math
import os
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Flask, Response, current_app, request

from . import auth, metrics, wire
from .errors import (
    BadRequest,
    NotInstalled,
    NotRegistered,
    TooLarge,
    UnknownId,
    UnknownTopic,
    UnsupportedMediaType,
)
from .schemas import storable_sizes
from .store import AppendRequest, Store, get_store

bp = Blueprint("otlp", __name__)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
INSTALL_HINT = "pip install 'logqueue[otlp]'"
EXTENSION = "logqueue.otlp"
#: OpenTelemetry's own default service name.
DEFAULT_TOPIC = "unknown_service"
_NOT_IN_TOPIC = re.compile(r"[^A-Za-z0-9._:-]")

#: SeverityNumber ranges (1-4 TRACE ... 21-24 FATAL) as Python's level numbers and names, so
#: `lq tail --level` and the sinks read OTLP records as they read the handler's.
_SEVERITIES = ((21, 50, "CRITICAL"), (17, 40, "ERROR"), (13, 30, "WARNING"), (9, 20, "INFO"),
               (5, 10, "DEBUG"), (1, 5, "TRACE"))
#: Semantic-convention attributes that are fields of the record format (old and new names).
_RECORD_FIELDS = {"exception.stacktrace": "exception", "code.filepath": "pathname",
                  "code.file.path": "pathname", "code.lineno": "line",
                  "code.line.number": "line", "code.function": "function",
                  "code.function.name": "function", "thread.id": "thread",
                  "thread.name": "thread_name"}
_RESOURCE_FIELDS = {"service.name": "service", "host.name": "host", "process.pid": "process"}


def init_app(app: Flask) -> None:
    app.config.setdefault("LQ_OTLP_TOPIC", os.environ.get("LQ_OTLP_TOPIC") or None)
    app.extensions[EXTENSION] = _Producers()
    app.register_blueprint(bp)


@functools.cache
def _proto() -> Any:
    """The protobuf modules, imported once; NotInstalled (501) names the extra to install."""
    try:
        from google.protobuf import json_format
        from google.protobuf.message import DecodeError
        from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
    except ImportError as exc:
        raise NotInstalled(f"OTLP needs the opentelemetry-proto package ({exc}): "
                           f"{INSTALL_HINT}") from None
    return json_format, DecodeError, logs_service_pb2


@bp.post("/v1/logs", strict_slashes=False)
def export_logs() -> Response:
    """OTLP/HTTP ExportLogsServiceRequest in; ExportLogsServiceResponse out, same encoding."""
    auth.require("produce")  # a token that may not produce is refused before the body is read
    as_json = _is_json()
    json_format, _, pb = _proto()
    export = decode(read_body(), as_json)
    batches, rejected, problems = to_batches(export, current_app.config["LQ_OTLP_TOPIC"],
                                             current_app.config["LQ_MAX_MESSAGE_BYTES"])
    for topic in batches:
        auth.require("produce", topic)  # all or nothing: 403 before any topic is written
    for topic, bodies in batches.items():
        failed, problem = _append(topic, bodies)
        if problem:
            rejected += failed
            problems.append(problem)
    reply = pb.ExportLogsServiceResponse()
    if rejected:
        reply.partial_success.rejected_log_records = rejected
        reply.partial_success.error_message = "; ".join(dict.fromkeys(problems))[:2000]
    if as_json:
        return Response(json_format.MessageToJson(reply, indent=None), mimetype=JSON)
    return Response(reply.SerializeToString(), mimetype=PROTOBUF)


def _is_json() -> bool:
    if request.mimetype == PROTOBUF:
        return False
    if request.mimetype == JSON:
        return True
    raise UnsupportedMediaType(f"Content-Type must be {PROTOBUF} or {JSON}, "
                               f"not {request.mimetype or 'none'!r}")


# --- the body --------------------------------------------------------------------------------
def read_body() -> bytes | bytearray:
    """The request body, inflated as its Content-Encoding says, within the size limit."""
    return wire.read_body(request.stream, request.headers.get("Content-Encoding", ""),
                          current_app.config["MAX_CONTENT_LENGTH"])


def decode(data: bytes, as_json: bool) -> Any:
    """The ExportLogsServiceRequest in `data`; anything else is a 400."""
    json_format, decode_error, pb = _proto()
    export = pb.ExportLogsServiceRequest()
    if not as_json:
        try:
            export.ParseFromString(data)
        except (decode_error, RecursionError, ValueError):
            raise BadRequest("the body is not an OTLP ExportLogsServiceRequest in protobuf"
                             ) from None
        return export
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):
        raise BadRequest("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the JSON body must be an ExportLogsServiceRequest object")
    for record in _json_records(body):
        _hex_ids_to_base64(record)
    try:
        json_format.ParseDict(body, export, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        raise BadRequest(f"not an OTLP/JSON ExportLogsServiceRequest: {exc}"[:300]) from None
    return export


def _json_records(body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The log record objects of an OTLP/JSON body (badly shaped parts are left to the
    parser to refuse)."""
    for resource_logs in _list(body, "resourceLogs", "resource_logs"):
        for scope_logs in _list(resource_logs, "scopeLogs", "scope_logs"):
            yield from _list(scope_logs, "logRecords", "log_records")


def _list(parent: Any, *keys: str) -> list[dict[str, Any]]:
    if not isinstance(parent, dict):
        return []
    for key in keys:
        found = parent.get(key)
        if isinstance(found, list):
            return [item for item in found if isinstance(item, dict)]
    return []


def _hex_ids_to_base64(record: dict[str, Any]) -> None:
    """OTLP/JSON writes trace and span ids in hex, where protobuf's JSON mapping expects the
    base64 of bytes fields."""
    for key in ("traceId", "spanId", "trace_id", "span_id"):
        value = record.get(key)
        if isinstance(value, str) and value:
            try:
                record[key] = base64.b64encode(bytes.fromhex(value)).decode("ascii")
            except ValueError:
                raise BadRequest(f"{key} must be hex, not {value[:64]!r}") from None


# --- records ---------------------------------------------------------------------------------
def to_batches(export: Any, fixed_topic: str | None,
               max_bytes: int) -> tuple[dict[str, list[str]], int, list[str]]:
    """The records as LogQueue messages by topic, plus how many were refused and why."""
    batches: dict[str, list[str]] = {}
    rejected, problems = 0, []
    for resource_logs in export.resource_logs:
        resource = attributes(resource_logs.resource.attributes)
        topic = fixed_topic or topic_for(resource.get("service.name"))
        bodies = batches.setdefault(topic, [])
        for scope_logs in resource_logs.scope_logs:
            scope = scope_logs.scope.name
            for log_record in scope_logs.log_records:
                text = _encode(to_record(log_record, scope, resource))
                problem = _refusal(text, max_bytes)
                if problem is None:
                    bodies.append(text)
                else:
                    rejected += 1
                    problems.append(problem)
    return {t: b for t, b in batches.items() if b}, rejected, problems


def _refusal(text: str, max_bytes: int) -> str | None:
    """Why the broker cannot store `text` as a message, or None."""
    try:
        size = storable_sizes([text])[0]
    except ValueError as exc:
        return f"a record cannot be stored: {exc}"
    if size > max_bytes:
        return f"a record is at most {max_bytes} bytes as JSON, not {size}"
    return None


def topic_for(service: Any) -> str:
    """A service name as a topic name: characters outside the topic rule become '-'."""
    name = _NOT_IN_TOPIC.sub("-", str(service or DEFAULT_TOPIC)).lstrip("._:-")[:200]
    return name or DEFAULT_TOPIC


def to_record(log_record: Any, scope: str, resource: dict[str, Any]) -> dict[str, Any]:
    """One OTLP LogRecord in LogQueue's record format."""
    extra = attributes(log_record.attributes)
    levelno, level = severity(log_record.severity_number)
    data: dict[str, Any] = {
        "time": iso_time(log_record.time_unix_nano or log_record.observed_time_unix_nano
                         or time.time_ns()),
        "level": log_record.severity_text or level,
        "levelno": levelno,
        "logger": scope,
        "message": _text(value(log_record.body)),
    }
    for key in [k for k in extra if k in _RECORD_FIELDS]:
        data.setdefault(_RECORD_FIELDS[key], extra.pop(key))
    for key, field in _RESOURCE_FIELDS.items():
        if key in resource:
            data.setdefault(field, resource[key])
    trace_id, span_id = log_record.trace_id.hex(), log_record.span_id.hex()
    if trace_id.strip("0"):
        data["trace_id"] = trace_id
    if span_id.strip("0"):
        data["span_id"] = span_id
    data["extra"] = {**resource, **extra}
    return data


def severity(number: int) -> tuple[int, str]:
    for lowest, levelno, name in _SEVERITIES:
        if number >= lowest:
            return levelno, name
    return 0, "NOTSET"  # SEVERITY_NUMBER_UNSPECIFIED


def iso_time(unix_nano: int) -> str:
    """ISO-8601 UTC with microseconds, as the handler's records have it."""
    seconds, nanos = divmod(unix_nano, 1_000_000_000)
    return f"{_second(seconds)}.{nanos // 1000:06d}Z"


@functools.lru_cache(maxsize=256)
def _second(seconds: int) -> str:
    """The date and time to the second: a batch's records share a few."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def attributes(key_values: Any) -> dict[str, Any]:
    return {kv.key: value(kv.value) for kv in key_values}


def value(any_value: Any) -> Any:
    """An OTLP AnyValue as JSON can hold it (bytes as base64, NaN and infinities as text)."""
    kind = any_value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [value(item) for item in any_value.array_value.values]
    if kind == "kvlist_value":
        return attributes(any_value.kvlist_value.values)
    if kind == "bytes_value":
        return base64.b64encode(any_value.bytes_value).decode("ascii")
    found = getattr(any_value, kind)
    if kind == "double_value" and not math.isfinite(found):
        return str(found)
    return found


def _text(body: Any) -> str:
    if body is None:
        return ""
    return body if isinstance(body, str) else _encode(body)


# One encoder, built once: json.dumps with options builds a new one on every call.
_encode = json.JSONEncoder(ensure_ascii=False).encode


# --- appends ---------------------------------------------------------------------------------
class _Producers:
    """One producer registration per topic and process, registered on first use."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._lock = threading.Lock()

    def get(self, store: Store, topic: str) -> int:
        producer_id = self._ids.get(topic)
        if producer_id is None:
            with self._lock:
                producer_id = self._ids.get(topic)
                if producer_id is None:
                    producer_id = self._ids[topic] = store.producers.register(topic)
        return producer_id

    def forget(self, topic: str) -> None:
        self._ids.pop(topic, None)


def _append(topic: str, bodies: list[str]) -> tuple[int, str | None]:
    """Append one topic's batch (in chunks of the broker's batch limit): how many were not
    stored, and why. A database that does not answer is the whole request's 503."""
    store, producers = get_store(current_app), current_app.extensions[EXTENSION]
    step = current_app.config["LQ_MAX_BATCH"]
    stored = 0
    try:
        for start in range(0, len(bodies), step):
            chunk = bodies[start:start + step]
            for attempt in (1, 2):
                try:
                    store.producers.append(topic, AppendRequest(producers.get(store, topic),
                                                                chunk))
                    break
                except (NotRegistered, UnknownId, UnknownTopic):
                    producers.forget(topic)  # the topic or the registration was deleted
                    if attempt == 2:
                        raise
            stored += len(chunk)
            metrics.produced(len(chunk), storable_sizes(chunk)[0])
    except (BadRequest, NotRegistered, UnknownId, UnknownTopic, TooLarge) as exc:
        return len(bodies) - stored, f"topic {topic!r}: {exc.message}"
    return 0, None
