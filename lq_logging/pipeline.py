"""A pipeline: the filter and the sinks one named consumer's batches go through.

:meth:`Pipeline.deliver` writes one batch to every sink, then flushes every sink; only when it
returns may the batch be committed. The pipeline's lock serializes its sinks, so a sink never
sees two batches at once (several topics share one pipeline). A sink that raises is retried
with backoff; when it keeps failing, :class:`PipelineFailed`. Records a sink refuses for good
(:class:`~lq_logging.sinks.Rejected`) go to the :class:`DeadLetters` file and the batch counts
as delivered. Every wait between retries ends at once when the stop event is set: the batch is
then :class:`~lq_logging.sinks.Interrupted` and nothing of it may be committed.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from lq_logging.config import PipelineConfig
from lq_logging.sinks import Entry, Interrupted, Rejected, Sink, interruptible, pause


class PipelineFailed(Exception):
    """A pipeline stopped: a sink kept failing, or the broker refused it for good."""


@dataclass(frozen=True)
class RecordFilter:
    """Keeps records at or above ``min_level`` whose logger starts with one of
    ``logger_prefixes`` (``"app"`` matches ``app`` and ``app.db``, not ``apple``). A record
    without a level or a logger (a classic producer's plain text) does not match a filter
    on that field."""

    min_level: int | None = None
    logger_prefixes: tuple[str, ...] = ()

    def __call__(self, entry: Entry) -> bool:
        rec = entry.record
        if self.min_level is not None:
            levelno = rec.get("levelno")
            if not isinstance(levelno, int):
                named = logging.getLevelName(str(rec.get("level", "")).upper())
                levelno = named if isinstance(named, int) else None
            if levelno is None or levelno < self.min_level:
                return False
        if self.logger_prefixes:
            name = rec.get("logger")
            if not isinstance(name, str):
                return False
            return any(name == p or name.startswith(p.rstrip(".") + ".") or p == ""
                       for p in self.logger_prefixes)
        return True

    @property
    def active(self) -> bool:
        return self.min_level is not None or bool(self.logger_prefixes)


class DeadLetters:
    """Appends refused records to a JSON-lines file: one object per record with the time,
    pipeline, sink, topic, offset, reason and the raw message (so it can be replayed)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._file: IO[bytes] | None = None
        self._lock = threading.Lock()
        self.count = 0

    def add(self, pipeline: str, sink: str, rejects: list[tuple[Entry, str]]) -> None:
        now = datetime.now(UTC).isoformat()
        lines = [json.dumps({"time": now, "pipeline": pipeline, "sink": sink,
                             "topic": entry.topic, "offset": entry.offset, "reason": reason,
                             "message": entry.raw}, ensure_ascii=False) + "\n"
                 for entry, reason in rejects]
        with self._lock:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, "ab")  # noqa: SIM115 - closed in close()
            self._file.write("".join(lines).encode("utf-8", "backslashreplace"))
            self._file.flush()
            os.fsync(self._file.fileno())
            self.count += len(rejects)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


class Pipeline:
    """Built sinks and a filter; :meth:`deliver` writes one batch to every sink.

    Args:
        config: the pipeline's configuration.
        sinks: (SPEC, sink) pairs; the caller may fill the list after construction, so the
            sinks built before a failing one are still closed by :meth:`close`.
        stop: set when the runner is asked to stop; it ends every retry wait.
        dead_letters: where records refused for good go.
        say: one diagnostic line.
        retries: a failing sink's retries before the pipeline fails.
        backoff: the first wait between retries, in seconds (doubled, up to 30 s).
    """

    def __init__(self, config: PipelineConfig, sinks: list[tuple[str, Sink]], *,
                 stop: threading.Event, dead_letters: DeadLetters, say: Callable[[str], None],
                 retries: int, backoff: float) -> None:
        self.config = config
        self.name = config.name
        self.sinks = sinks
        self.filter = RecordFilter(config.min_level, config.logger_prefix)
        self.lock = threading.Lock()
        self.failed: str | None = None
        self.interrupted: str | None = None  # stopped mid-retry: a batch left uncommitted
        self.closed = False
        self._stop = stop
        self._dead_letters = dead_letters
        self._say = say
        self._retries = retries
        self._backoff = backoff

    def deliver(self, topic: str, entries: list[Entry]) -> None:
        """Write ``entries`` to every sink and flush them all; raise PipelineFailed when a
        sink keeps failing, Interrupted when a stop request comes while a sink is failing
        (in both cases nothing may be committed)."""
        kept = [e for e in entries if self.filter(e)] if self.filter.active else entries
        with self.lock, interruptible(self._stop):
            if self.closed:
                raise PipelineFailed("the pipeline is closed")
            if kept:
                for spec, sink in self.sinks:
                    self._attempt(spec, "write", lambda s=sink: s.write(kept), topic, kept)
                for spec, sink in self.sinks:
                    self._attempt(spec, "flush", sink.flush, topic, kept)

    def _attempt(self, spec: str, step: str, call: Callable[[], None], topic: str,
                 kept: list[Entry]) -> None:
        delay = self._backoff
        for attempt in range(self._retries + 1):
            try:
                call()
                return
            except Interrupted as exc:  # the sink's own retry wait (pause) was cut short
                raise _interrupted(spec, step, topic, kept, str(exc)) from exc
            except Rejected as rejected:
                self._dead_letters.add(self.name, spec, rejected.rejects)
                self._say(f"pipeline {self.name!r}: sink {spec} rejected "
                          f"{len(rejected.rejects)} record(s); written to "
                          f"{self._dead_letters.path}")
                return
            except Exception as exc:
                problem = f"{type(exc).__name__}: {exc}"
                if attempt == self._retries:
                    raise PipelineFailed(
                        f"sink {spec} failed to {step} {len(kept)} record(s) of topic "
                        f"{topic!r} (offsets {kept[0].offset}-{kept[-1].offset}) "
                        f"{self._retries + 1} times; last error: {problem}. Nothing of this "
                        f"batch was committed: it is delivered again at the next start.") from exc
                if self._stop.is_set():
                    raise _interrupted(spec, step, topic, kept, problem) from exc
                self._say(f"pipeline {self.name!r}: sink {spec} {step} failed ({problem}); "
                          f"retry {attempt + 1}/{self._retries} in {delay:.1f}s")
                try:
                    pause(delay)
                except Interrupted:
                    raise _interrupted(spec, step, topic, kept, problem) from exc
                delay = min(delay * 2, 30.0)

    def give_up(self, topic: str, entries: list[Entry], reason: str) -> None:
        """Write ``entries`` to the dead-letter file instead of the sinks (a range handed out
        too many times: some record in it keeps a holder from finishing)."""
        if entries:
            self._dead_letters.add(self.name, "(none)", [(e, reason) for e in entries])
            self._say(f"pipeline {self.name!r}: {len(entries)} record(s) of topic {topic!r} "
                      f"(offsets {entries[0].offset}-{entries[-1].offset}) {reason}; written "
                      f"to {self._dead_letters.path}")

    def close(self) -> list[str]:
        """Close every sink (each, whatever the others do); the problems, as lines to say."""
        problems = []
        with self.lock:
            self.closed = True
            for spec, sink in self.sinks:
                try:
                    sink.close()
                except Exception as exc:  # noqa: BLE001 - close every sink regardless
                    problems.append(f"sink {spec}: close failed: {type(exc).__name__}: {exc}")
        return problems

    def describe(self) -> str:
        """``NAME: TOPIC,... -> SPEC, ...``, for the ready line."""
        return (f"{self.name}: {','.join(self.config.topics)} -> "
                f"{', '.join(spec for spec, _ in self.sinks)}")


def _interrupted(spec: str, step: str, topic: str, kept: list[Entry],
                 problem: str) -> Interrupted:
    return Interrupted(
        f"stopped while sink {spec} was failing to {step} {len(kept)} record(s) of topic "
        f"{topic!r} (offsets {kept[0].offset}-{kept[-1].offset}; last error: {problem}). "
        f"Nothing of this batch was committed: it is delivered again at the next start.")


__all__ = ["DeadLetters", "Pipeline", "PipelineFailed", "RecordFilter"]
