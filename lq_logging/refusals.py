"""What to send instead of a batch the broker refused for what it holds.

The broker refuses a whole batch (413 ``too_large``, 400 ``bad_request``) for one bad record
in it, e.g. one over a per-message limit smaller than ``max_record_bytes``. Such a batch is
sent again as two halves, in order, recursively, so only the bad records remain. A single
record refused as too large is cut to half its size with the truncation marker (a JSON
record stays valid JSON: its free text is cut, as
:class:`~lq_logging.record.JSONFormatter` does) and sent again, until it fits. A record that
cannot be cut further, or is refused for another reason, is dropped and counted. A refusal
appends nothing, and every part is sent under a seq of its own (a spooled batch is swapped
for its parts in one atomic spool write), so neither a retry nor a crash part-way
duplicates or loses a part. (A lone surrogate, which no broker can store, never gets that
far: it is sent as its ``\\udXXX`` escape, the same character once a JSON record is parsed.)
"""

from __future__ import annotations

import json
from typing import Any

from lq_logging.diagnostics import diagnostics
from lq_logging.record import escape_surrogates, fit_text, shrink_record, utf8_size
from sdk import TooLarge

#: A record refused as too large is not cut below this many bytes (then it is dropped).
MIN_RECORD_BYTES = 256


def mend(messages: list[str], exc: Exception) -> list[list[str]] | None:
    """The parts to send in place of ``messages`` (refused with ``exc``): two halves, or
    one record mended; ``None`` when a single record cannot be mended (drop it)."""
    reason = f"{type(exc).__name__}: {exc}"
    if len(messages) > 1:
        half = len(messages) // 2
        diagnostics.debug("the broker refused a batch of %d records (%s); sending it in two "
                          "halves", len(messages), reason)
        return [messages[:half], messages[half:]]
    mended = _mend_one(messages[0], exc)
    if mended is None:
        return None
    diagnostics.warning("the broker refused a record of %d bytes (%s); sending it cut to %d "
                        "bytes", utf8_size(messages[0]), reason, utf8_size(mended))
    return [[mended]]


def _mend_one(text: str, exc: Exception) -> str | None:
    if isinstance(exc, UnicodeError):
        mended = escape_surrogates(text)
        return mended if mended != text else None
    if isinstance(exc, TooLarge):
        return shrink(text)
    return None


def shrink(text: str) -> str | None:
    """``text`` cut to about half its UTF-8 size with the truncation marker, or ``None``
    when that is below :data:`MIN_RECORD_BYTES` or no smaller. A JSON object stays valid
    JSON (its free text is cut, see ``record.shrink_record``); other text is cut at the
    end."""
    size = utf8_size(text)
    target = size // 2
    if target < MIN_RECORD_BYTES:
        return None
    data: Any = None
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            data = None
    shorter = shrink_record(data, target) if isinstance(data, dict) else fit_text(text, target)
    return shorter if utf8_size(shorter) < size else None


__all__ = ["MIN_RECORD_BYTES", "mend", "shrink"]
