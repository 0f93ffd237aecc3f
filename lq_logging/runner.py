"""The consumer runner behind ``lq consume``: drain topics into sinks, at least once.

Shape (rq's worker loop, procrastinate's signal handling)::

    Runner ── Pipeline (sinks, filters, one named consumer) ── TopicWorker per topic (thread)

A named pipeline's workers are :class:`~lq_logging.leasing.LeaseWorker`: each batch is a
lease, so runners sharing the name share the work (below, "commit" is then "ack").

The runner builds the pipelines (:mod:`lq_logging.pipeline`) from a validated
:class:`~lq_logging.config.RunnerConfig`, starts one :class:`~lq_logging.worker.TopicWorker`
per topic, owns the process's signals and output, and decides the exit status. Each worker
loops: fetch a batch (long-poll, the position does not move), decode it, filter it, write it to
every sink of its pipeline, flush them, then commit the offset after the batch. A crash before
the commit redelivers that batch, and only that batch.

Failures:

* The broker is down or answers 5xx: back off exponentially (capped) and fetch again, saying so
  in one line every few seconds.
* A sink raises: retry that sink with backoff; when it keeps failing the pipeline stops
  with a clear error and nothing of the batch is committed (the process exits 1 once every
  pipeline has stopped; the others keep running meanwhile).
* A sink raises :class:`~lq_logging.sinks.Rejected`: those records go to the dead-letter
  file with the reason; the batch is then committed.

Stopping (signal handlers in the main thread only, restored afterwards; the state is the
:class:`~lq_logging.gate.Gate`): the first SIGTERM or SIGINT lets a worker that is writing a
batch finish it and commit; a worker that is waiting in a fetch is abandoned (it has written
nothing, so nothing is lost). Then the sinks are closed and the process exits 0. A second
signal exits at once (128 + signal number); at-least-once delivery redelivers the uncommitted
batch.

Every wait between retries (the broker's backoff, a sink's retry, a sink's own backoff through
:func:`~lq_logging.sinks.pause`, a failed commit) is one wait on the gate's stop event, so a
stop request ends it at once. A batch whose sink was failing when the stop came is not
written: the worker raises :class:`~lq_logging.sinks.Interrupted`, commits nothing of it (the
next start delivers it again) and the process exits :data:`EXIT_INTERRUPTED` (75, sysexits'
EX_TEMPFAIL: stopped as asked, but a sink was failing and a batch is left to redeliver). The
same goes for a batch written whose commit kept failing once the stop came. A request in
flight (an HTTP POST, a database statement) is not cut short: it ends within its timeout.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import IO

from lq_logging.config import PipelineConfig, RunnerConfig, SinkConfig
from lq_logging.gate import Gate
from lq_logging.leasing import LeaseWorker
from lq_logging.pipeline import DeadLetters, Pipeline
from lq_logging.sinks import Sink, SinkError, build_sink
from lq_logging.worker import BrokerWatch, Progress, TopicWorker, outage_reason
from sdk import Client, LogQueueError
from sdk.exceptions import BrokerUnavailable, Unauthorized

#: Exit status when a stop request cut a failing sink's retries short (sysexits EX_TEMPFAIL):
#: nothing is lost, the batch in hand is delivered again at the next start. A failed pipeline
#: (exit 1) takes precedence.
EXIT_INTERRUPTED = 75

#: Builds the exception raised for a sink that cannot be built (the CLI names its option).
OnSinkError = Callable[[PipelineConfig, int, SinkConfig, SinkError], Exception]


def client_for(config: RunnerConfig) -> Client:
    """The runner's client. Its own tries are few (one more per url, so every url is tried
    once): the runner retries for as long as it takes, and says so meanwhile."""
    return Client(config.url, token=config.token, verify=config.cacert,
                  retries=len(config.url.split(",")))


def check_broker(config: RunnerConfig) -> str | None:
    """``None`` when the broker answers and accepts the token, else one line saying why."""
    try:
        with client_for(config) as client:
            client.topics()
    except Unauthorized as exc:
        return f"broker {config.url} refused the token ({exc})"
    except BrokerUnavailable as exc:
        return f"broker {config.url} not answering ({outage_reason(exc)})"
    except LogQueueError as exc:
        return f"broker {config.url}: {exc}"
    return None


class Runner:
    """Runs every pipeline of a :class:`~lq_logging.config.RunnerConfig` until a signal (or,
    with ``until_empty``, until every topic is drained).

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
        self._say_lock = threading.RLock()  # say() may run in a signal handler
        self._status_shown = False
        self.gate = Gate(self.say)
        self.dead_letters = DeadLetters(config.dead_letter)
        self.pipelines: list[Pipeline] = []
        self.workers: list[TopicWorker] = []
        self.counts = Progress(sum(len(p.topics) for p in config.pipelines), self._ready)
        self._started = time.monotonic()
        self._lag: int | None = None

    # -- building ---------------------------------------------------------------------

    def build_sinks(self, on_error: OnSinkError | None = None) -> None:
        """Build every pipeline's sinks (opens files, connects to databases). On failure the
        sinks built so far are closed and the error (or ``on_error``'s exception) raised."""
        try:
            for pcfg in self.config.pipelines:
                sinks: list[tuple[str, Sink]] = []
                self.pipelines.append(Pipeline(
                    pcfg, sinks, stop=self.gate.event, dead_letters=self.dead_letters,
                    say=self.say, retries=self.config.sink_retries,
                    backoff=self.config.retry_backoff))
                for index, scfg in enumerate(pcfg.sinks, 1):
                    try:
                        sinks.append((scfg.spec, build_sink(scfg.spec, scfg.options)))
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
        client = client_for(self.config)
        try:
            self._start_workers(client)
            self.gate.settle(self.workers, self.pipelines, self._tick())
        finally:
            self.close_sinks()
            self._summary()
            client.close()
            restore()
        if any(p.failed for p in self.pipelines):
            return 1
        return EXIT_INTERRUPTED if any(p.interrupted for p in self.pipelines) else 0

    def _start_workers(self, client: Client) -> None:
        watch = BrokerWatch(self.config.url, self.say)
        for pipeline in self.pipelines:
            pcfg = pipeline.config
            consumer = client.consumer(name=pcfg.consumer, start=pcfg.start)
            options = {"gate": self.gate, "watch": watch, "progress": self.counts,
                       "prefetch": self.config.prefetch, "until_empty": self.config.until_empty}
            if pcfg.consumer is not None:  # a name: runners sharing it share the work
                options.update(lease_ms=int(pcfg.lease * 1000), say=self.say,
                               max_deliveries=pcfg.max_deliveries)
            worker = TopicWorker if pcfg.consumer is None else LeaseWorker
            self.workers += [worker(pipeline, topic, consumer, **options)
                             for topic in pcfg.topics]
        if self.progress:
            threading.Thread(target=self._lag_loop, name="lq-consume:lag", daemon=True).start()
        for worker in self.workers:
            worker.start()

    def _install_signal_handlers(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handle(signum: int, _frame: object) -> None:
            name = signal.Signals(signum).name
            if self.gate.stopping:
                self.say(f"{name} again: exiting now; the uncommitted batch will be "
                         "delivered again")
                os._exit(128 + signum)
            self.gate.request_stop(name)

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

    def _ready(self) -> None:
        self.say(f"ready ({', '.join(p.describe() for p in self.pipelines)})")

    def _tick(self) -> Callable[[], None]:
        """The main thread's periodic work while it waits: the status line, with --progress."""
        interval = 0.5 if _isatty(self.err) else 5.0
        next_status = time.monotonic()

        def tick() -> None:
            nonlocal next_status
            if self.progress and time.monotonic() >= next_status:
                self._status()
                next_status = time.monotonic() + interval

        return tick

    def _lag_loop(self) -> None:
        while not self.gate.event.is_set():
            try:
                self._lag = sum(w.consumer.size(w.topic) for w in self.workers
                                if not w.pipeline.failed)
            except Exception:  # noqa: BLE001 - lag is informational only
                self._lag = None
            self.gate.event.wait(1.0)

    def _line(self) -> str:
        elapsed = max(time.monotonic() - self._started, 1e-9)
        total = self.counts.records
        lag = "?" if self._lag is None else f"{self._lag:,}"
        dead = self.dead_letters.count
        return (f"{total:,} records, {total / elapsed:,.0f}/s, lag {lag}"
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
        total = self.counts.records
        status = f"; failed: {', '.join(failed)}" if failed else ""
        self.say(f"done: {total:,} records in {elapsed:.2f}s "
                 f"({total / max(elapsed, 1e-9):,.0f}/s), "
                 f"{self.dead_letters.count:,} dead-lettered{status}")


def _isatty(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


__all__ = ["EXIT_INTERRUPTED", "Runner", "check_broker", "client_for"]
