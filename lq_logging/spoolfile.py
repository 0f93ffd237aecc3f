"""The spool's bytes on disk: one JSON line per entry, whole writes, writes in place, syncs.

Kept apart from :mod:`lq_logging.spool` (what the entries mean) so that the file-system
details (``O_APPEND``, partial writes, which syncs a file system may refuse) sit in one
place.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os

#: The length of an ``r`` line (see ``spool.py``): room for the ``a`` line of its batch,
#: whose producer id and seq are JSON-safe integers (16 digits; 20 allowed for).
RESERVE_BYTES = 96


def encode(entry: dict) -> bytes:
    """``entry`` as one line of compact JSON (lone surrogates kept, as the records hold them)."""
    return (json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n").encode(
        "utf-8", "surrogatepass")


def reserve(batch_id: int) -> bytes:
    """An ``r`` line for ``batch_id``: ``{"op":"r","id":7}`` padded with spaces."""
    return padded(encode({"op": "r", "id": batch_id}))


def padded(line: bytes, size: int = RESERVE_BYTES) -> bytes:
    """``line`` (ending in a newline) padded with spaces to ``size`` bytes; JSON ignores
    the spaces. Raises ValueError when it does not fit."""
    if len(line) > size:
        raise ValueError(f"a {len(line)}-byte line does not fit in {size} bytes")
    return line[:-1] + b" " * (size - len(line)) + b"\n"


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` at the end of ``fd`` (an ``O_APPEND`` descriptor)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_at(fd: int, offset: int, data: bytes) -> None:
    """Write ``data`` over the bytes at ``offset``: blocks the file already has, so no new
    space is needed (on a file system that writes in place). ``pwrite`` on an ``O_APPEND``
    descriptor appends on Linux, so the flag is off meanwhile."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_APPEND)
    try:
        view = memoryview(data)
        while view:
            done = os.pwrite(fd, view, offset)
            view, offset = view[done:], offset + done
    finally:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags)


def sync_file(fd: int) -> None:
    # fdatasync where there is one: it also writes the size an append changed.
    (getattr(os, "fdatasync", None) or os.fsync)(fd)


def sync_dir(path: str) -> None:
    """fsync a directory, so a file created or renamed in it survives a power cut."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some file systems cannot fsync a directory (and need not).
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


__all__ = ["RESERVE_BYTES", "encode", "padded", "reserve", "sync_dir", "sync_file",
           "write_all", "write_at"]
