"""The ``stdout`` sink: human text (colours when stdout is a terminal) or JSON lines."""

from __future__ import annotations

import sys
from typing import IO

from lq_logging.sinks import Entry, dumps
from sdk.contract import parse_bool
from sdk.render import format_text


class StdoutSink:
    """Writes each record to standard output.

    Args:
        format: ``"text"`` (``TIME LEVEL logger: message``) or ``"json"`` (one record per
            line, exactly as produced).
        colour: colour the level; by default only when the stream is a terminal.
        stream: where to write (default ``sys.stdout``; for tests and embedding).
    """

    def __init__(self, format: str = "text", colour: bool | str | None = None,
                 stream: IO[str] | None = None) -> None:
        if format not in ("text", "json"):
            raise ValueError(f"format must be 'text' or 'json', not {format!r}")
        self.format = format
        self.stream = stream or sys.stdout
        if colour is None:
            isatty = getattr(self.stream, "isatty", None)
            colour = bool(isatty and isatty())
        self.colour = parse_bool(colour)

    def write(self, batch: list[Entry]) -> None:
        if self.format == "json":
            lines = [dumps(entry.record) for entry in batch]
        else:
            lines = [format_text(entry.record, ts=entry.ts, colour=self.colour) for entry in batch]
        if lines:
            self.stream.write("\n".join(lines) + "\n")

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        self.flush()

    def __repr__(self) -> str:
        return f"StdoutSink(format={self.format!r})"
