"""The ``file`` sink: JSON lines (or text) appended to a file, rotated by size."""

from __future__ import annotations

import os
from pathlib import Path

from lq_logging.sinks import Entry, dumps
from sdk.contract import parse_bool, parse_size
from sdk.render import format_text


class FileSink:
    """Appends one line per record to ``path``; ``flush`` makes the batch durable.

    Args:
        path: the file (its directory is created).
        format: ``"json"`` (one record per line, exactly as produced) or ``"text"``.
        max_bytes: rotate before a write would take the file past this size (``0``: never).
            Accepts ``"10MB"``-style strings.
        backups: how many rotated files to keep: ``PATH.1`` (newest) ... ``PATH.N``.
        fsync: ``flush`` also calls ``os.fsync`` (survives a machine crash, not only a
            process crash).

    Rotation works like :class:`logging.handlers.RotatingFileHandler`: ``PATH`` becomes
    ``PATH.1``, ``PATH.1`` becomes ``PATH.2``, ..., and ``PATH.N`` is deleted. A single line
    longer than ``max_bytes`` is still written whole, into a fresh file.
    """

    def __init__(self, path: str | os.PathLike[str], format: str = "json",
                 max_bytes: int | str = "100MB", backups: int | str = 5,
                 fsync: bool | str = True) -> None:
        if format not in ("json", "text"):
            raise ValueError(f"format must be 'json' or 'text', not {format!r}")
        self.path = Path(path).expanduser()
        self.format = format
        self.max_bytes = parse_size(max_bytes)
        self.backups = int(backups)
        self.fsync = parse_bool(fsync)
        if self.max_bytes < 0 or self.backups < 0:
            raise ValueError("max_bytes and backups must be >= 0")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab")  # noqa: SIM115 - held open until close()
        self._size = self._file.tell()

    def _encode(self, entry: Entry) -> bytes:
        if self.format == "json":
            line = dumps(entry.record)
        else:
            line = format_text(entry.record, ts=entry.ts)
        return (line + "\n").encode("utf-8", "backslashreplace")

    def write(self, batch: list[Entry]) -> None:
        chunk: list[bytes] = []
        pending = 0
        for entry in batch:
            data = self._encode(entry)
            if (self.max_bytes and self._size + pending + len(data) > self.max_bytes
                    and self._size + pending > 0):
                self._file.write(b"".join(chunk))
                chunk, pending = [], 0
                self._rotate()
            chunk.append(data)
            pending += len(data)
        self._file.write(b"".join(chunk))
        self._size += pending

    def _rotate(self) -> None:
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())
        self._file.close()
        if self.backups > 0:
            for n in range(self.backups - 1, 0, -1):
                src = self.path.with_name(f"{self.path.name}.{n}")
                if src.exists():
                    os.replace(src, self.path.with_name(f"{self.path.name}.{n + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self._file = open(self.path, "ab")  # noqa: SIM115
        self._size = 0

    def flush(self) -> None:
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if not self._file.closed:
            self.flush()
            self._file.close()

    def __repr__(self) -> str:
        return f"FileSink({str(self.path)!r}, format={self.format!r})"
