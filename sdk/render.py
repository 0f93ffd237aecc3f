"""How people read records: one text line per record, and the filter that selects them.

``lq tail`` and the ``stdout``/``file`` sinks of ``lq consume`` print a record the same way::

    2026-12-02T06:38:16.123456Z WARNING  shop.db: pool exhausted

(the level coloured on a terminal; the traceback and stack text, when present, on the next
lines). :class:`RecordFilter` is what ``lq tail --level/--logger/--grep`` applies. It lives in
the SDK, not in ``lq_logging``, because ``lq_logging`` imports the SDK and not the other way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

#: The stdlib level numbers, by name (``WARN`` and ``FATAL`` as other senders spell them).
LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "WARN": 30, "ERROR": 40, "CRITICAL": 50,
          "FATAL": 50}
LEVEL_COLOURS = {"DEBUG": "\x1b[2m", "INFO": "\x1b[32m", "WARNING": "\x1b[33m",
                 "ERROR": "\x1b[31m", "CRITICAL": "\x1b[1;31m"}
RESET = "\x1b[0m"
#: The prefix of a ``--grep`` pattern that is a regular expression.
REGEX_PREFIX = "re:"


def parse_object(raw: str) -> dict[str, Any] | None:
    """``raw`` as a JSON object, or None: plain text, other JSON and broken JSON are no
    record (a classic producer's lines are plain text)."""
    if raw[:1] != "{":
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def parse_record(raw: str) -> dict[str, Any] | None:
    """``raw`` as a log record (a JSON object with a ``message``), or None. Other JSON objects
    are shown as the text they are, not as a record with an empty message."""
    value = parse_object(raw)
    return value if value is not None and "message" in value else None


def format_text(record: Mapping[str, Any], *, ts: datetime | None = None,
                colour: bool = False) -> str:
    """One human line: ``TIME LEVEL logger: message`` (+ exception and stack text).

    ``ts`` (the broker's append time) stands in for a record without ``time``."""
    when = record.get("time") or (ts.isoformat() if ts else "-")
    level = str(record.get("level") or "-")
    logger = record.get("logger")
    message = record.get("message")
    if not isinstance(message, str):
        message = json.dumps(message, ensure_ascii=False, default=repr)
    head = f"{level:<8}"
    if colour:
        head = f"{LEVEL_COLOURS.get(level, '')}{head}{RESET}"
    line = f"{when} {head} {logger}: {message}" if logger else f"{when} {head} {message}"
    for key in ("exception", "stack"):
        if record.get(key):
            line += "\n" + str(record[key]).rstrip("\n")
    return line


def parse_level(value: str | int) -> int:
    """A level name (any case; ``WARN``, ``FATAL`` too) or number -> the level number.

    Raises:
        ValueError: neither a known name nor a number.
    """
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    number = LEVELS.get(text.upper())
    if number is None:
        raise ValueError(f"unknown level {text!r}: use DEBUG, INFO, WARNING, ERROR, CRITICAL "
                         "or a number")
    return number


def record_levelno(record: Mapping[str, Any]) -> int | None:
    """The record's level number: its ``levelno``, else its ``level`` name's; None when it
    has neither (such a record never passes a level filter)."""
    number = record.get("levelno")
    if isinstance(number, int) and not isinstance(number, bool):
        return number
    return LEVELS.get(str(record.get("level") or "").upper())


def compile_grep(pattern: str) -> Callable[[str], bool]:
    """``TEXT`` -> a case-sensitive substring test; ``re:EXPR`` -> a regular expression
    search (``re:(?i)...`` ignores case).

    Raises:
        ValueError: the regular expression does not compile (the reason says where).
    """
    if not pattern.startswith(REGEX_PREFIX):
        return lambda text: pattern in text
    try:
        regex = re.compile(pattern[len(REGEX_PREFIX):])
    except re.error as exc:
        raise ValueError(f"invalid regular expression {pattern[len(REGEX_PREFIX):]!r}: "
                         f"{exc}") from None
    return lambda text: regex.search(text) is not None


def logger_matches(name: Any, prefix: str) -> bool:
    """``shop.db`` matches ``shop.db`` and ``shop.db.pool``, not ``shop.dbx``."""
    if not isinstance(name, str):
        return False
    prefix = prefix.rstrip(".")
    return not prefix or name == prefix or name.startswith(prefix + ".")


class RecordFilter:
    """The records ``lq tail`` shows: every given condition must hold (AND).

    Args:
        level: that level and above (a name or number; see :func:`parse_level`).
        logger: the logger and its children (see :func:`logger_matches`).
        grep: a substring, or a regular expression after ``re:``, searched in the text as
            shown (time, level, logger, message, traceback), or in a plain message's text.

    A message that is not a record (plain text) has no level and no logger: it passes only
    a filter with neither, when ``grep`` finds its text.

    Raises:
        ValueError: a bad level or regular expression (at construction, before any read).
    """

    def __init__(self, level: str | int | None = None, logger: str | None = None,
                 grep: str | None = None) -> None:
        self.levelno = None if level is None else parse_level(level)
        self.logger = logger
        self._search = None if grep is None else compile_grep(grep)

    @property
    def active(self) -> bool:
        """Whether any condition is set (without one, every message passes)."""
        return self.levelno is not None or self.logger is not None or self._search is not None

    def matches(self, record: Mapping[str, Any] | None, text: str) -> bool:
        """``record``: the parsed record, or None for a plain message; ``text``: the line as
        shown without colours (:func:`format_text`), or the plain message."""
        if record is None:
            if self.levelno is not None or self.logger is not None:
                return False
        else:
            if self.levelno is not None and (record_levelno(record) or 0) < self.levelno:
                return False
            if self.logger is not None and not logger_matches(record.get("logger"),
                                                              self.logger):
                return False
        return self._search is None or self._search(text)


__all__ = ["LEVELS", "LEVEL_COLOURS", "RESET", "RecordFilter", "compile_grep", "format_text",
           "logger_matches", "parse_level", "parse_object", "parse_record", "record_levelno"]
