"""The LogQueue record format and :class:`JSONFormatter`, which produces it.

One record is one JSON object::

    {"time": "2024-05-01T12:00:00.123456Z", "level": "INFO", "levelno": 20,
     "logger": "app.orders", "message": "order 7 created", "module": "orders",
     "function": "create", "line": 42, "pathname": "/srv/app/orders.py",
     "process": 4242, "process_name": "MainProcess", "thread": 1402..., "thread_name":
     "MainThread", "host": "web-1", "extra": {"order_id": 7}, "service": "shop"}

``exception`` (the traceback text) and ``stack`` (``stack_info``) appear only when present;
``extra`` holds the record's ``extra=`` fields (values that JSON cannot hold become their
``repr``); the static ``fields`` (service, env, ...) are merged at the top level and never
overwrite the standard keys. A record whose JSON is over ``max_bytes`` is cut down (message,
exception, stack, then extra) and gets ``"truncated": true`` and a marker in the text, so a
huge record can never be refused by the broker.

:class:`JSONFormatter` works with any stdlib handler::

    handler = logging.StreamHandler()
    handler.setFormatter(JSONFormatter(fields={"service": "shop"}))
"""

from __future__ import annotations

import json
import logging
import re
import socket
import sys
import time
from collections.abc import Mapping
from typing import Any

#: A LogRecord's own attributes; everything else on a record came from ``extra=``.
STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()
) | {"message", "asctime", "taskName", "exc_info", "exc_text", "stack_info"}

#: The keys of the format itself; static ``fields`` never overwrite them.
RECORD_KEYS = ("time", "level", "levelno", "logger", "message", "module", "function", "line",
               "pathname", "process", "process_name", "thread", "thread_name", "host",
               "exception", "stack", "extra", "truncated", "trace_id", "span_id")

#: The broker refuses a message over 1 MiB; stay below it with room for JSON escaping.
DEFAULT_MAX_BYTES = 1_000_000
TRUNCATION_MARKER = "...[truncated by lq_logging: {n} characters dropped]"

_HOST = socket.gethostname()


def _json_default(value: Any) -> str:
    try:
        return repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not lose the record
        return f"<unrepresentable {type(value).__name__}>"


def _jsonable(value: Any) -> Any:
    """``value`` if JSON can hold it as is, else its ``repr`` (shallow, per extra field)."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    try:
        json.dumps(value, default=_raise)
        return value
    except (TypeError, ValueError, RecursionError):
        return _json_default(value)


def _raise(value: Any) -> Any:
    raise TypeError(type(value).__name__)


def _make_encoder() -> Any:
    """One compact encoder, built once: ``json.dumps`` (and ``JSONEncoder.encode``) build a
    new C encoder on every call, a third of the cost of a small record."""
    c_make = getattr(json.encoder, "c_make_encoder", None)
    if c_make is None:  # not CPython's C accelerator
        return json.JSONEncoder(ensure_ascii=False, default=_json_default,
                                separators=(",", ":")).encode
    # No circular-reference markers: extra values are checked by _jsonable first.
    encoder = c_make(None, _json_default, json.encoder.c_encode_basestring, None, ":", ",",
                     False, False, True)
    return lambda value: "".join(encoder(value, 0))


_encode = _make_encoder()
_quote = getattr(json.encoder, "c_encode_basestring", None) or json.encoder.py_encode_basestring


def _value(value: Any) -> str:
    """One JSON value, quickly for the types a record's own attributes have."""
    cls = value.__class__
    if cls is str:
        return _quote(value)
    if cls is int:
        return str(value)
    return _encode(value)


def trace_ids() -> dict[str, str]:
    """The active OpenTelemetry span's ``trace_id`` and ``span_id`` in hex, or ``{}``.
    OpenTelemetry is never imported here: without it loaded, no span can be active. Call it
    in the thread that logs (the span is that thread's context)."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return {}
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {"trace_id": format(context.trace_id, "032x"),
            "span_id": format(context.span_id, "016x")}


class _UTCClock:
    """ISO-8601 UTC with microseconds; the date part is cached per second."""

    __slots__ = ("_second", "_prefix")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        micros = int((created - second) * 1_000_000)
        return f"{self._prefix}.{micros:06d}Z"



class JSONFormatter(logging.Formatter):
    """Formats a :class:`logging.LogRecord` as one LogQueue JSON record (see the module doc).

    Args:
        fields: static fields merged into every record (e.g. ``{"service": "shop"}``).
        max_bytes: the longest encoded record, in UTF-8 bytes; longer ones are truncated.
        host: the ``host`` value (default: this machine's hostname).
    """

    def __init__(self, fields: Mapping[str, Any] | None = None, *,
                 max_bytes: int = DEFAULT_MAX_BYTES, host: str | None = None) -> None:
        super().__init__()
        self.fields = {k: _jsonable(v) for k, v in dict(fields or {}).items()
                       if k not in RECORD_KEYS}
        self.max_bytes = max_bytes
        self.host = host or _HOST
        self._clock = _UTCClock()
        # The constant tail of a plain record (see _plain): host, empty extra, fields.
        tail = _encode(self.fields)[1:-1]
        self._tail = f',"host":{_encode(self.host)},"extra":{{}}' + (f",{tail}}}" if tail
                                                                        else "}")

    def to_dict(self, record: logging.LogRecord) -> dict[str, Any]:
        """The record as a dict of the format (before truncation)."""
        if record.args or not isinstance(record.msg, str):
            message = record.getMessage()
        else:
            message = record.msg
        data: dict[str, Any] = {
            "time": self._clock(record.created),
            "level": record.levelname,
            "levelno": record.levelno,
            "logger": record.name,
            "message": message,
            "module": record.module,
            "function": record.funcName,
            "line": record.lineno,
            "pathname": record.pathname,
            "process": record.process,
            "process_name": record.processName,
            "thread": record.thread,
            "thread_name": record.threadName,
            "host": self.host,
        }
        exc_text = record.exc_text
        if not exc_text and record.exc_info:
            exc_text = self.formatException(record.exc_info)
        if exc_text:
            data["exception"] = exc_text
        if record.stack_info:
            data["stack"] = record.stack_info
        attrs = record.__dict__
        extra = ({k: _jsonable(v) for k, v in attrs.items()
                  if k not in STANDARD_ATTRS and k[:1] != "_"}
                 if attrs.keys() - STANDARD_ATTRS else {})
        # Ids stamped on the record where it was logged (the handler's queue), else now.
        ids = {k: extra.pop(k) for k in ("trace_id", "span_id") if k in extra} or trace_ids()
        data.update(ids)
        data["extra"] = extra
        if self.fields:
            for key, value in self.fields.items():
                data.setdefault(key, value)
        return data

    def format(self, record: logging.LogRecord) -> str:
        """One JSON object, at most ``max_bytes`` UTF-8 bytes."""
        text = self._plain(record)
        if text is None:
            text = _encode(self.to_dict(record))
        if not text.isascii():
            text = escape_surrogates(text)
        if len(text) * 4 > self.max_bytes and utf8_size(text) > self.max_bytes:
            text = shrink_record(self.to_dict(record), self.max_bytes)
        return text

    def _plain(self, record: logging.LogRecord) -> str | None:
        """The most common record (no traceback, stack or ``extra=`` fields) written straight
        into its JSON, the same text as ``_encode(self.to_dict(record))`` at half the cost
        (the sender's main work); ``None`` for any other record."""
        if (record.exc_info or record.exc_text or record.stack_info
                or record.__dict__.keys() - STANDARD_ATTRS or trace_ids()):
            return None
        message = record.getMessage() if record.args or record.msg.__class__ is not str \
            else record.msg
        return (f'{{"time":"{self._clock(record.created)}","level":{_value(record.levelname)},'
                f'"levelno":{_value(record.levelno)},"logger":{_value(record.name)},'
                f'"message":{_quote(message)},"module":{_value(record.module)},'
                f'"function":{_value(record.funcName)},"line":{_value(record.lineno)},'
                f'"pathname":{_value(record.pathname)},"process":{_value(record.process)},'
                f'"process_name":{_value(record.processName)},'
                f'"thread":{_value(record.thread)},'
                f'"thread_name":{_value(record.threadName)}{self._tail}')


# --- cutting records down to size, byte-accurately ----------------------------------------

#: Bytes to cut beyond the excess: the marker, and some JSON escaping.
_MARKER_ROOM = len(TRUNCATION_MARKER) + 32
_MARKER_RE = re.compile(re.escape(TRUNCATION_MARKER).replace(r"\{n\}", r"(\d+)") + r"\Z")


def utf8_size(text: str) -> int:
    """The size the broker counts; a lone surrogate counts as its 3 bytes, not an error."""
    return len(text.encode("utf-8", "surrogatepass"))


def escape_surrogates(text: str) -> str:
    """``text`` with lone surrogates (which no broker can store and no UTF-8 encoder writes)
    as ``\\udXXX`` escapes: inside a JSON string that is the escape of the same character,
    so a JSON record stays valid and reads back unchanged."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def cut_bytes(text: str, drop: int) -> str:
    """``text`` without its last ``drop`` UTF-8 bytes (whole characters) plus the truncation
    marker, which counts every character dropped, also by an earlier cut."""
    dropped = 0
    match = _MARKER_RE.search(text)
    if match:
        dropped = int(match.group(1))
        text = text[:match.start()]
    raw = text.encode("utf-8", "surrogatepass")
    end = max(0, len(raw) - drop)
    while 0 < end < len(raw) and raw[end] & 0xC0 == 0x80:
        end -= 1  # not inside a character
    kept = raw[:end].decode("utf-8", "surrogatepass")
    return kept + TRUNCATION_MARKER.format(n=dropped + len(text) - len(kept))


def fit_text(text: str, max_bytes: int) -> str:
    """Any text (not a record of ours) cut at the end to at most about ``max_bytes``."""
    size = utf8_size(text)
    if size <= max_bytes:
        return text
    return cut_bytes(text, size - max(0, max_bytes - 100))


def shrink_record(data: dict[str, Any], max_bytes: int) -> str:
    """The record ``data`` as JSON of at most about ``max_bytes``: the longest free texts
    (``message``, ``exception``, ``stack``) are cut first, then ``extra`` becomes
    ``{"truncated": "<its JSON, cut>"}``; ``"truncated": true`` marks it. ``data`` is
    changed in place."""
    data["truncated"] = True
    text = escape_surrogates(_encode(data))
    for _ in range(8):
        excess = utf8_size(text) - max_bytes
        if excess <= 0:
            return text
        excess += _MARKER_ROOM
        keys = sorted((k for k in ("message", "exception", "stack")
                       if isinstance(data.get(k), str) and data[k]),
                      key=lambda k: len(data[k]), reverse=True)
        for key in keys:
            size = utf8_size(data[key])
            data[key] = cut_bytes(data[key], excess)
            excess -= size
            if excess <= 0:
                break
        else:
            if not data.get("extra"):
                break  # nothing left to cut: the caller sees it did not get small enough
            extra = _encode(data["extra"])
            data["extra"] = {"truncated": cut_bytes(extra, excess)}
        text = escape_surrogates(_encode(data))
    return text


__all__ = ["DEFAULT_MAX_BYTES", "JSONFormatter", "RECORD_KEYS", "STANDARD_ATTRS",
           "TRUNCATION_MARKER", "cut_bytes", "escape_surrogates", "fit_text", "shrink_record",
           "trace_ids", "utf8_size"]
