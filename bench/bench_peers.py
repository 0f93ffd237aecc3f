"""LogQueue next to the brokers a Python user would pick instead, and next to PostgreSQL itself.

    python bench/bench_peers.py                  # the full table, median of 3 (a few minutes)
    python bench/bench_peers.py --scale 0.2      # a quick look (under a minute)
    python bench/bench_peers.py --columns lq-pg,raw-pg --runs 5

One payload everywhere: a 300-byte JSON log record. Each peer goes through its official Python
client and is configured as durably as it can be here; where it is not durable, its column
says so:

- LogQueue on PostgreSQL and on SQLite, through the SDK (``sdk.Client``) as a user would call
  it; a success reply means committed (``synchronous_commit`` on, SQLite ``synchronous=FULL``).
- NATS JetStream (``nats-py``, 127.0.0.1:4222): a file-backed stream; the server acknowledges
  a publish before it fsyncs (``sync_interval``), so an acknowledged message can be lost.
- RabbitMQ (``pika``, 127.0.0.1:5672 guest/guest): a durable queue, persistent messages,
  publisher confirms (a confirm is sent once the message is on disk).
- Redis Streams (``redis``, 127.0.0.1:6379): in memory unless the server has an AOF; the
  column reads the server's settings and says which.
- Raw PostgreSQL (psycopg2) on a table shaped like LogQueue's: INSERT + COMMIT per message,
  one multi-row INSERT of 1,000, SELECT of 1,000 rows + the position UPDATE. The ceiling.
  Twice: as issue 21's table was measured (the table never analyzed: its consume SELECT
  sorts every row after the position), and ANALYZEd once filled (``raw-pg-an``).

Rows: one message per round trip (1 client); batches of 1,000 (1 client); batches of 1,000
from 4 client processes to one target; consume batches of 1,000 and commit/ack each batch.
Every cell is the median of ``--runs`` runs on a fresh target; the runs interleave the peers so
all see the same machine load. A peer that cannot be reached is shown as "n/a (reason)".
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from harness import broker, pg_database
from peers import (
    BATCH,
    CLIENTS,
    PAYLOAD_BYTES,
    SIZES,
    LogQueue,
    Nats,
    Peer,
    Rabbit,
    RawPostgres,
    RedisStreams,
    log_records,
)


# --- measuring -----------------------------------------------------------------------------
@dataclass
class Column:
    key: str
    title: str
    short: str  # in the ratio table's headings
    peer: type[Peer]
    conf: dict[str, Any] = field(default_factory=dict)
    unavailable: str = ""  # the reason, when the peer cannot be measured


@dataclass(frozen=True)
class Case:
    title: str
    op: str  # "each", "batches" or "consume"
    clients: int
    size: str  # the key in SIZES


CASES = (Case("one message per round trip, 1 client", "each", 1, "each"),
         Case("batches of 1,000, 1 client", "batches", 1, "batches"),
         Case("batches of 1,000, 4 clients, one target", "batches", CLIENTS, "batches4"),
         Case("consume batches of 1,000 + commit/ack", "consume", 1, "consume"))


def _run_op(peer: Peer, op: str, messages: list[str]) -> None:
    if op == "each":
        peer.send_each(messages)
    elif op == "batches":
        peer.send_batches(messages)
    else:
        peer.consume(len(messages))


def _client_process(column: Column, target: str, client_no: int, op: str,
                    messages: list[str], barrier: Any, results: Any) -> None:
    """One of several client processes: connect, start with the others, report its times."""
    peer = column.peer(column.conf, target, client_no)
    try:
        barrier.wait(60)
        start = time.perf_counter()  # CLOCK_MONOTONIC: comparable between processes
        _run_op(peer, op, messages)
        results.put((start, time.perf_counter()))
    finally:
        peer.close()


def _timed_clients(column: Column, target: str, case: Case, messages: list[str]) -> float:
    ctx = mp.get_context("fork")
    barrier, results = ctx.Barrier(case.clients), ctx.Queue()
    share = len(messages) // case.clients
    procs = [ctx.Process(target=_client_process,
                         args=(column, target, i, case.op, messages[i * share:(i + 1) * share],
                               barrier, results))
             for i in range(case.clients)]
    for proc in procs:
        proc.start()
    times = []
    try:
        for _ in procs:
            times.append(results.get(timeout=600))
    finally:
        for proc in procs:
            proc.join(10)
    if any(proc.exitcode for proc in procs):
        raise RuntimeError("a client process failed")
    return share * case.clients / (max(t[1] for t in times) - min(t[0] for t in times))


def measure(column: Column, case: Case, messages: list[str]) -> float:
    """msg/s of one case on a fresh target."""
    target = column.peer.create(column.conf)
    try:
        if case.clients > 1:
            return _timed_clients(column, target, case, messages)
        peer = column.peer(column.conf, target)
        try:
            if case.op == "consume":
                peer.send_batches(messages)  # fill the target first, untimed
                peer.filled()
            start = time.perf_counter()
            _run_op(peer, case.op, messages)
            return len(messages) / (time.perf_counter() - start)
        finally:
            peer.close()
    finally:
        column.peer.drop(column.conf, target)


def message_counts(scale: float) -> dict[str, int]:
    """Messages per case: whole batches, at least two per client."""
    counts = {key: max(round(n * scale / BATCH), 2 * (CLIENTS if key == "batches4" else 1))
              * BATCH for key, n in SIZES.items()}
    counts["each"] = max(round(SIZES["each"] * scale), 50)
    return counts


def run_all(columns: list[Column], runs: int, scale: float,
            cases: tuple[Case, ...] = CASES) -> dict[tuple[str, str], list]:
    """Every (case, column) ``runs`` times, interleaved; a failed run keeps its error."""
    counts = message_counts(scale)
    messages = log_records(max(counts.values()))
    cells: dict[tuple[str, str], list] = {}
    for run in range(runs):
        for case in cases:
            for column in (c for c in columns if not c.unavailable):
                try:
                    result: float | str = measure(column, case, messages[:counts[case.size]])
                    shown = f"{result:>10,.0f} msg/s"
                except Exception as exc:  # noqa: BLE001 - a failing peer is shown, not fatal
                    result = shown = f"n/a ({reason(exc)})"
                cells.setdefault((case.title, column.key), []).append(result)
                print(f"run {run + 1}/{runs}  {case.title:<42} {column.title:<30} {shown}",
                      file=sys.stderr, flush=True)
    return cells


# --- the table -----------------------------------------------------------------------------
def median(cells: dict[tuple[str, str], list], case: Case, column: Column) -> float | str:
    if column.unavailable:
        return f"n/a ({column.unavailable})"
    values = cells.get((case.title, column.key), ["n/a (not run)"])
    rates = [v for v in values if not isinstance(v, str)]
    return statistics.median(rates) if rates else values[0]


RAW_NOTES = {"each": " (INSERT+COMMIT)", "batches": " (multi-row INSERT)",
             "consume": " (SELECT + position UPDATE)"}


NOTES = {
    "lq-pg": "through sdk.Client; a reply means committed (synchronous_commit on).",
    "lq-sqlite": "through sdk.Client; a reply means committed (synchronous=FULL).",
    "nats": "file storage, but the server acknowledges before fsync (sync_interval).",
    "rabbitmq": "durable queue, persistent messages, a confirm per message (batches: 1,000 "
                "confirms in flight); consume: prefetch 1,000, one multiple-ack per batch.",
    "redis": "XADD / pipelined XADD / XREADGROUP + XACK; durability as the server's "
             "appendonly/appendfsync/save settings say (in the column's title).",
    "raw-pg": "psycopg2 on a table shaped like lq_messages, one connection per client, "
              "synchronous_commit on; the table has no planner statistics when it is read "
              "(as in issue 21's table).",
    "raw-pg-an": "the same, ANALYZEd once filled (as autovacuum would within a minute): "
                 "its consume SELECT reads 1,000 rows by the index instead of sorting "
                 "every row after the position.",
}


def print_tables(columns: list[Column], cells: dict, runs: int,
                 cases: tuple[Case, ...] = CASES) -> None:
    print(f"\nmsg/s, median of {runs}; payload {PAYLOAD_BYTES}-byte JSON log records\n")
    print("| case | " + " | ".join(c.title for c in columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for case in cases:
        row = []
        for column in columns:
            value = median(cells, case, column)
            text = value if isinstance(value, str) else f"{value:,.0f}"
            if column.peer is RawPostgres and case.clients == 1 and not isinstance(value, str):
                text += RAW_NOTES[case.op]
            row.append(text)
        print(f"| {case.title} | " + " | ".join(row) + " |")
    print()
    for column in columns:
        if column.key in NOTES and not column.unavailable:
            print(f"- {column.title}: {NOTES[column.key]}")
    print_ratios(columns, cells, cases)


def print_ratios(columns: list[Column], cells: dict, cases: tuple[Case, ...] = CASES) -> None:
    ours = [c for c in columns if c.peer is LogQueue]
    others = [c for c in columns if c.peer is not LogQueue]
    if not ours or not others:
        return
    heads = [f"{o.short} / {p.short}" for o in ours for p in others]
    print("\nRatios (same run): LogQueue's rate divided by the other's\n")
    print("| case | " + " | ".join(heads) + " |")
    print("|---|" + "---:|" * len(heads))
    for case in cases:
        row = []
        for o in ours:
            for p in others:
                a, b = median(cells, case, o), median(cells, case, p)
                row.append("n/a" if isinstance(a, str) or isinstance(b, str) else f"{a / b:.2f}")
        print(f"| {case.title} | " + " | ".join(row) + " |")


def reason(exc: BaseException) -> str:
    """The exception in a table cell: its type, and its message when it has one."""
    message = str(exc).strip()[:60]
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


# --- main ----------------------------------------------------------------------------------
def check_columns(columns: list[Column]) -> None:
    for column in columns:
        if column.unavailable:
            continue
        try:
            note = column.peer.check(column.conf)
        except Exception as exc:  # noqa: BLE001 - an unreachable peer is a column of n/a
            column.unavailable = reason(exc)
            continue
        if note:
            column.title += f" ({note})"


@contextlib.contextmanager
def started_columns(wanted: set[str]) -> Iterator[list[Column]]:
    """The columns, with the LogQueue brokers and the raw database started for the run."""
    with contextlib.ExitStack() as stack:
        lq_pg_db = stack.enter_context(pg_database()) if "lq-pg" in wanted else None
        raw_db = stack.enter_context(pg_database()) if wanted & {"raw-pg", "raw-pg-an"} \
            else None
        columns = []
        if "lq-pg" in wanted:
            columns.append(Column("lq-pg", "LogQueue PG", "LQ PG", LogQueue, unavailable=(
                "" if lq_pg_db else "no PostgreSQL server answered")))
            if lq_pg_db:
                columns[-1].conf["url"] = stack.enter_context(broker(lq_pg_db))
        if "lq-sqlite" in wanted:
            columns.append(Column("lq-sqlite", "LogQueue SQLite", "LQ SQLite", LogQueue,
                                  {"url": stack.enter_context(broker())}))
        peers = [("nats", "NATS JetStream", "NATS", Nats, {"url": "nats://127.0.0.1:4222"}),
                 ("rabbitmq", "RabbitMQ (confirms)", "RabbitMQ", Rabbit,
                  {"url": "amqp://guest:guest@127.0.0.1:5672/%2F"}),
                 ("redis", "Redis Streams", "Redis", RedisStreams,
                  {"url": "redis://127.0.0.1:6379/0"}),
                 ("raw-pg", "raw PostgreSQL", "raw PG", RawPostgres, {"dsn": raw_db}),
                 ("raw-pg-an", "raw PostgreSQL, analyzed", "raw PG an.", RawPostgres,
                  {"dsn": raw_db, "analyze": True})]
        columns += [Column(*peer) for peer in peers if peer[0] in wanted]
        check_columns(columns)
        yield columns


ALL_COLUMNS = "lq-pg,lq-sqlite,nats,rabbitmq,redis,raw-pg,raw-pg-an"
ALL_CASES = "1,2,3,4"


def load_average() -> str:
    """The machine's load (other jobs share its 2 cores): part of every result."""
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per cell (median reported)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply the message counts (0.2: under a minute)")
    parser.add_argument("--columns", default=ALL_COLUMNS, help=f"a subset of {ALL_COLUMNS}")
    parser.add_argument("--cases", default=ALL_CASES,
                        help=f"a subset of {ALL_CASES} (1, 2, 3, 4: the table's rows)")
    args = parser.parse_args()
    cases = tuple(CASES[int(n) - 1] for n in args.cases.split(",")
                  if n.strip() in ("1", "2", "3", "4"))
    if not cases:
        parser.error(f"--cases: pick from {ALL_CASES}")
    wanted = set(args.columns.split(","))
    unknown = wanted - set(ALL_COLUMNS.split(","))
    if unknown:
        parser.error(f"unknown columns: {', '.join(sorted(unknown))}")
    with started_columns(wanted) as columns:
        print(f"load average at the start: {load_average()}", file=sys.stderr)
        cells = run_all(columns, args.runs, args.scale, cases)
        print(f"load average at the end: {load_average()}", file=sys.stderr)
    print_tables(columns, cells, args.runs, cases)
    print(f"\nload average at the end (1, 5, 15 min): {load_average()}")


if __name__ == "__main__":
    main()
