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
import socket
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
               "exception", "stack", "extra", "truncated")

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


# One encoder, built once: json.dumps with options builds a new encoder on every call.
_encode = json.JSONEncoder(ensure_ascii=False, default=_json_default).encode


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


def _cut(text: str, keep: int) -> str:
    keep = max(keep, 0)
    if len(text) <= keep:
        return text
    return text[:keep] + TRUNCATION_MARKER.format(n=len(text) - keep)


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
        extra = {k: _jsonable(v) for k, v in record.__dict__.items()
                 if k not in STANDARD_ATTRS and k[:1] != "_"}
        data["extra"] = extra
        if self.fields:
            for key, value in self.fields.items():
                data.setdefault(key, value)
        return data

    def format(self, record: logging.LogRecord) -> str:
        """One JSON object, at most ``max_bytes`` UTF-8 bytes."""
        data = self.to_dict(record)
        text = _encode(data)
        if len(text) * 4 > self.max_bytes and len(text.encode()) > self.max_bytes:
            text = self._truncate(data, text)
        return text

    def _truncate(self, data: dict[str, Any], text: str) -> str:
        """Shrink the longest free-text parts until the JSON fits in ``max_bytes``."""
        data["truncated"] = True
        for _ in range(8):
            size = len(text.encode())
            if size <= self.max_bytes:
                return text
            excess = size - self.max_bytes + 200
            for key in ("message", "exception", "stack"):
                value = data.get(key)
                if isinstance(value, str) and value:
                    # characters may take up to 4 bytes (and escaping more): cut generously
                    cut = min(len(value), excess)
                    data[key] = _cut(value, len(value) - cut)
                    excess -= cut
                    if excess <= 0:
                        break
            if excess > 0 and data.get("extra"):
                data["extra"] = {"truncated": _cut(json.dumps(data["extra"],
                                                              default=_json_default), 1000)}
            text = _encode(data)
        # Last resort: only the header survives.
        for key in ("message", "exception", "stack"):
            if key in data:
                data[key] = _cut(str(data[key]), 1000)
        data["extra"] = {}
        return _encode(data)


__all__ = ["DEFAULT_MAX_BYTES", "JSONFormatter", "RECORD_KEYS", "STANDARD_ATTRS",
           "TRUNCATION_MARKER"]
