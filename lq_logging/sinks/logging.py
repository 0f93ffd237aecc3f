"""The ``logging`` sink: rebuild stdlib :class:`logging.LogRecord` objects and hand them to
this process's handlers (console, files, syslog, anything ``dictConfig`` can build).

Records keep their logger name (optionally under ``logger_prefix``), level, time, source
location, process and thread, exception and stack text, and their ``extra`` fields as
attributes. The sink walks the logger hierarchy itself, like ``Logger.callHandlers``: handler
levels and filters apply, logger levels do not (the producing application filtered already;
use the sink's ``level`` option or a pipeline filter instead). It never hands a record to a
``LogQueueHandler`` (that would send it back to the broker, a loop), and skips it silently.

When nothing is configured (no handler anywhere on the root), records go to stderr.
"""

from __future__ import annotations

import logging
import logging.config
import os
from datetime import datetime
from typing import Any

from lq_logging.sinks import Entry

DEFAULT_FORMAT = "%(asctime)s %(levelname)-8s %(name)s: %(message)s"
#: Record keys that map onto LogRecord attributes under another name, or not at all.
_FIELDS = {"logger", "level", "levelno", "message", "time", "function", "line", "pathname",
           "module", "process", "process_name", "thread", "thread_name", "exception", "stack",
           "extra"}
_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def is_logqueue_handler(handler: logging.Handler) -> bool:
    """True for a LogQueueHandler (or a subclass), found by class name so this module does
    not import the handler."""
    return any(cls.__name__ == "LogQueueHandler" for cls in type(handler).__mro__)


def _created(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def to_log_record(entry: Entry, logger_prefix: str = "") -> logging.LogRecord:
    """Rebuild a LogRecord from a record dict (see ARCHITECTURE.md, "Record")."""
    rec = entry.record
    level = rec.get("level") if isinstance(rec.get("level"), str) else None
    levelno = rec.get("levelno")
    if not isinstance(levelno, int):
        named = logging.getLevelName(level) if level else None
        levelno = named if isinstance(named, int) else logging.INFO
    if level is None:
        level = logging.getLevelName(levelno)
    message = rec.get("message")
    pathname = rec.get("pathname") if isinstance(rec.get("pathname"), str) else ""
    attrs: dict[str, Any] = {
        "name": logger_prefix + str(rec.get("logger") or "root"),
        "msg": message if isinstance(message, str) else str(message),
        "args": None,
        "levelname": level,
        "levelno": levelno,
        "pathname": pathname,
        "filename": os.path.basename(pathname),
        "module": rec.get("module") or "",
        "funcName": rec.get("function"),
        "lineno": rec.get("line") or 0,
        "process": rec.get("process"),
        "processName": rec.get("process_name"),
        "thread": rec.get("thread"),
        "threadName": rec.get("thread_name"),
        "exc_text": rec.get("exception"),
        "stack_info": rec.get("stack"),
        "lq_topic": entry.topic,
        "lq_offset": entry.offset,
    }
    created = _created(rec.get("time"))
    if created is None and entry.ts is not None:
        created = entry.ts.timestamp()
    if created is not None:
        attrs["created"] = created
        attrs["msecs"] = (created - int(created)) * 1000
    extra = rec.get("extra")
    static = {k: v for k, v in rec.items() if k not in _FIELDS}
    for key, value in [*static.items(), *(extra.items() if isinstance(extra, dict) else ())]:
        if isinstance(key, str) and key not in _RESERVED and key not in attrs:
            attrs[key] = value
    return logging.makeLogRecord(attrs)


class LoggingSink:
    """Re-emits records into the local logging configuration.

    Args:
        dict_config: a ``logging.config.dictConfig`` dictionary, applied once at start
            (``disable_existing_loggers`` defaults to false here).
        logger_prefix: prepended to every logger name (e.g. ``"remote."``).
        level: the lowest level passed on (name or number; default everything).
    """

    def __init__(self, dict_config: dict[str, Any] | None = None, logger_prefix: str = "",
                 level: str | int = "NOTSET") -> None:
        if dict_config:
            config = {"disable_existing_loggers": False, **dict_config}
            config.setdefault("version", 1)
            logging.config.dictConfig(config)
        self.logger_prefix = logger_prefix
        resolved = logging.getLevelName(level.upper()) if isinstance(level, str) else level
        if not isinstance(resolved, int):
            raise ValueError(f"unknown level {level!r}")
        self.level = resolved
        self._fallback: logging.Handler | None = None
        if not _has_handlers(logging.getLogger()):
            self._fallback = logging.StreamHandler()
            self._fallback.setFormatter(logging.Formatter(DEFAULT_FORMAT))

    def write(self, batch: list[Entry]) -> None:
        for entry in batch:
            record = to_log_record(entry, self.logger_prefix)
            if record.levelno >= self.level:
                self._dispatch(record)

    def _dispatch(self, record: logging.LogRecord) -> None:
        logger: logging.Logger | None = logging.getLogger(record.name)
        found = False
        while logger is not None:
            for handler in logger.handlers:
                if is_logqueue_handler(handler):
                    continue
                found = True
                if record.levelno >= handler.level:
                    handler.handle(record)
            if not logger.propagate:
                break
            logger = logger.parent
        if not found and self._fallback is not None:
            self._fallback.handle(record)

    def flush(self) -> None:
        for handler in _all_handlers():
            if not is_logqueue_handler(handler):
                handler.flush()
        if self._fallback is not None:
            self._fallback.flush()

    def close(self) -> None:
        self.flush()

    def __repr__(self) -> str:
        return f"LoggingSink(logger_prefix={self.logger_prefix!r})"


def _has_handlers(logger: logging.Logger) -> bool:
    return any(not is_logqueue_handler(h) for h in logger.handlers)


def _all_handlers() -> list[logging.Handler]:
    seen: dict[int, logging.Handler] = {}
    loggers = [logging.getLogger()] + [
        obj for obj in logging.Logger.manager.loggerDict.values()
        if isinstance(obj, logging.Logger)]
    for logger in loggers:
        for handler in logger.handlers:
            seen[id(handler)] = handler
    return list(seen.values())
