"""OTLP ingest: records/s through `POST /v1/logs` next to the SDK's batched produce, same run.

Starts its own ``lq broker`` (SQLite in a temporary directory, and PostgreSQL when a server
answers, unless ``--db`` says which), then alternates, round by round, the same records sent
three ways, each in batches of ``--batch`` (512: the OpenTelemetry SDK's
BatchLogRecordProcessor default):

- ``sdk``: the LogQueue SDK's ``send_many`` of the records as the handler formats them;
- ``otlp``: one ExportLogsServiceRequest per batch, protobuf, as OTLPLogExporter sends it;
- ``otlp gzip``: the same, gzip-compressed (the exporter's ``compression=gzip``).

The OTLP bodies are serialized before the clock starts, as an exporter does on its own
thread: what is measured is the broker's ingest (decode, convert to the record format,
append). Target: OTLP at least 0.5x the SDK's batched produce::

    python bench/bench_otlp.py
    python bench/bench_otlp.py --db postgresql://postgres@127.0.0.1/logqueue_bench
"""

from __future__ import annotations

import argparse
import gzip
import logging
import statistics
import sys
import time
import uuid
from collections.abc import Callable

import requests
from harness import broker, pg_database
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from lq_logging import JSONFormatter
from sdk import Client

MESSAGE = "order %d created for customer 4242: 3 items, total 129.90 EUR, paid by card"


def handler_records(count: int) -> list[str]:
    """What LogQueueHandler sends: the record format, about 450 bytes each."""
    formatter = JSONFormatter(fields={"service": "shop"})
    return [formatter.format(logging.LogRecord("shop.orders", logging.INFO, "/srv/shop/orders.py",
                                               42, MESSAGE, (n,), None)) for n in range(count)]


def otlp_request(service: str, count: int) -> bytes:
    """One ExportLogsServiceRequest of `count` records as the Python SDK's LoggingHandler
    makes them (code attributes, trace context), serialized."""
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    for key, value in (("service.name", service), ("host.name", "web-1")):
        attribute = resource_logs.resource.attributes.add()
        attribute.key, attribute.value.string_value = key, value
    scope_logs = resource_logs.scope_logs.add()
    scope_logs.scope.name = "shop.orders"
    now = time.time_ns()
    for n in range(count):
        record = scope_logs.log_records.add()
        record.time_unix_nano = record.observed_time_unix_nano = now + n
        record.severity_number, record.severity_text = 9, "INFO"
        record.body.string_value = MESSAGE % n
        record.trace_id, record.span_id = bytes(range(16)), bytes(range(8))
        for key, value in (("code.file.path", "/srv/shop/orders.py"),
                           ("code.function.name", "create")):
            attribute = record.attributes.add()
            attribute.key, attribute.value.string_value = key, value
        attribute = record.attributes.add()
        attribute.key, attribute.value.int_value = "code.line.number", 42
    return request.SerializeToString()


def run(url: str, total: int, batch: int, rounds: int) -> dict[str, float]:
    session = requests.Session()
    client = Client(url)
    producer = client.producer()
    rates: dict[str, list[float]] = {"sdk": [], "otlp": [], "otlp gzip": []}
    bodies = handler_records(batch)
    batches = total // batch

    def sdk_produce() -> None:
        topic = f"bench-sdk-{uuid.uuid4().hex[:8]}"
        producer.send_many(topic, bodies)  # registers the topic outside the clock below
        start = time.perf_counter()
        for _ in range(batches):
            producer.send_many(topic, bodies)
        rates["sdk"].append(batches * batch / (time.perf_counter() - start))

    def otlp(kind: str) -> Callable[[], None]:
        def send() -> None:
            body = otlp_request(f"bench-otlp-{uuid.uuid4().hex[:8]}", batch)
            headers = {"Content-Type": "application/x-protobuf"}
            if kind == "otlp gzip":
                body, headers["Content-Encoding"] = gzip.compress(body), "gzip"
            post = session.post(url + "/v1/logs", data=body, headers=headers, timeout=30)
            assert post.status_code == 200 and not post.content, post.content  # full success
            start = time.perf_counter()
            for _ in range(batches):
                reply = session.post(url + "/v1/logs", data=body, headers=headers, timeout=30)
                assert reply.status_code == 200, reply.text
            rates[kind].append(batches * batch / (time.perf_counter() - start))
        return send

    steps = [sdk_produce, otlp("otlp"), otlp("otlp gzip")]
    for r in range(rounds):
        for step in steps if r % 2 == 0 else steps[::-1]:
            step()
        print(f"round {r + 1}/{rounds} done", file=sys.stderr)
    client.close()
    return {kind: statistics.median(found) for kind, found in rates.items()}


def print_rows(title: str, found: dict[str, float], batch: int) -> None:
    print(f"\n{title}\n")
    print(f"| path (batches of {batch}) | records/s | / SDK batched produce |")
    print("|---|---:|---:|")
    for kind, rate in found.items():
        print(f"| {kind} | {rate:,.0f} | {rate / found['sdk']:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="one database URL (default: SQLite, then PostgreSQL)")
    parser.add_argument("--records", type=int, default=30_720, help="records per path per round")
    parser.add_argument("--batch", type=int, default=512, help="records per request")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (median reported)")
    args = parser.parse_args()
    if args.db:
        with broker(args.db) as url:
            print_rows(args.db, run(url, args.records, args.batch, args.rounds), args.batch)
        return
    with broker() as url:
        print_rows("SQLite, 1 worker", run(url, args.records, args.batch, args.rounds),
                   args.batch)
    with pg_database() as pg:
        if pg is None:
            print("\n(PostgreSQL did not answer: no PostgreSQL rows)")
            return
        with broker(pg) as url:
            print_rows("PostgreSQL, 2 workers", run(url, args.records, args.batch, args.rounds),
                       args.batch)


if __name__ == "__main__":
    main()
