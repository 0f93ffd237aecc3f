"""Prometheus metrics at /metrics, with prometheus_client (its multiprocess mode under gunicorn).

Nothing is created at import: each app gets its own collectors in `app.extensions` (Flask's
rule), registered in no global registry. Traffic counters live in the process that served
the request; under gunicorn they are summed across workers from `PROMETHEUS_MULTIPROC_DIR`,
which `lq broker` sets before it creates the app. Topic sizes, lags and database health are
read from the database at scrape time, so every worker answers the same.

`lq broker` makes that directory, named for its pid, and removes it when it stops; one
left by a broker killed with -9 is removed by the next broker that starts on the host.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import Flask, Response, current_app, g, request

from .auth import readable
from .errors import BrokerError
from .store import get_store

EXTENSION = "logqueue.metrics"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
DIR_PREFIX = "lq-metrics-"  # then the owning broker's pid, "-", and a random part
LATENCY_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30)


class Metrics:
    """One app's collectors."""

    def __init__(self) -> None:
        # Imported here, not at the top: prometheus_client picks its value storage (files
        # shared by gunicorn's workers, or memory) once, when first imported, from
        # PROMETHEUS_MULTIPROC_DIR, which is set before the first app is created.
        from prometheus_client import Counter, Gauge, Histogram

        self.requests = Counter("lq_http_requests", "HTTP requests served.",
                                ["endpoint", "method", "status"], registry=None)
        self.latency = Histogram("lq_http_request_seconds", "Time to answer a request.",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=None)
        self.produced = Counter("lq_produced_messages", "Messages appended.", registry=None)
        self.produced_bytes = Counter("lq_produced_bytes",
                                      "UTF-8 bytes of the messages appended.", registry=None)
        self.consumed = Counter("lq_consumed_messages",
                                "Messages delivered by consume and fetch.", registry=None)
        self.consumed_bytes = Counter("lq_consumed_bytes",
                                      "UTF-8 bytes of the messages delivered.", registry=None)
        self.batch_size = Histogram("lq_produce_batch_size", "Messages per produce request.",
                                    buckets=(1, 10, 100, 1000, 10000), registry=None)
        self.waiters = Gauge("lq_longpoll_waiters", "Requests waiting in a long-poll.",
                             multiprocess_mode="livesum", registry=None)

    def collectors(self) -> tuple[Any, ...]:
        return (self.requests, self.latency, self.produced, self.produced_bytes, self.consumed,
                self.consumed_bytes, self.batch_size, self.waiters)


def _metrics() -> Metrics:
    return current_app.extensions[EXTENSION]


def produced(count: int, size: int) -> None:
    metrics = _metrics()
    metrics.produced.inc(count)
    metrics.produced_bytes.inc(size)
    metrics.batch_size.observe(count)


def consumed(bodies: list[str]) -> None:
    if bodies:
        metrics = _metrics()
        metrics.consumed.inc(len(bodies))
        joined = "".join(bodies)
        metrics.consumed_bytes.inc(len(joined) if joined.isascii()
                                   else len(joined.encode("utf-8")))


@contextmanager
def waiting(wait: float) -> Iterator[None]:
    if wait <= 0:
        yield
        return
    gauge = _metrics().waiters
    gauge.inc()
    try:
        yield
    finally:
        gauge.dec()


class DatabaseCollector:
    """Per-topic messages and largest lag, and whether the database answers, at scrape time."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        up = GaugeMetricFamily("lq_database_up", "1 when the database answers.")
        messages = GaugeMetricFamily("lq_topic_messages", "Messages retained.", labels=["topic"])
        lag = GaugeMetricFamily("lq_topic_max_lag", "The largest consumer lag.", labels=["topic"])
        try:
            topics = [t for t in get_store(self.app).topics.stats() if readable(t.topic)]
        except BrokerError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        for topic in topics:
            messages.add_metric([topic.topic], topic.messages)
            lag.add_metric([topic.topic], topic.max_lag)
        yield from (up, messages, lag)


def init_app(app: Flask) -> None:
    metrics = app.extensions[EXTENSION] = Metrics()
    database = DatabaseCollector(app)

    @app.before_request
    def start_timer() -> None:
        g.lq_started = time.perf_counter()

    @app.after_request
    def count(response: Response) -> Response:
        rule = request.url_rule.rule if request.url_rule else "unmatched"
        if rule != "/metrics":
            metrics.requests.labels(rule, request.method, str(response.status_code)).inc()
            started = g.get("lq_started")
            if started is not None:
                metrics.latency.labels(rule).observe(time.perf_counter() - started)
        return response

    @app.get("/metrics")
    def scrape() -> Response:
        from prometheus_client import (
            CONTENT_TYPE_LATEST,
            CollectorRegistry,
            generate_latest,
            multiprocess,
        )

        registry = CollectorRegistry()
        if os.environ.get(MULTIPROC_ENV):
            multiprocess.MultiProcessCollector(registry)
        else:
            for collector in metrics.collectors():
                registry.register(collector)
        registry.register(database)
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


def worker_exited(pid: int) -> None:
    """gunicorn's child_exit hook: a dead worker's live gauges stop counting."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def make_multiprocess_dir() -> str | None:
    """Set PROMETHEUS_MULTIPROC_DIR (before the first app is created) to a new directory, after
    removing those of brokers that no longer run. Returns it (the caller removes it when it
    stops), or None when the environment already names one."""
    if os.environ.get(MULTIPROC_ENV):
        return None
    remove_orphaned_dirs(tempfile.gettempdir())
    path = tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-")
    os.environ[MULTIPROC_ENV] = path
    return path


def remove_orphaned_dirs(parent: str) -> list[str]:
    """Remove this user's metrics directories under `parent` whose broker process is gone;
    the paths removed. A directory without a pid in its name is left alone."""
    removed = []
    for entry in os.scandir(parent):
        pid, dash, _ = entry.name.removeprefix(DIR_PREFIX).partition("-")
        if not (entry.name.startswith(DIR_PREFIX) and dash and pid.isdigit() and int(pid) > 0):
            continue
        if (entry.is_dir(follow_symlinks=False)
                and entry.stat(follow_symlinks=False).st_uid == os.getuid()
                and not _running(int(pid))):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.path)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
