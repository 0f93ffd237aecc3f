"""The consumer runner behind ``lq consume``: drain topics into sinks, at least once.

Shape (rq's worker loop, procrastinate's signal handling)::

    Runner ── Pipeline (sinks, filters, one named consumer) ── TopicWorker per topic (thread)

Each :class:`TopicWorker` loops: fetch a batch (long-poll, the position does not move),
decode it, filter it, write it to every sink of its pipeline, flush them, then commit the
offset after the batch. The pipeline's lock serializes the sinks, so a sink never sees two
batches at once. A crash before the commit redelivers that batch, and only that batch.

Failures:

* The broker is down or answers 5xx: back off exponentially (capped) and fetch again.
* A sink raises: retry that sink with backoff; when it keeps failing the pipeline stops
  with a clear error and nothing of the batch is committed (the process exits 1 once every
  pipeline has stopped; the others keep running meanwhile).
* A sink raises :class:`~lq_logging.sinks.Rejected`: those records go to the dead-letter
  file with the reason; the batch is then committed.

Stopping (signal handlers in the main thread only, restored afterwards): the first SIGTERM or
SIGINT lets a worker that is writing a batch finish it and commit; a worker that is waiting in
a fetch is abandoned (it has written nothing, so nothing is lost). Then the sinks are closed
and the process exits 0. A second signal exits at once (128 + signal number); at-least-once
delivery redelivers the uncommitted batch.

Every wait between retries (the broker's backoff, a sink's retry, a sink's own backoff through
:func:`~lq_logging.sinks.pause`, a failed commit) is one wait on the runner's stop event, so a
stop request ends it at once. A batch whose sink was failing when the stop came is not
written: the worker raises :class:`~lq_logging.sinks.Interrupted`, commits nothing of it (the
next start delivers it again) and the process exits :data:`EXIT_INTERRUPTED` (75, sysexits'
EX_TEMPFAIL: stopped as asked, but a sink was failing and a batch is left to redeliver). The
same goes for a batch written whose commit kept failing once the stop came. A request in
flight (an HTTP POST, a database statement) is not cut short: it ends within its timeout.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from lq_logging.sinks import (
    Entry,
    Interrupted,
    Rejected,
    Sink,
    SinkError,
    build_sink,
    interruptible,
    pause,
)
from sdk import Client, Consumer, LogQueueError, Message
from sdk.exceptions import BadRequest, NotRegistered, Unauthorized, UnknownId, UnknownTopic

#: What a fetch returns: the messages and the consumer's position.
Fetched = tuple[list[Message], int]

#: Refusals that mean the topic or the registration no longer exists: retrying cannot help.
GONE = (UnknownTopic, UnknownId, NotRegistered)


def gone_reason(what: str, exc: Exception) -> str:
    """One wording for "the topic or registration vanished", whichever call noticed it
    (a delete can land between a fetch and its commit)."""
    return (f"{what}: the topic or this consumer's registration is gone (deleted, or "
            f"expired by --consumer-ttl): {exc}")


DEFAULT_URL = "http://127.0.0.1:5000"
DEFAULT_DEAD_LETTER = "lq-dead-letter.jsonl"

#: Exit status when a stop request cut a failing sink's retries short (sysexits EX_TEMPFAIL):
#: nothing is lost, the batch in hand is delivered again at the next start. A failed pipeline
#: (exit 1) takes precedence.
EXIT_INTERRUPTED = 75


class ConfigError(ValueError):
    """The configuration (a TOML file or the options) is invalid."""


class PipelineFailed(Exception):
    """A pipeline stopped: a sink kept failing, or the broker refused it for good."""


# --- configuration ---------------------------------------------------------------------

@dataclass
class SinkConfig:
    spec: str
    options: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        return self.spec


@dataclass
class PipelineConfig:
    """One pipeline: topics -> filters -> sinks, read by one consumer name.

    ``consumer_name`` ``None`` registers an anonymous consumer: it starts at ``start`` on
    every run and keeps no position across restarts.
    """

    name: str
    topics: list[str]
    sinks: list[SinkConfig]
    consumer_name: str | None = None
    start: str = "earliest"
    min_level: int | None = None
    logger_prefixes: tuple[str, ...] = ()
    batch: int = 500
    wait: float = 5.0


@dataclass
class RunnerConfig:
    url: str = DEFAULT_URL
    token: str | None = None
    pipelines: list[PipelineConfig] = field(default_factory=list)
    dead_letter: str = DEFAULT_DEAD_LETTER
    sink_retries: int = 3
    retry_backoff: float = 0.5
    until_empty: bool = False
    prefetch: bool = True


def parse_level(value: str | int | None) -> int | None:
    """``"WARNING"``/``"warning"``/``30`` -> 30; ``None`` -> ``None``."""
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    level = logging.getLevelName(text.upper())
    if not isinstance(level, int):
        raise ConfigError(f"unknown level {value!r} (DEBUG, INFO, WARNING, ERROR, CRITICAL "
                          "or a number)")
    return level


def _prefixes(value: str | Iterable[str] | None) -> tuple[str, ...]:
    if not value:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value)


_TOP_KEYS = {"url", "token", "dead_letter", "sink_retries", "retry_backoff", "pipeline",
             "until_empty", "prefetch"}
_PIPELINE_KEYS = {"name", "topics", "topic", "consumer", "from", "min_level", "logger_prefix",
                  "batch", "wait", "sinks", "sink"}


def load_config(path: str | os.PathLike[str]) -> RunnerConfig:
    """Read a runner TOML file (see ``examples/runner.toml``).

    Raises:
        ConfigError: unreadable file, bad TOML, unknown keys, missing topics or sinks.
    """
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return config_from_dict(data, source=str(path))


def config_from_dict(data: dict[str, Any], source: str = "config") -> RunnerConfig:
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {sorted(unknown)}; expected "
                          f"{sorted(_TOP_KEYS)}")
    config = RunnerConfig()
    if "url" in data:
        config.url = str(data["url"])
    config.token = data.get("token") or None
    config.dead_letter = str(data.get("dead_letter", DEFAULT_DEAD_LETTER))
    try:
        config.sink_retries = int(data.get("sink_retries", config.sink_retries))
        config.retry_backoff = float(data.get("retry_backoff", config.retry_backoff))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    config.until_empty = bool(data.get("until_empty", False))
    config.prefetch = bool(data.get("prefetch", True))
    pipelines = data.get("pipeline")
    if not isinstance(pipelines, list) or not pipelines:
        raise ConfigError(f"{source}: no [[pipeline]] table")
    names: set[str] = set()
    for index, raw in enumerate(pipelines, 1):
        pipeline = _pipeline_from_dict(raw, f"{source}: pipeline {index}")
        if pipeline.name in names:
            raise ConfigError(f"{source}: two pipelines are named {pipeline.name!r}")
        names.add(pipeline.name)
        config.pipelines.append(pipeline)
    return config


def _pipeline_from_dict(raw: dict[str, Any], where: str) -> PipelineConfig:
    unknown = set(raw) - _PIPELINE_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; expected "
                          f"{sorted(_PIPELINE_KEYS)}")
    name = raw.get("name")
    if not name:
        raise ConfigError(f"{where}: 'name' is required (it is also the consumer name)")
    where = f"{where} ({name!r})"
    topics = raw.get("topics", raw.get("topic"))
    topics = [topics] if isinstance(topics, str) else list(topics or [])
    if not topics:
        raise ConfigError(f"{where}: 'topics' is required")
    sinks = [SinkConfig(str(spec)) for spec in raw.get("sinks", [])]
    for table in raw.get("sink", []):
        options = dict(table)
        spec = options.pop("spec", None) or options.pop("type", None)
        if not spec:
            raise ConfigError(f"{where}: a [[pipeline.sink]] needs 'spec' (or 'type')")
        if spec == "file" and "path" in options:
            spec = f"file:{options.pop('path')}"
        elif spec == "sql" and "url" in options:
            spec = f"sql:{options.pop('url')}"
        elif spec == "http" and "url" in options:
            spec = str(options.pop("url"))
        sinks.append(SinkConfig(str(spec), options))
    if not sinks:
        raise ConfigError(f"{where}: no sinks ('sinks = [...]' or [[pipeline.sink]])")
    start = raw.get("from", "earliest")
    if start not in ("earliest", "latest"):
        raise ConfigError(f"{where}: 'from' must be 'earliest' or 'latest'")
    try:
        batch = int(raw.get("batch", 500))
        wait = float(raw.get("wait", 5.0))
        min_level = parse_level(raw.get("min_level"))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    if not 1 <= batch <= 1000:
        raise ConfigError(f"{where}: 'batch' must be between 1 and 1000")
    if not 0 <= wait <= 30:
        raise ConfigError(f"{where}: 'wait' must be between 0 and 30 seconds")
    return PipelineConfig(name=str(name), topics=[str(t) for t in topics], sinks=sinks,
                          consumer_name=str(raw.get("consumer", name)), start=start,
                          min_level=min_level,
                          logger_prefixes=_prefixes(raw.get("logger_prefix")),
                          batch=batch, wait=wait)


# --- filters and dead letters -------------------------------------------------------------

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


# --- the runner --------------------------------------------------------------------------

class Pipeline:
    """Built sinks, a filter and one consumer; ``deliver`` writes one batch to every sink."""

    def __init__(self, config: PipelineConfig, sinks: list[tuple[str, Sink]],
                 runner: Runner) -> None:
        self.config = config
        self.name = config.name
        self.sinks = sinks
        self.runner = runner
        self.filter = RecordFilter(config.min_level, config.logger_prefixes)
        self.lock = threading.Lock()
        self.failed: str | None = None
        self.interrupted: str | None = None  # stopped mid-retry: a batch left uncommitted
        self.consumer: Consumer | None = None
        self.records = 0  # fetched
        self.written = 0  # passed the filter and reached the sinks
        self.closed = False

    def deliver(self, topic: str, entries: list[Entry]) -> None:
        """Write ``entries`` to every sink and flush them all; raise PipelineFailed when a
        sink keeps failing, Interrupted when a stop request comes while a sink is failing
        (in both cases nothing may be committed)."""
        kept = [e for e in entries if self.filter(e)] if self.filter.active else entries
        with self.lock, interruptible(self.runner.stop_event):
            if self.closed:
                raise PipelineFailed("the pipeline is closed")
            if kept:
                for spec, sink in self.sinks:
                    self._attempt(spec, "write", lambda s=sink: s.write(kept), topic, kept)
                for spec, sink in self.sinks:
                    self._attempt(spec, "flush", sink.flush, topic, kept)
            self.records += len(entries)
            self.written += len(kept)

    def _attempt(self, spec: str, step: str, call: Callable[[], None], topic: str,
                 kept: list[Entry]) -> None:
        retries = self.runner.config.sink_retries
        delay = self.runner.config.retry_backoff
        for attempt in range(retries + 1):
            try:
                call()
                return
            except Interrupted as exc:  # the sink's own retry wait (pause) was cut short
                raise self._interrupted(spec, step, topic, kept, str(exc)) from exc
            except Rejected as rejected:
                self.runner.dead_letters.add(self.name, spec, rejected.rejects)
                self.runner.say(f"pipeline {self.name!r}: sink {spec} rejected "
                                f"{len(rejected.rejects)} record(s); written to "
                                f"{self.runner.dead_letters.path}")
                return
            except Exception as exc:
                problem = f"{type(exc).__name__}: {exc}"
                if attempt == retries:
                    raise PipelineFailed(
                        f"sink {spec} failed to {step} {len(kept)} record(s) of topic "
                        f"{topic!r} (offsets {kept[0].offset}-{kept[-1].offset}) "
                        f"{retries + 1} times; last error: {problem}. Nothing of this batch "
                        f"was committed: it is delivered again at the next start.") from exc
                if self.runner.stopping:
                    raise self._interrupted(spec, step, topic, kept, problem) from exc
                self.runner.say(f"pipeline {self.name!r}: sink {spec} {step} failed "
                                f"({problem}); retry {attempt + 1}/{retries} in {delay:.1f}s")
                try:
                    pause(delay)
                except Interrupted:
                    raise self._interrupted(spec, step, topic, kept, problem) from exc
                delay = min(delay * 2, 30.0)

    @staticmethod
    def _interrupted(spec: str, step: str, topic: str, kept: list[Entry],
                     problem: str) -> Interrupted:
        return Interrupted(
            f"stopped while sink {spec} was failing to {step} {len(kept)} record(s) of topic "
            f"{topic!r} (offsets {kept[0].offset}-{kept[-1].offset}; last error: {problem}). "
            f"Nothing of this batch was committed: it is delivered again at the next start.")

    def close(self) -> list[str]:
        problems = []
        with self.lock:
            self.closed = True
            for spec, sink in self.sinks:
                try:
                    sink.close()
                except Exception as exc:  # noqa: BLE001 - close every sink regardless
                    problems.append(f"sink {spec}: close failed: {type(exc).__name__}: {exc}")
        return problems


class TopicWorker(threading.Thread):
    """Fetch -> deliver -> commit for one topic of one pipeline.

    Prefetch: once a batch is in hand, the next one (from the offset after its last message,
    the position does not move) is fetched on a short-lived daemon thread while this one is
    written, flushed and committed. Commits stay in order and only follow a written batch; a
    prefetched batch is only ever used as the batch from exactly the offset just committed
    (otherwise, or when the prefetch failed, it is fetched again), and dropped when stopping.
    """

    def __init__(self, runner: Runner, pipeline: Pipeline, topic: str) -> None:
        super().__init__(name=f"lq-consume:{pipeline.name}:{topic}", daemon=True)
        self.runner = runner
        self.pipeline = pipeline
        self.topic = topic
        self.ready = False
        self.position: int | None = None
        self._busy = False

    def run(self) -> None:
        try:
            self._run()
        except PipelineFailed as exc:
            self.runner.fail(self.pipeline, str(exc))
        except Interrupted as exc:
            self.runner.interrupt(self.pipeline, str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug must still stop the pipeline loudly
            self.runner.fail(self.pipeline, f"unexpected {type(exc).__name__}: {exc}")
        finally:
            # Only now, with a failure or interruption recorded: the main thread decides the
            # exit status as soon as no worker is busy.
            self._leave_busy()

    def _enter_busy(self) -> bool:
        self._busy = self.runner.enter_busy(self)
        return self._busy

    def _leave_busy(self) -> None:
        if self._busy:
            self._busy = False
            self.runner.leave_busy(self)

    def _keep_going(self) -> bool:
        return not self.runner.stopping and self.pipeline.failed is None

    def _broker(self, what: str, call: Callable[[], Any]) -> Any:
        """Call the broker until it answers, backing off while it is down; ``None`` when
        asked to stop meanwhile. Refusals that retrying cannot fix stop the pipeline."""
        delay = 0.5
        warned = False
        while self._keep_going():
            try:
                result = call()
            except Unauthorized as exc:
                raise PipelineFailed(f"the broker refused the token ({what}): {exc}") from exc
            except BadRequest as exc:
                raise PipelineFailed(f"the broker refused {what}: {exc}") from exc
            except GONE as exc:
                raise PipelineFailed(gone_reason(what, exc)) from exc
            except LogQueueError as exc:
                if not warned:
                    self.runner.say(f"pipeline {self.pipeline.name!r}, topic {self.topic!r}: "
                                    f"{what} failed ({exc}); retrying with backoff")
                    warned = True
                self.runner.wait(delay)
                delay = min(delay * 2, 10.0)
                continue
            if warned:
                self.runner.say(f"pipeline {self.pipeline.name!r}, topic {self.topic!r}: "
                                f"{what} works again")
            return result
        return None

    def _register(self, consumer: Consumer) -> bool:
        client = consumer.client
        done = self._broker("creating the topic",
                            lambda: client.create_topic(self.topic, exist_ok=True) or True)
        if not done:
            return False
        return bool(self._broker("registering the consumer",
                                 lambda: consumer.register(self.topic)))

    def _run(self) -> None:
        consumer = self.pipeline.consumer
        assert consumer is not None
        if not self._register(consumer):
            return
        self.ready = True
        self.runner.worker_ready()
        cfg = self.pipeline.config
        offset: int | None = None
        ahead: tuple[int, Future[Fetched]] | None = None  # (its offset, the fetch)
        while True:
            if not self.runner.enter_idle(self):
                return
            fetched = self._prefetched(ahead, offset)
            ahead = None
            if fetched is None:
                fetched = self._broker("fetch", lambda at=offset: consumer.fetch(
                    self.topic, offset=at, max=cfg.batch, wait=cfg.wait))
            if fetched is None:
                return
            messages, position = fetched
            if not self._enter_busy():
                return  # stopping: abandon the fetch; nothing was written
            if offset is None:
                offset = position
            if messages:
                next_offset = messages[-1].offset + 1
                if self.runner.config.prefetch:
                    ahead = (next_offset, self._prefetch(consumer, next_offset))
                entries = [Entry.decode(self.topic, m.offset, m.value, m.ts) for m in messages]
                self.pipeline.deliver(self.topic, entries)
                committed = self._commit(consumer, next_offset)
                offset = max(next_offset, committed)
                self.runner.count(len(messages))
            self.position = offset
            self._leave_busy()
            if not messages and self.runner.config.until_empty:
                return

    def _prefetch(self, consumer: Consumer, offset: int) -> Future[Fetched]:
        """Fetch from ``offset`` on a daemon thread (one try: a failure is left to the next
        regular fetch, which backs off and reports)."""
        cfg = self.pipeline.config
        future: Future[Fetched] = Future()

        def fetch() -> None:
            try:
                future.set_result(consumer.fetch(self.topic, offset=offset, max=cfg.batch,
                                                 wait=cfg.wait))
            except BaseException as exc:  # noqa: BLE001 - handed to the worker
                future.set_exception(exc)

        threading.Thread(target=fetch, name=f"{self.name}:prefetch", daemon=True).start()
        return future

    @staticmethod
    def _prefetched(ahead: tuple[int, Future[Fetched]] | None,
                    offset: int | None) -> Fetched | None:
        """The prefetched batch when it starts at ``offset`` and its fetch succeeded."""
        if ahead is None or ahead[0] != offset:
            return None  # none, or the commit moved elsewhere (another runner, same name)
        try:
            return ahead[1].result()
        except LogQueueError:
            return None

    def _commit(self, consumer: Consumer, offset: int) -> int:
        """Commit, retrying while the broker is down (each try is the SDK's own retries).
        Once stopping, a failed try is the last: the batch is written but not committed, and
        :class:`Interrupted` says it is delivered again at the next start. A stop request
        during the wait between tries still gets one more try ("finish the batch")."""
        delay = 0.5
        while True:
            try:
                return consumer.commit(self.topic, offset)
            except GONE as exc:
                raise PipelineFailed(gone_reason(f"committing offset {offset}", exc)) from exc
            except (Unauthorized, BadRequest) as exc:
                raise PipelineFailed(f"the broker refused the commit of offset {offset} on "
                                     f"{self.topic!r}: {exc}") from exc
            except LogQueueError as exc:
                if self.runner.stopping:
                    raise Interrupted(
                        f"stopped before the commit of offset {offset} on {self.topic!r} "
                        f"succeeded ({exc}); the batch was written and is delivered again at "
                        "the next start") from exc
                self.runner.say(f"pipeline {self.pipeline.name!r}: commit on {self.topic!r} "
                                f"failed ({exc}); retrying in {delay:.1f}s")
                self.runner.wait(delay)
                delay = min(delay * 2, 10.0)


class Runner:
    """Runs every pipeline of a :class:`RunnerConfig` until a signal (or, with
    ``until_empty``, until every topic is drained).

    Args:
        config: the pipelines and options.
        err: where diagnostics, the status line and the summary go (default stderr).
        progress: show a live status line and a summary line at exit.
    """

    def __init__(self, config: RunnerConfig, *, err: IO[str] | None = None,
                 progress: bool = False) -> None:
        self.config = config
        self.err = err or sys.stderr
        self.progress = progress
        self.dead_letters = DeadLetters(config.dead_letter)
        self.pipelines: list[Pipeline] = []
        self.workers: list[TopicWorker] = []
        self.client: Client | None = None
        self.stopping = False
        self._cond = threading.Condition()  # an RLock: the signal handler may take it
        #: Set by a stop request; every wait between retries (runner and sinks) waits on it.
        self.stop_event = threading.Event()
        self._busy = 0
        self._ready = 0
        self._total = 0
        self._started = time.monotonic()
        self._say_lock = threading.RLock()  # say() may run in a signal handler
        self._status_shown = False
        self._lag: int | None = None

    # -- building ---------------------------------------------------------------------

    def build_sinks(self, on_error: Callable[[PipelineConfig, int, SinkConfig, SinkError],
                                             Exception] | None = None) -> None:
        """Build every pipeline's sinks (opens files, connects to databases). On failure the
        sinks built so far are closed and the error (or ``on_error``'s exception) raised."""
        try:
            for pcfg in self.config.pipelines:
                sinks: list[tuple[str, Sink]] = []
                pipeline = Pipeline(pcfg, sinks, self)
                self.pipelines.append(pipeline)
                for index, scfg in enumerate(pcfg.sinks, 1):
                    try:
                        sinks.append((scfg.describe(), build_sink(scfg.spec, scfg.options)))
                    except SinkError as exc:
                        raise (on_error(pcfg, index, scfg, exc) if on_error else exc) from exc
        except BaseException:
            self.close_sinks()
            raise

    def close_sinks(self) -> None:
        for pipeline in self.pipelines:
            for problem in pipeline.close():
                self.say(problem)
        self.dead_letters.close()

    # -- running ----------------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped; return the exit code: 0, 1 when a pipeline failed, or
        :data:`EXIT_INTERRUPTED` when a stop request cut a failing sink's retries short."""
        if not self.pipelines:
            self.build_sinks()
        restore = self._install_signal_handlers()
        self.client = Client(self.config.url, token=self.config.token)
        try:
            for pipeline in self.pipelines:
                pcfg = pipeline.config
                pipeline.consumer = self.client.consumer(name=pcfg.consumer_name,
                                                         start=pcfg.start)  # type: ignore[arg-type]
                for topic in pcfg.topics:
                    self.workers.append(TopicWorker(self, pipeline, topic))
            if self.progress:
                threading.Thread(target=self._lag_loop, name="lq-consume:lag",
                                 daemon=True).start()
            for worker in self.workers:
                worker.start()
            self._wait()
        finally:
            self.close_sinks()
            self._summary()
            if self.client is not None:
                self.client.close()
            restore()
        if any(p.failed for p in self.pipelines):
            return 1
        return EXIT_INTERRUPTED if any(p.interrupted for p in self.pipelines) else 0

    def _wait(self) -> None:
        """Main thread: wait for the workers (or, once stopping, for busy ones only), showing
        the status line meanwhile."""
        next_status = time.monotonic()
        interval = 0.5 if _isatty(self.err) else 5.0
        with self._cond:
            while True:
                if not any(w.is_alive() for w in self.workers):
                    return
                all_failed = all(p.failed for p in self.pipelines)
                if self._busy == 0 and (self.stopping or all_failed):
                    return
                self._cond.wait(0.2)
                if self.progress and time.monotonic() >= next_status:
                    self._status()
                    next_status = time.monotonic() + interval

    # called by workers, under the condition
    def enter_idle(self, worker: TopicWorker) -> bool:
        with self._cond:
            return not self.stopping and worker.pipeline.failed is None

    def enter_busy(self, worker: TopicWorker) -> bool:
        with self._cond:
            if self.stopping or worker.pipeline.failed is not None:
                return False
            self._busy += 1
            return True

    def leave_busy(self, worker: TopicWorker) -> None:
        with self._cond:
            self._busy -= 1
            self._cond.notify_all()

    def worker_ready(self) -> None:
        with self._cond:
            self._ready += 1
            if self._ready == len(self.workers):
                topics = ", ".join(f"{p.name}: {','.join(p.config.topics)} -> "
                                   f"{', '.join(spec for spec, _ in p.sinks)}"
                                   for p in self.pipelines)
                self.say(f"ready ({topics})")

    def count(self, n: int) -> None:
        with self._cond:
            self._total += n

    def wait(self, seconds: float) -> bool:
        """Sleep that a stop request cuts short; True when stopping."""
        return self.stop_event.wait(seconds)

    # fail() and interrupt() run on a worker before it leaves busy (TopicWorker.run), so once
    # stopping the main thread sees the outcome, and its message, before it exits.
    def fail(self, pipeline: Pipeline, message: str) -> None:
        with self._cond:
            first = pipeline.failed is None
            if first:
                pipeline.failed = message
            self._cond.notify_all()
        if first:
            self.say(f"error: pipeline {pipeline.name!r} stopped: {message}")

    def interrupt(self, pipeline: Pipeline, message: str) -> None:
        """A stop request cut ``pipeline`` short with a batch left uncommitted."""
        with self._cond:
            pipeline.interrupted = message
            self._cond.notify_all()
        self.say(f"pipeline {pipeline.name!r}: {message}")

    def request_stop(self, reason: str = "stop requested") -> None:
        with self._cond:
            self.stopping = True
            self.stop_event.set()
            self._cond.notify_all()
        busy = self._busy
        self.say(f"{reason}: " + (f"finishing {busy} batch(es), then exiting"
                                  if busy else "exiting") + " (again to exit at once)")

    def _install_signal_handlers(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handle(signum: int, frame: object) -> None:
            name = signal.Signals(signum).name
            if self.stopping:
                self.say(f"{name} again: exiting now; the uncommitted batch will be "
                         "delivered again")
                os._exit(128 + signum)
            self.request_stop(name)

        old = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}

        def restore() -> None:
            for sig, previous in old.items():
                signal.signal(sig, previous)

        return restore

    # -- output -----------------------------------------------------------------------

    def say(self, message: str) -> None:
        with self._say_lock:
            if self._status_shown:
                self.err.write("\r\x1b[2K")
                self._status_shown = False
            self.err.write(f"lq consume: {message}\n")
            self.err.flush()

    def _lag_loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                lag = 0
                for pipeline in self.pipelines:
                    if pipeline.consumer is None or pipeline.failed:
                        continue
                    for topic in pipeline.config.topics:
                        lag += pipeline.consumer.size(topic)
                self._lag = lag
            except Exception:  # noqa: BLE001 - lag is informational only
                self._lag = None
            self.stop_event.wait(1.0)

    def _line(self) -> str:
        elapsed = max(time.monotonic() - self._started, 1e-9)
        lag = "?" if self._lag is None else f"{self._lag:,}"
        dead = self.dead_letters.count
        return (f"{self._total:,} records, {self._total / elapsed:,.0f}/s, lag {lag}"
                + (f", {dead:,} dead-lettered" if dead else ""))

    def _status(self) -> None:
        with self._say_lock:
            if _isatty(self.err):
                self.err.write("\r\x1b[2K" + self._line())
                self._status_shown = True
            else:
                self.err.write(f"lq consume: {self._line()}\n")
            self.err.flush()

    def _summary(self) -> None:
        elapsed = time.monotonic() - self._started
        failed = [p.name for p in self.pipelines if p.failed]
        if not self.progress and not failed and not self.dead_letters.count:
            return
        status = f"; failed: {', '.join(failed)}" if failed else ""
        self.say(f"done: {self._total:,} records in {elapsed:.2f}s "
                 f"({self._total / max(elapsed, 1e-9):,.0f}/s), "
                 f"{self.dead_letters.count:,} dead-lettered{status}")


def _isatty(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


__all__ = ["EXIT_INTERRUPTED", "ConfigError", "DeadLetters", "Pipeline", "PipelineConfig",
           "PipelineFailed", "RecordFilter", "Runner", "RunnerConfig", "SinkConfig",
           "TopicWorker", "config_from_dict", "load_config", "parse_level"]
