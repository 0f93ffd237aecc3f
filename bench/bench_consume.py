"""Consume batches of 1,000 + commit, beside PostgreSQL's own SELECT + position UPDATE, with
the CPU each side spends per batch (issue 21's consume path).

    python bench/bench_consume.py                       # LogQueue PG and SQLite, raw PG; 3 runs
    python bench/bench_consume.py --runs 5 --messages 50000 --columns lq-pg,raw-pg

bench_peers.py's consume case, alone: the same peers (LogQueue through ``sdk.Client``: fetch
1,000, commit; raw PostgreSQL: SELECT 1,000 rows, UPDATE the position, COMMIT), on a topic
filled beforehand (untimed), the runs interleaved so all columns see the same load. Beside
msg/s: the client's CPU per batch (this process) and the broker's (all its processes, from
/proc; clock ticks, so about ±10 ms over a run). On 2 cores shared with the database, CPU is
what bounds the rate; the ratio to raw PostgreSQL in the same run is the figure to compare.

``--analyze`` runs ANALYZE on raw PostgreSQL's table once it is filled. Without statistics (a
table just filled, before autovacuum gets to it) the server reads every row after the
position and sorts them for each ``SELECT ... ORDER BY ... LIMIT 1,000``: on 20,000 messages
raw PostgreSQL measured 292,000 msg/s so and 526,000 with statistics (one run, 3 rounds,
load 1.1). LogQueue's fetch reads a bounded offset range, so it does not depend on them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from pathlib import Path

from bench_peers import (
    BATCH,
    Column,
    LogQueue,
    RawPostgres,
    log_records,
    reason,
    started_columns,
)

COLUMNS = "lq-pg,lq-sqlite,raw-pg"


def broker_pids(url: str) -> list[int]:
    """Every `lq broker --port N` process (the arbiter and its workers) of ``url``."""
    port = url.rsplit(":", 1)[1].encode()
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"broker" in args and b"--port" in args and port in args:
            pids.append(int(proc.name))
    return pids


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def analyze(dsn: str, table: str) -> None:
    """Give the planner statistics on ``table`` (see the module's docstring)."""
    import psycopg2

    with contextlib.closing(psycopg2.connect(dsn)) as conn, conn.cursor() as cur:
        cur.execute(f"ANALYZE {table}")
        conn.commit()


def measure(column: Column, messages: list[str],
            stats: bool = False) -> tuple[float, float, float | None]:
    """(msg/s, client CPU ms per batch, broker CPU ms per batch) of one consume run;
    `stats`: ANALYZE raw PostgreSQL's table once filled."""
    target = column.peer.create(column.conf)
    try:
        peer = column.peer(column.conf, target)
        try:
            peer.send_batches(messages)  # fill, untimed
            if stats and column.peer is RawPostgres:
                analyze(column.conf["dsn"], target)
            pids = broker_pids(column.conf["url"]) if "url" in column.conf else []
            wall, cpu, served = time.perf_counter(), time.process_time(), cpu_seconds(pids)
            peer.consume(len(messages))
            wall = time.perf_counter() - wall
            cpu = time.process_time() - cpu
            served = cpu_seconds(pids) - served
        finally:
            peer.close()
    finally:
        column.peer.drop(column.conf, target)
    batches = len(messages) / BATCH
    return len(messages) / wall, cpu / batches * 1000, (served / batches * 1000 if pids
                                                          else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--messages", type=int, default=20_000, help="per run (whole batches)")
    parser.add_argument("--columns", default=COLUMNS, help=f"a subset of {COLUMNS}")
    parser.add_argument("--analyze", action="store_true",
                        help="ANALYZE raw PostgreSQL's table once filled")
    args = parser.parse_args()
    messages = log_records(max(BATCH, args.messages // BATCH * BATCH))
    results: dict[str, list[tuple[float, float, float | None]]] = {}
    load = [os.getloadavg()[0]]
    with started_columns(set(args.columns.split(","))) as columns:
        assert all(c.peer in (LogQueue, RawPostgres) for c in columns)
        for run in range(args.runs):
            for column in (c for c in columns if not c.unavailable):
                try:
                    result = measure(column, messages, args.analyze)
                except Exception as exc:  # noqa: BLE001 - a failing column is shown, not fatal
                    print(f"run {run + 1}: {column.title}: n/a ({reason(exc)})")
                    continue
                results.setdefault(column.key, []).append(result)
                print(f"run {run + 1}/{args.runs}  {column.title:<16} {result[0]:>9,.0f} msg/s",
                      flush=True)
            load.append(os.getloadavg()[0])
    print_table(columns, results, load)


def print_table(columns: list[Column], results: dict, load: list[float]) -> None:
    raw = results.get("raw-pg")
    raw_median = statistics.median(r[0] for r in raw) if raw else None
    print(f"\nconsume {BATCH:,} + commit, {len(next(iter(results.values()), []))} runs; "
          f"load average {min(load):.1f}-{max(load):.1f}\n")
    print("| column | msg/s median (range) | / raw PG | client CPU ms/batch | "
          "broker CPU ms/batch |")
    print("|---|---:|---:|---:|---:|")
    for column in columns:
        found = results.get(column.key)
        if not found:
            print(f"| {column.title} | n/a {column.unavailable} | | | |")
            continue
        rates = [r[0] for r in found]
        median = statistics.median(rates)
        ratio = f"{median / raw_median:.2f}" if raw_median and column.key != "raw-pg" else ""
        served = [r[2] for r in found if r[2] is not None]
        print(f"| {column.title} | {median:,.0f} ({min(rates):,.0f}-{max(rates):,.0f}) | "
              f"{ratio} | {statistics.median(r[1] for r in found):.2f} | "
              f"{f'{statistics.median(served):.2f}' if served else ''} |")


if __name__ == "__main__":
    main()
