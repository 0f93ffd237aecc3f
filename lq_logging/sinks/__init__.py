"""Sinks: where ``lq consume`` writes the records it drains from topics.

A sink is any object with three methods::

    class MySink:
        def write(self, batch: list[Entry]) -> None: ...   # may raise Rejected(...)
        def flush(self) -> None: ...                        # durable once it returns
        def close(self) -> None: ...

``write`` gets one batch of :class:`Entry` (topic, offset, broker time, the decoded record
and the raw message). The runner calls ``write`` on every sink, then ``flush`` on every sink,
and commits only when all of them returned. Any exception is a *transient* failure: the
runner retries that sink with backoff, and stops the pipeline (without committing) when it
keeps failing. A sink that refuses some records *for good* (a 4xx from an HTTP endpoint, a
row the database cannot store) raises :class:`Rejected` after writing the others; those
records go to the dead-letter file with the reason, and the batch is committed.

A sink that retries on its own waits between attempts with :func:`pause`, never
``time.sleep``: inside the runner, a pause ends at once with :class:`Interrupted` when the
runner is asked to stop, so SIGTERM never waits for a backoff. The runner then commits
nothing of the batch in hand (it is delivered again at the next start). Used on its own, a
sink's pause is a plain sleep, unless the caller wraps the calls in :func:`interruptible`.

A SPEC names a sink on the command line (``--sink``)::

    stdout | stdout:json              human text (colours on a TTY) or JSON lines
    file:PATH[?format=text&max_bytes=10MB&backups=5&fsync=false]
    sql:DATABASE_URL                  SQLAlchemy url (sqlite:///..., postgresql://...)
    http://... | https://...          POST JSON batches
    logging                           re-emit into this process's stdlib handlers
    package.module:Class              a user sink, built with no arguments

In a TOML config a sink is a table with ``spec`` (or ``type``) plus keyword options.
"""

from __future__ import annotations

import importlib
import json
import re
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable
from urllib.parse import parse_qsl

from sdk.contract import parse_bool, parse_size
from sdk.render import parse_object


@dataclass(slots=True)
class Entry:
    """One message drained from a topic, as a sink sees it.

    Attributes:
        topic: the topic it came from.
        offset: its offset in that topic; (topic, offset) identifies it for good.
        record: the decoded record (the handler's JSON object), or ``{"message": raw}`` when
            the message was not a JSON object (a classic producer's plain text).
        raw: the message text exactly as the broker stored it.
        ts: the broker's append time (UTC), when known.
    """

    topic: str
    offset: int
    record: dict[str, Any]
    raw: str
    ts: datetime | None = None

    @classmethod
    def decode(cls, topic: str, offset: int, raw: str, ts: datetime | None = None) -> Entry:
        """Decode ``raw``: a JSON object is the record; anything else becomes
        ``{"message": raw}``."""
        record = parse_object(raw)
        return cls(topic, offset, record if record is not None else {"message": raw}, raw, ts)


@runtime_checkable
class Sink(Protocol):
    """What the runner needs from a sink (duck-typed; no base class required)."""

    def write(self, batch: list[Entry]) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class SinkError(Exception):
    """A sink could not be built or configured (bad SPEC, unreachable database at start)."""


@dataclass
class Rejected(Exception):
    """Raised by ``write`` for records refused for good; the others were written.

    Attributes:
        rejects: (entry, reason) pairs; the runner dead-letters them.
    """

    rejects: list[tuple[Entry, str]] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{len(self.rejects)} record(s) rejected"


class Interrupted(Exception):
    """A :func:`pause` was cut short: the runner is stopping. The batch in hand is not (or not
    wholly) written, so the runner commits nothing of it."""


# --- waiting between retries -----------------------------------------------------------------

#: The event that ends pauses in this context (one per runner thread); None: plain sleeps.
_STOP: ContextVar[threading.Event | None] = ContextVar("lq_sink_stop", default=None)


@contextmanager
def interruptible(stop: threading.Event) -> Iterator[None]:
    """Within this block (on this thread), :func:`pause` raises :class:`Interrupted` as soon
    as ``stop`` is set. The runner wraps every sink call in it with its stop event."""
    token = _STOP.set(stop)
    try:
        yield
    finally:
        _STOP.reset(token)


def pause(seconds: float) -> None:
    """Wait ``seconds`` between two attempts of a sink.

    Raises:
        Interrupted: the stop event of the enclosing :func:`interruptible` is set (already,
            or during the wait).
    """
    stop = _STOP.get()
    if stop is None:
        time.sleep(max(seconds, 0.0))
    elif stop.wait(max(seconds, 0.0)):
        raise Interrupted("stop requested during a retry wait")


# --- helpers shared by the sinks ---------------------------------------------------------

def dumps(record: Mapping[str, Any]) -> str:
    """A record as one compact JSON line (no newline), non-JSON values as repr."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=repr)


# --- SPEC parsing and loading --------------------------------------------------------------

_DOTTED = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def _split_options(rest: str) -> tuple[str, dict[str, str]]:
    """``PATH?key=value&...`` -> (PATH, options)."""
    if "?" not in rest:
        return rest, {}
    path, _, query = rest.partition("?")
    return path, dict(parse_qsl(query, keep_blank_values=True))


def import_attribute(dotted: str) -> Any:
    """``package.module:Class`` (or ``package.module.Class``) -> the attribute."""
    module_name, sep, attr = dotted.partition(":")
    if not sep:
        module_name, _, attr = dotted.rpartition(".")
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def build_sink(spec: str, options: Mapping[str, Any] | None = None) -> Sink:
    """Build the sink a SPEC (plus keyword ``options``, e.g. from TOML) names.

    Raises:
        SinkError: the SPEC is unknown, the options are wrong, or the sink failed to open.
    """
    options = dict(options or {})
    spec = spec.strip()
    try:
        if spec in ("stdout", "stdout:json", "stdout:text"):
            from lq_logging.sinks.stdout import StdoutSink

            if spec == "stdout:json":
                options.setdefault("format", "json")
            return StdoutSink(**options)
        if spec.startswith("file:"):
            from lq_logging.sinks.file import FileSink

            path, query = _split_options(spec[len("file:"):])
            if not path:
                raise SinkError("file: needs a path, e.g. file:/var/log/app.jsonl")
            return FileSink(path, **{**query, **options})
        if spec.startswith("sql:"):
            from lq_logging.sinks.sql import SQLSink

            return SQLSink(spec[len("sql:"):], **options)
        if spec.startswith(("http://", "https://")):
            from lq_logging.sinks.http import HTTPSink

            return HTTPSink(spec, **options)
        if spec == "logging" or spec.startswith("logging:"):
            from lq_logging.sinks.logging import LoggingSink

            _, query = _split_options(spec[len("logging"):])
            return LoggingSink(**{**query, **options})
        if _DOTTED.match(spec):
            return _user_sink(spec, options)
    except SinkError:
        raise
    except TypeError as exc:  # unknown or missing keyword options
        raise SinkError(f"{spec}: bad options: {exc}") from exc
    except Exception as exc:
        raise SinkError(f"{spec}: {type(exc).__name__}: {exc}") from exc
    raise SinkError(f"unknown sink {spec!r}; expected stdout, stdout:json, file:PATH, "
                    "sql:DATABASE_URL, http(s)://URL, logging or package.module:Class")


def _user_sink(spec: str, options: Mapping[str, Any]) -> Sink:
    try:
        cls = import_attribute(spec)
    except (ImportError, AttributeError) as exc:
        raise SinkError(f"cannot import {spec!r}: {exc}") from exc
    if not callable(cls):
        raise SinkError(f"{spec!r} is not a class or factory")
    sink = cls(**options)
    if not callable(getattr(sink, "write", None)):
        raise SinkError(f"{spec!r} has no write(batch) method")
    return _Completed(sink) if not isinstance(sink, Sink) else sink


class _Completed:
    """A user sink with only ``write``: ``flush`` and ``close`` default to no-ops."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink

    def write(self, batch: list[Entry]) -> None:
        self.sink.write(batch)

    def flush(self) -> None:
        if callable(getattr(self.sink, "flush", None)):
            self.sink.flush()

    def close(self) -> None:
        if callable(getattr(self.sink, "close", None)):
            self.sink.close()

    def __repr__(self) -> str:
        return repr(self.sink)


#: ``parse_bool`` and ``parse_size`` are sdk.contract's, re-exported for the sinks' options
#: (and for code that imported them from here).
__all__ = ["Entry", "Interrupted", "Rejected", "Sink", "SinkError", "build_sink", "dumps",
           "import_attribute", "interruptible", "parse_bool", "parse_size", "pause"]
