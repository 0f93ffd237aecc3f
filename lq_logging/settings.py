"""The handler's options, checked once at configuration.

A wrong value raises a ValueError that names the option and what it allows, before the
handler exists (so ``logging.shutdown`` never meets a half-built handler at exit).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lq_logging.record import DEFAULT_MAX_BYTES
from sdk.contract import DEFAULT_URL, check_topic, check_url, parse_bool
from sdk.transport import parse_verify

OVERFLOW_POLICIES = ("spool", "drop", "block")
MAX_BATCH_RECORDS = 10_000


@dataclass(frozen=True, slots=True)
class Settings:
    """Every option of :class:`~lq_logging.LogQueueHandler`, checked (see its docstring)."""

    urls: tuple[str, ...]
    topic: str
    token: str | None = None
    batch_size: int = 500
    flush_interval: float = 0.5
    queue_size: int = 50_000
    spool_dir: str = ""
    overflow: str = "spool"
    timeout: float = 5.0
    fields: Mapping[str, Any] = field(default_factory=dict)
    max_record_bytes: int = DEFAULT_MAX_BYTES
    spool_max_bytes: int = 256 * 1024 * 1024
    spool_fsync: bool = True
    verify: bool | str = True

    @property
    def spooling(self) -> bool:
        return self.overflow == "spool"


def _number(name: str, value: Any, kind: type, low: float, high: float | None = None) -> Any:
    allowed = f"a number from {low}" + (f" to {high}" if high is not None else " up")
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: {value!r} is not {allowed}") from None
    if isinstance(value, bool) or number < low or (high is not None and number > high):
        raise ValueError(f"{name}: {value!r} is not {allowed}")
    return number


def _urls(url: str | Sequence[str]) -> tuple[str, ...]:
    items = url.split(",") if isinstance(url, str) else list(url or [])
    urls = []
    for item in items:
        if isinstance(item, str) and not item.strip():
            continue
        try:
            urls.append(check_url(item))
        except ValueError as exc:
            raise ValueError(f"url: {exc}") from None
    if not urls:
        raise ValueError(f"url: at least one broker url is required (e.g. {DEFAULT_URL})")
    return tuple(urls)


def default_spool_dir(urls: Sequence[str], topic: str) -> str:
    """``$LQ_SPOOL_DIR`` or ``~/.cache/logqueue/spool``, one directory per urls and topic."""
    base = os.environ.get("LQ_SPOOL_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "logqueue", "spool")
    key = hashlib.sha256(("\n".join(urls) + "\n" + topic).encode()).hexdigest()[:12]
    return os.path.join(base, f"{topic}-{key}")


def check_level(level: int | str) -> int | str:
    try:
        logging.Handler(level)
    except (TypeError, ValueError):
        raise ValueError(f"level: {level!r} is not a level (DEBUG, INFO, WARNING, ERROR, "
                         "CRITICAL or a number)") from None
    return level


def settings(url: str | Sequence[str], topic: str, *, token: str | None, batch_size: Any,
             flush_interval: Any, queue_size: Any, spool_dir: str | None, overflow: str,
             timeout: Any, fields: Mapping[str, Any] | None, max_record_bytes: Any,
             spool_max_bytes: Any, spool_fsync: Any, verify: Any = True) -> Settings:
    """Check every option; raise ValueError naming the first bad one and what it allows."""
    if overflow not in OVERFLOW_POLICIES:
        raise ValueError(f"overflow: {overflow!r} is not one of {', '.join(OVERFLOW_POLICIES)}")
    try:
        check_topic(topic)
    except ValueError as exc:
        raise ValueError(f"topic: {exc}") from None
    try:
        fsync = parse_bool(spool_fsync)
    except ValueError as exc:
        raise ValueError(f"spool_fsync: {exc}") from None
    try:
        ca = parse_verify(verify)
    except ValueError as exc:
        raise ValueError(f"verify: {exc}") from None
    if fields is not None and not isinstance(fields, Mapping):
        raise ValueError(f"fields: {fields!r} is not a mapping of names to values")
    urls = _urls(url)
    return Settings(
        urls=urls, topic=topic, token=token,
        batch_size=_number("batch_size", batch_size, int, 1, MAX_BATCH_RECORDS),
        flush_interval=_number("flush_interval", flush_interval, float, 0.001, 3600),
        queue_size=_number("queue_size", queue_size, int, 1),
        spool_dir=os.path.abspath(spool_dir) if spool_dir else default_spool_dir(urls, topic),
        overflow=overflow, timeout=_number("timeout", timeout, float, 0.001),
        fields=dict(fields or {}),
        max_record_bytes=_number("max_record_bytes", max_record_bytes, int, 1024),
        spool_max_bytes=_number("spool_max_bytes", spool_max_bytes, int, 1024),
        spool_fsync=fsync, verify=ca)


__all__ = ["MAX_BATCH_RECORDS", "OVERFLOW_POLICIES", "Settings", "default_spool_dir",
           "settings"]
