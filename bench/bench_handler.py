"""Benchmark LogQueueHandler: cost per logger.info() on the app thread, and records/s delivered.

Usage::

    python bench/bench_handler.py                        # a fresh PostgreSQL database on 127.0.0.1
    python bench/bench_handler.py --db postgresql://postgres@127.0.0.1/lqbench --calls 50000

Part 1 measures microseconds per ``logger.info("... %d", i)`` call on the application thread,
in the same run, for NullHandler, FileHandler, QueueHandler + QueueListener (into a
FileHandler) and LogQueueHandler (sending to a live broker while the calls run; its queue
is large enough that nothing is dropped). Best of ``--repeat`` rounds.

Part 2 starts its own ``lq broker`` subprocess on ``--db`` (PostgreSQL), logs ``--records``
records from one thread as fast as it can, and reports records/s from the first call until
the broker acknowledged the last one.
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import queue
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

from harness import broker, pg_database

from lq_logging import LogQueueHandler

LQ = str(Path(sys.executable).with_name("lq"))
PG_ADMIN = os.environ.get("LQ_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


def per_call(logger: logging.Logger, calls: int) -> float:
    info = logger.info
    began = time.perf_counter()
    for i in range(calls):
        info("benchmark record %d", i)
    return (time.perf_counter() - began) / calls * 1e6


def isolated(name: str, handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(f"bench.{name}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.handlers[:] = [handler]
    return logger


def bench_calls(url: str, calls: int, repeat: int, tmp: str) -> dict[str, float]:
    results: dict[str, float] = {}
    null = isolated("null", logging.NullHandler())
    results["NullHandler"] = min(per_call(null, calls) for _ in range(repeat))

    fh = logging.FileHandler(os.path.join(tmp, "file.log"))
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    results["FileHandler"] = min(per_call(isolated("file", fh), calls) for _ in range(repeat))
    fh.close()

    target = logging.FileHandler(os.path.join(tmp, "listener.log"))
    target.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    q: queue.Queue = queue.Queue(-1)
    listener = logging.handlers.QueueListener(q, target)
    listener.start()
    qlogger = isolated("queue", logging.handlers.QueueHandler(q))
    results["QueueHandler+QueueListener"] = min(per_call(qlogger, calls) for _ in range(repeat))
    listener.stop()
    target.close()

    lq = LogQueueHandler(url=url, topic="bench-calls", queue_size=calls * 2,
                         spool_dir=os.path.join(tmp, "spool"), timeout=60)
    lqlogger = isolated("lq", lq)
    best = float("inf")
    for _ in range(repeat):
        best = min(best, per_call(lqlogger, calls))
        lq.flush()
    results["LogQueueHandler"] = best
    stats = lq.stats()
    lq.close()
    if stats["dropped"]:
        print(f"warning: LogQueueHandler dropped {stats['dropped']} records", file=sys.stderr)
    return results


def bench_delivery(url: str, records: int, tmp: str) -> tuple[float, dict]:
    handler = LogQueueHandler(url=url, topic="bench-delivery", queue_size=records * 2,
                              batch_size=1000, spool_dir=os.path.join(tmp, "spool2"),
                              timeout=120, fields={"service": "bench"})
    logger = isolated("delivery", handler)
    began = time.perf_counter()
    for i in range(records):
        logger.info("delivered record %d", i)
    while handler.stats()["sent"] < records:
        handler.flush()
        if handler.stats()["dropped"] or time.perf_counter() - began > 300:
            break
    elapsed = time.perf_counter() - began
    stats = handler.stats()
    handler.close()
    return stats["sent"] / elapsed, stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="PostgreSQL URL for the broker (default: a fresh "
                        "database on LQ_BENCH_PG_DSN's server, dropped afterwards)")
    parser.add_argument("--calls", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--records", type=int, default=200_000)
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="lq-bench-")
    with nullcontext(args.db) if args.db else pg_database() as db:
        if db is None:
            raise SystemExit("this benchmark needs PostgreSQL: pass --db or set LQ_BENCH_PG_DSN")
        with broker(db) as url:
            calls = bench_calls(url, args.calls, args.repeat, tmp)
            rate, stats = bench_delivery(url, args.records, tmp)

    base = calls["QueueHandler+QueueListener"]
    null = calls["NullHandler"]
    print(f"\nper logger.info() call on the app thread ({args.calls} calls, best of "
          f"{args.repeat}; Python {sys.version.split()[0]})")
    print(f"{'handler':<28} {'us/call':>8} {'x NullHandler':>14} {'x QueueHandler':>15}")
    for name, value in calls.items():
        print(f"{name:<28} {value:>8.2f} {value / null:>14.2f} {value / base:>15.2f}")
    print(f"\ndelivered to the broker on PostgreSQL from one process: {args.records} records")
    print(f"{'records/s':<28} {rate:>8.0f}   (target 30,000: x{rate / 30000:.2f})")
    print(f"handler stats: {stats}")


if __name__ == "__main__":
    main()
