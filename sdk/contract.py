"""The client side's one copy of the broker's contract: names, durations, booleans, sizes, urls.

The CLI, the handler, the runner and the sinks all check their input here, so a value one of
them accepts is one the broker accepts too. The broker may not import this package: its own
copies (``broker/schemas.py`` for topic names, ``broker/retention.py`` for durations) are kept
in step by one shared table of test cases (``tests/contract_cases.py``).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Literal
from urllib.parse import urlsplit

DEFAULT_URL = "http://127.0.0.1:5000"

#: The broker's topic-name rule (``broker/schemas.py``); ``fullmatch`` only, so ``"app\n"`` fails.
TOPIC_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}"
TOPIC_RULE = "1-200 characters: letters, digits and . _ : -, starting with a letter or digit"
_TOPIC = re.compile(TOPIC_PATTERN)


def is_topic_name(name: object) -> bool:
    return isinstance(name, str) and _TOPIC.fullmatch(name) is not None


def check_topic(name: object) -> str:
    """Return ``name`` when the broker would accept it as a topic name, else raise ValueError."""
    if not is_topic_name(name):
        raise ValueError(f"not a topic name: {name!r} ({TOPIC_RULE})")
    return name  # type: ignore[return-value]


DURATION_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000,
                     "w": 604_800_000}
_DURATION = re.compile(r"(\d+)\s*(ms|s|m|h|d|w)?")
_NO_LIMIT = ("none", "forever", "off")


def parse_duration_ms(text: str) -> int:
    """``7d``, ``12h``, ``30m``, ``45s``, ``500ms``, ``1w``, or ``0``/``none`` (no limit).

    A bare number other than 0 is refused: ``500`` could mean seconds or milliseconds.
    """
    cleaned = str(text).strip().lower()
    if cleaned in _NO_LIMIT:
        return 0
    match = _DURATION.fullmatch(cleaned)
    if not match:
        raise ValueError(f"not a duration: {text!r} (try 7d, 12h, 30m, 45s, 500ms or none)")
    number, unit = match.groups()
    if unit is None and int(number) != 0:
        raise ValueError(f"give a unit: {number}s, {number}m, {number}h or {number}d?")
    return int(number) * DURATION_UNITS_MS[unit or "ms"]


def format_duration(ms: int) -> str:
    """The shortest exact spelling of ``ms`` that :func:`parse_duration_ms` reads back."""
    for unit in ("w", "d", "h", "m", "s"):
        size = DURATION_UNITS_MS[unit]
        if ms >= size and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


#: Where a consumer starts reading: a position name, a time, or a duration back from now.
Start = Literal["earliest", "latest"] | str | datetime | timedelta


def start_point(value: Start) -> str:
    """``value`` as the broker's ``from`` text: ``"earliest"``, ``"latest"``, an ISO-8601 time
    (a string, or a datetime; UTC unless it carries an offset, as the broker reads it) or a
    duration back from now (``"10m"``, or a timedelta): the first message appended at or
    after that time. ValueError for anything else, before any request is made."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        if value < timedelta(0):
            raise ValueError(f"a duration back from now cannot be negative: {value}")
        return format_duration(value // timedelta(milliseconds=1))
    if not isinstance(value, str):
        raise ValueError(f"not a start: {value!r} (earliest, latest, a time or a duration)")
    text = value.strip()
    if text in ("earliest", "latest"):
        return text
    if text.lower() in _NO_LIMIT:
        raise ValueError(f"not a point in time: {value!r}")
    try:
        datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        try:
            parse_duration_ms(text)
        except ValueError:
            raise ValueError(f"not earliest, latest, an ISO-8601 time or a duration such as "
                             f"10m or 2h: {value[:64]!r}") from None
    return text


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse_bool(value: bool | str | int) -> bool:
    """``true``/``false``, ``yes``/``no``, ``on``/``off``, ``1``/``0``, or a bool."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"not a boolean: {value!r} (try true or false)")


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}


def parse_size(value: int | str) -> int:
    """``10MB``, ``512k``, ``1GiB`` or an int -> bytes (binary units)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _SIZE.fullmatch(str(value).strip())
    if not match:
        raise ValueError(f"not a size: {value!r} (try 10MB, 512k or a number of bytes)")
    unit = (match.group(2) or "").lower()[:1]
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def check_url(url: object) -> str:
    """Return ``url`` when it is ``http(s)://host[:port][/path]``, else raise ValueError.

    ``host:port`` alone is taken as ``http://host:port`` (the classic clients' spelling).
    Anything else, ``http//127.0.0.1:5000`` say, is refused instead of being looked up as a
    host named "http".
    """
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"not a broker url: {url!r} (try http://127.0.0.1:5000)")
    text = url.strip()
    candidate = text if "://" in text else f"http://{text}"
    try:
        parts = urlsplit(candidate)
        parts.port  # noqa: B018 - evaluated to reject a port that is not a number
    except ValueError:
        parts = None
    if (parts is None or parts.scheme not in ("http", "https") or not parts.hostname
            or "/" in text.split("://", 1)[0]):
        raise ValueError(f"not a broker url: {url!r} (try http://127.0.0.1:5000)")
    return text
