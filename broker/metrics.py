"""Prometheus metrics at /metrics, with prometheus_client (its multiprocess mode under gunicorn).

Traffic counters live in the process that served the request; under gunicorn they are summed
across workers from `PROMETHEUS_MULTIPROC_DIR`, which `lq broker` sets before any worker
starts. Topic sizes, lags and database health are read from the database at scrape time, so
every worker answers the same.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .errors import BrokerError
from .store import get_store

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

REQUESTS = Counter("lq_http_requests", "HTTP requests served.", ["endpoint", "method", "status"])
LATENCY = Histogram("lq_http_request_seconds", "Time to answer a request.", ["endpoint"],
                    buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
PRODUCED = Counter("lq_produced_messages", "Messages appended.")
PRODUCED_BYTES = Counter("lq_produced_bytes", "UTF-8 bytes of the messages appended.")
CONSUMED = Counter("lq_consumed_messages", "Messages delivered by consume and fetch.")
CONSUMED_BYTES = Counter("lq_consumed_bytes", "UTF-8 bytes of the messages delivered.")
BATCH_SIZE = Histogram("lq_produce_batch_size", "Messages per produce request.",
                       buckets=(1, 10, 100, 1000, 10000))
WAITERS = Gauge("lq_longpoll_waiters", "Requests waiting in a long-poll.",
                multiprocess_mode="livesum")


def produced(count: int, size: int) -> None:
    PRODUCED.inc(count)
    PRODUCED_BYTES.inc(size)
    BATCH_SIZE.observe(count)


def consumed(bodies: list[str]) -> None:
    if bodies:
        CONSUMED.inc(len(bodies))
        joined = "".join(bodies)
        CONSUMED_BYTES.inc(len(joined) if joined.isascii() else len(joined.encode("utf-8")))


@contextmanager
def waiting(wait: float) -> Iterator[None]:
    if wait <= 0:
        yield
        return
    WAITERS.inc()
    try:
        yield
    finally:
        WAITERS.dec()


class DatabaseCollector(Collector):
    """Per-topic messages and largest lag, and whether the database answers, at scrape time."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("lq_database_up", "1 when the database answers.")
        messages = GaugeMetricFamily("lq_topic_messages", "Messages retained.", labels=["topic"])
        lag = GaugeMetricFamily("lq_topic_max_lag", "The largest consumer lag.", labels=["topic"])
        try:
            topics = get_store(self.app).stats()
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
    database = DatabaseCollector(app)

    @app.before_request
    def start_timer() -> None:
        g.lq_started = time.perf_counter()

    @app.after_request
    def count(response: Response) -> Response:
        rule = request.url_rule.rule if request.url_rule else "unmatched"
        if rule != "/metrics":
            REQUESTS.labels(rule, request.method, str(response.status_code)).inc()
            started = g.get("lq_started")
            if started is not None:
                LATENCY.labels(rule).observe(time.perf_counter() - started)
        return response

    @app.get("/metrics")
    def metrics() -> Response:
        if os.environ.get(MULTIPROC_ENV):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        else:
            registry = CollectorRegistry()
            for collector in (REQUESTS, LATENCY, PRODUCED, PRODUCED_BYTES, CONSUMED,
                              CONSUMED_BYTES, BATCH_SIZE, WAITERS):
                registry.register(collector)
        registry.register(database)
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


def worker_exited(pid: int) -> None:
    """gunicorn's child_exit hook: a dead worker's live gauges stop counting."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)

