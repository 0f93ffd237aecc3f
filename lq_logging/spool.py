"""The disk spool: batches the broker could not take yet, in order, one file per process.

A :class:`Spool` is one append-only file, ``lq-<pid>-<token>.spool`` in the spool
directory, held with ``flock(LOCK_EX)`` for as long as it is open. Each line is one JSON
entry, appended with a single ``write`` on an ``O_APPEND`` descriptor (or, for an ``a``
line, written over an ``r`` line):

* ``{"op": "b", "id": 7, "t": topic, "p": producer_id|null, "s": seq|null, "m": [...]}``:
  a batch. ``p``/``s`` are the producer id and seq it will be sent with, given as it is
  written (see ``seqs.py``), or null when it had none yet (then an ``a`` line gives them).
* ``{"op": "a", "id": 7, "p": producer_id, "s": seq}``: the batch was given this producer
  id and seq; written (and made durable) *before* the batch is sent, so a replay after a
  crash repeats the same seq and the broker appends it once.
* ``{"op": "d", "id": 7}``: the batch is done (acknowledged by the broker, or dropped
  because the spool was over its bound). Done batches are never sent again.
* ``{"op": "p", "id": 8, "of": 7, "t": topic, "m": [...]}`` then
  ``{"op": "x", "id": 7, "parts": [8, 9]}``: :meth:`Spool.replace`. The ``p`` lines are
  parts that do not count yet; the ``x`` line, written once they are on disk, swaps batch
  7 for them in its place. Parts have no producer id or seq (each gets its own ``a`` when
  it is sent), and batch 7 is never sent again. Without its ``x`` line (a crash before
  it, or a torn one), the parts are ignored and batch 7 stays as it was. (A reader that
  predates ``p``/``x`` ignores both and keeps batch 7: never a duplicate.)
* ``{"op": "r", "id": 7}`` padded with spaces to :data:`RESERVE_BYTES`, in the same write
  as a ``b`` line with nulls or a ``p`` line: room for that batch's first ``a`` line,
  written over it in place, into blocks the file has, so a full disk cannot keep the batch
  from being sent (a later ``a`` is appended, and wins). An overwrite torn by a power cut
  does not parse and is skipped: the ``a`` is synced before the send, so the batch was not
  sent under it. (A reader that predates ``r`` misses an ``a`` over a part's ``r`` line,
  which comes before the ``x`` line: after a downgrade, such a part may be sent twice.)

A process that dies leaves its file behind, unlocked. :func:`adopt_orphans` (run when a
handler starts) locks every such file it finds, checks that the path still names the
inode it locked (a rewrite or unlink may have replaced it meanwhile), and hands the live
batches over to be delivered first. A torn last line (kill -9 during a write) is ignored
and cut off.

Durability (``fsync=True``, the default): a kill -9 loses nothing that was written, and
with fsync a power cut loses nothing that was synced. New batches are synced once per
call that writes them (:meth:`Spool.sync` after a group of appends), an ``a`` entry
before its batch is sent, the parts and then the ``x`` line of a replace, and a rewrite
before it is renamed; creating a file or renaming a rewrite also syncs the directory.
``d`` entries are not synced: a lost one replays a batch under its recorded seq, which
the broker drops as a duplicate.

Only done batches are forgotten: the file is truncated once nothing is live, and rewritten
(into a locked temporary file, then renamed over the old one) when done entries dominate.
A write that fails (a full disk) is cut off again, so the file stays whole; a ``d`` line
that cannot be written is skipped (see above: a replay repeats a recorded seq). The spool is
not thread-safe: the backlog (``backlog.py``) serializes every call.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from lq_logging.spoolfile import (
    RESERVE_BYTES,
    encode,
    padded,
    reserve,
    sync_dir,
    sync_file,
    write_all,
    write_at,
)

SUFFIX = ".spool"
#: Rewrite the file when done entries take more than this many bytes (and more than live).
COMPACT_BYTES = 4 * 1024 * 1024


@dataclass(slots=True)
class SpoolBatch:
    """One live batch: where it is in the file, and the id/seq it was given, if any."""

    id: int
    topic: str
    producer_id: int | None
    seq: int | None
    count: int
    offset: int
    length: int
    #: Its line in the file is a ``b`` line with this producer id and seq (a compaction
    #: copies it as it is, without parsing it).
    verbatim: bool = True
    #: Where its ``r`` line is, until an ``a`` line for it is written.
    reserve: int | None = None


class Spool:
    """One locked spool file (see the module docstring). Use :meth:`create` or :func:`adopt`.

    ``fsync``: make writes durable against a power cut (see the module docstring).
    """

    def __init__(self, path: str, fd: int, *, fsync: bool = True) -> None:
        self.path = path
        self.fd = fd
        self.fsync = fsync
        self.batches: deque[SpoolBatch] = deque()
        self._by_id: dict[int, SpoolBatch] = {}
        self._pending: dict[int, SpoolBatch] = {}  # "p" parts while loading
        self._next_id = 1
        self._size = 0
        self._live_bytes = 0
        self._dirty = False
        self.live_records = 0
        self.closed = False

    # -- opening ------------------------------------------------------------------------

    @classmethod
    def create(cls, directory: str, *, fsync: bool = True) -> Spool:
        """A new, empty spool file for this process in ``directory`` (created if missing)."""
        made = not os.path.isdir(directory)
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, f"lq-{os.getpid()}-{secrets.token_hex(4)}{SUFFIX}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC,
                     0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if fsync:
                sync_dir(directory)
                if made:
                    sync_dir(os.path.dirname(os.path.abspath(directory)))
        except OSError:
            os.close(fd)
            raise
        return cls(path, fd, fsync=fsync)

    @classmethod
    def adopt(cls, path: str, *, fsync: bool = True) -> Spool | None:
        """Lock ``path`` if nobody holds it and load its live batches; else ``None``."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        try:
            # The owner may have renamed a rewrite over it or unlinked it before we locked.
            if os.fstat(fd).st_ino != os.stat(path).st_ino or os.fstat(fd).st_nlink == 0:
                os.close(fd)
                return None
        except OSError:
            os.close(fd)
            return None
        spool = cls(path, fd, fsync=fsync)
        spool._load()
        return spool

    def _load(self) -> None:
        size = os.fstat(self.fd).st_size
        data = os.pread(self.fd, size, 0) if size else b""
        pos = 0
        good_end = 0
        while pos < len(data):
            end = data.find(b"\n", pos)
            if end < 0:
                break  # a torn last write
            line = data[pos:end]
            try:
                entry = json.loads(line)
                self._apply(entry, pos, end + 1 - pos)
            except (ValueError, KeyError, TypeError):
                pass  # a damaged line: skip it
            pos = end + 1
            good_end = pos
        if good_end < size:
            os.ftruncate(self.fd, good_end)
        self._size = good_end
        self._pending.clear()  # parts whose "x" line never made it: dead bytes

    def _apply(self, entry: dict, offset: int, length: int) -> None:
        op = entry["op"]
        bid = int(entry["id"])
        self._next_id = max(self._next_id, bid + 1)
        if op == "b":
            batch = SpoolBatch(bid, str(entry["t"]), entry.get("p"), entry.get("s"),
                               len(entry["m"]), offset, length)
            self._by_id[bid] = batch
            self.batches.append(batch)
            self.live_records += batch.count
            self._live_bytes += length
        elif op == "a":  # (over a part's "r" line, it comes before the part's "x" line)
            batch = self._by_id.get(bid) or self._pending.get(bid)
            if batch is not None:
                batch.producer_id, batch.seq = int(entry["p"]), int(entry["s"])
                batch.verbatim, batch.reserve = False, None
        elif op == "r":
            batch = self._by_id.get(bid) or self._pending.get(bid)
            if batch is not None and batch.seq is None and length == RESERVE_BYTES:
                batch.reserve = offset
        elif op == "d":
            batch = self._by_id.pop(bid, None)
            if batch is not None:
                self.batches.remove(batch)
                self.live_records -= batch.count
                self._live_bytes -= batch.length
        elif op == "p":
            self._pending[bid] = SpoolBatch(bid, str(entry["t"]), None, None, len(entry["m"]),
                                            offset, length, verbatim=False)
        elif op == "x":
            batch = self._by_id.get(bid)
            parts = [self._pending.get(int(i)) for i in entry["parts"]]
            if batch is not None and parts and None not in parts:
                for part in parts:
                    del self._pending[part.id]
                self._swap(batch, parts)

    # -- writing ------------------------------------------------------------------------

    def _write(self, entry: dict, with_reserve: bool = False) -> tuple[int, int]:
        """Append ``entry`` (and its ``r`` line, in the same write); its offset and length."""
        data = encode(entry)
        line = len(data)
        if with_reserve:
            data += reserve(entry["id"])
        offset = self._size
        self._dirty = True
        try:
            write_all(self.fd, data)
        except OSError:
            # A partial line (disk full) would glue itself to the next entry: cut it off.
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, offset)
            raise
        self._size += len(data)
        return offset, line

    def sync(self) -> None:
        """Make everything written so far durable (when this spool fsyncs)."""
        if self.fsync and self._dirty:
            sync_file(self.fd)
            self._dirty = False

    def append(self, topic: str, messages: Sequence[str], producer_id: int | None = None,
               seq: int | None = None, *, sync: bool = True) -> SpoolBatch:
        """Write one batch at the end; return it. ``sync=False`` leaves the fsync to a
        later :meth:`sync` (one per group of batches)."""
        bid = self._next_id
        self._next_id += 1
        offset, length = self._write({"op": "b", "id": bid, "t": topic, "p": producer_id,
                                      "s": seq, "m": list(messages)}, seq is None)
        batch = SpoolBatch(bid, topic, producer_id, seq, len(messages), offset, length,
                           reserve=offset + length if seq is None else None)
        self._by_id[bid] = batch
        self.batches.append(batch)
        self.live_records += batch.count
        self._live_bytes += length
        if sync:
            self.sync()
        return batch

    def assign(self, batch: SpoolBatch, producer_id: int, seq: int) -> None:
        """Record the producer id and seq ``batch`` is about to be sent with (durably, before
        it is sent): over its ``r`` line if it still has one, else at the end."""
        entry = {"op": "a", "id": batch.id, "p": producer_id, "s": seq}
        line = encode(entry)
        if batch.reserve is not None and len(line) <= RESERVE_BYTES:
            write_at(self.fd, batch.reserve, padded(line))
            self._dirty = True
        else:
            self._write(entry)
        self.sync()
        batch.producer_id, batch.seq, batch.verbatim = producer_id, seq, False
        batch.reserve = None

    def replace(self, batch: SpoolBatch, parts: Sequence[Sequence[str]]) -> list[SpoolBatch]:
        """Put new batches holding ``parts`` (in order) where the live ``batch`` is, in one
        atomic step: after a crash the file holds either ``batch`` (with its id and seq) or
        every part (each without one), never both. Returns the new batches.

        This is how a batch the broker refused is split, or a record in it cut down: the
        parts must each be sent under a new seq, and ``batch`` never again.
        """
        if self._by_id.get(batch.id) is not batch:
            raise ValueError(f"batch {batch.id} is not live in {self.path}")
        if not parts or not all(parts):
            raise ValueError("replace needs one or more non-empty parts")
        new: list[SpoolBatch] = []
        for messages in parts:
            bid = self._next_id
            self._next_id += 1
            offset, length = self._write({"op": "p", "id": bid, "of": batch.id,
                                          "t": batch.topic, "m": list(messages)}, True)
            new.append(SpoolBatch(bid, batch.topic, None, None, len(messages), offset, length,
                                  verbatim=False, reserve=offset + length))
        self.sync()  # every part on disk before the line that makes them live
        self._write({"op": "x", "id": batch.id, "parts": [b.id for b in new]})
        self._swap(batch, new)
        self.sync()
        return new

    def _swap(self, batch: SpoolBatch, parts: list[SpoolBatch]) -> None:
        index = self.batches.index(batch)
        del self.batches[index]
        del self._by_id[batch.id]
        self.live_records -= batch.count
        self._live_bytes -= batch.length
        for i, part in enumerate(parts):
            self.batches.insert(index + i, part)
            self._by_id[part.id] = part
            self.live_records += part.count
            self._live_bytes += part.length

    def done(self, batch: SpoolBatch) -> None:
        """Forget ``batch`` (acknowledged, or dropped)."""
        if self._by_id.pop(batch.id, None) is None:
            return
        self.batches.remove(batch)
        self.live_records -= batch.count
        self._live_bytes -= batch.length
        if not self.batches:
            os.ftruncate(self.fd, 0)
            self._size = 0
            self._dirty = True
            return
        try:
            self._write({"op": "d", "id": batch.id})
            dead = self._size - self._live_bytes
            if dead > COMPACT_BYTES and dead > self._live_bytes:
                self._rewrite()
        except OSError:
            # A full disk: the batch is forgotten here all the same. A replay of it (after a
            # crash) repeats its recorded seq, which the broker drops as a duplicate.
            pass

    def trim(self, max_bytes: int) -> int:
        """Drop the oldest batches until the live ones fit in ``max_bytes`` (the newest one
        always stays); return how many records were dropped."""
        lost = 0
        while len(self.batches) > 1 and self._live_bytes > max_bytes:
            batch = self.batches[0]
            lost += batch.count
            self.done(batch)
        return lost

    def read(self, batch: SpoolBatch) -> list[str]:
        """The messages of ``batch``."""
        data = os.pread(self.fd, batch.length, batch.offset)
        return list(json.loads(data)["m"])

    def head(self) -> SpoolBatch | None:
        return self.batches[0] if self.batches else None

    def __iter__(self) -> Iterator[SpoolBatch]:
        return iter(list(self.batches))

    def __len__(self) -> int:
        return len(self.batches)

    def _rewrite(self) -> None:
        """Copy the live batches into a new locked file and rename it over this one (on an
        error, e.g. a full disk, the old file stays as it was)."""
        tmp = f"{self.path}.tmp-{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            lines = [os.pread(self.fd, b.length, b.offset) if b.verbatim else
                     encode({"op": "b", "id": b.id, "t": b.topic, "p": b.producer_id,
                             "s": b.seq, "m": self.read(b)}) for b in self.batches]
            chunks = [line + reserve(b.id) if b.seq is None else line
                      for b, line in zip(self.batches, lines, strict=True)]
            data = b"".join(chunks)
            write_all(fd, data)
            if self.fsync:
                sync_file(fd)  # the copy is whole on disk before it replaces the original
            os.replace(tmp, self.path)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        old_fd, self.fd, self._size = self.fd, fd, len(data)
        offset = 0
        for batch, line, chunk in zip(self.batches, lines, chunks, strict=True):
            batch.offset, batch.length, batch.verbatim = offset, len(line), True
            batch.reserve = offset + len(line) if batch.seq is None else None
            offset += len(chunk)
        self._live_bytes, self._dirty = sum(map(len, lines)), False
        if self.fsync:
            sync_dir(os.path.dirname(self.path))
        os.close(old_fd)

    # -- closing ------------------------------------------------------------------------

    def close(self) -> None:
        """Release the file: removed when nothing is live, else left for another process."""
        if self.closed:
            return
        self.closed = True
        if not self.batches:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        os.close(self.fd)

    def abandon(self) -> None:
        """Close an inherited descriptor in a forked child without unlocking the parent's
        file (``flock`` stays held while the parent's descriptor is open)."""
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError):
                os.close(self.fd)


def adopt_orphans(directory: str, exclude: Sequence[str] = (), *,
                  fsync: bool = True) -> list[Spool]:
    """Lock and load every spool file in ``directory`` that no live process holds.

    Files with nothing live are removed. Oldest files (by modification time) come first.
    """
    try:
        names = [n for n in os.listdir(directory) if n.endswith(SUFFIX)]
    except OSError:
        return []
    paths = []
    for name in names:
        path = os.path.join(directory, name)
        if path in exclude:
            continue
        try:
            paths.append((os.stat(path).st_mtime, path))
        except OSError:
            continue
    adopted: list[Spool] = []
    for _, path in sorted(paths):
        spool = Spool.adopt(path, fsync=fsync)
        if spool is None:
            continue
        if not spool.batches:
            spool.close()
            continue
        adopted.append(spool)
    return adopted


__all__ = ["Spool", "SpoolBatch", "adopt_orphans"]
