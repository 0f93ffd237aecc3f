"""Benchmark LogQueueHandler: cost per logger.info(), records/s delivered, and outage drain rate.

Usage::

    python bench/bench_handler.py       # a fresh PostgreSQL database on 127.0.0.1; NATS at :4222
    python bench/bench_handler.py --db postgresql://postgres@127.0.0.1/lqbench --outage 30

Every figure is a ratio to a baseline measured in the same run:

1. Microseconds per ``logger.info("... %d", i)`` on the application thread, best of
   ``--repeat`` rounds of ``--calls`` calls, for NullHandler, FileHandler, stdlib
   QueueHandler + QueueListener (into a FileHandler) and LogQueueHandler (sending to a live
   broker while the calls run; its queue holds every call, so nothing is dropped).
2. Records/s delivered from one process logging ``--records`` records as fast as it can, from
   the first call until the last one is acknowledged: LogQueueHandler against the broker,
   and a stdlib QueueHandler + QueueListener feeding a handler that publishes batches of the
   same JSON records to NATS JetStream with nats-py (``publish_async``, then every ack).
3. Outage drain: the broker is stopped for ``--outage`` seconds while the app logs
   ``--records`` records (they go to the spool); then records/s delivered from the spool once
   the broker is back, against the handler's own rate in part 2.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import logging.handlers
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import requests
from harness import LQ, free_port, pg_database

from lq_logging import JSONFormatter, LogQueueHandler

NATS_URL = os.environ.get("LQ_BENCH_NATS", "nats://127.0.0.1:4222")


class Broker:
    """``lq broker`` on one port and database that can be stopped and started again."""

    def __init__(self, db: str, log_path: Path) -> None:
        self.db, self.log_path, self.port = db, log_path, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> float:
        """Start it; returns the time.monotonic() at which /healthz answered."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("LQ_")}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([LQ, "broker", "--port", str(self.port), "--threads",
                                          "32", "--db", self.db], env=env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return time.monotonic()
            except requests.RequestException:
                pass
            time.sleep(0.02)  # polling for readiness, bounded by the deadline
        raise SystemExit(f"the broker did not start:\n{self.log_path.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


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


def file_handler(path: str) -> logging.FileHandler:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    return handler


def bench_calls(url: str, calls: int, repeat: int, tmp: str) -> dict[str, float]:
    results: dict[str, float] = {}
    null = isolated("null", logging.NullHandler())
    results["NullHandler"] = min(per_call(null, calls) for _ in range(repeat))

    fh = file_handler(os.path.join(tmp, "file.log"))
    results["FileHandler"] = min(per_call(isolated("file", fh), calls) for _ in range(repeat))
    fh.close()

    target = file_handler(os.path.join(tmp, "listener.log"))
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
    dropped = lq.stats()["dropped"]
    lq.close()
    if dropped:
        print(f"warning: LogQueueHandler dropped {dropped} records", file=sys.stderr)
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


# --- the peer: QueueHandler + QueueListener -> batches to NATS JetStream ---------------------

class JetStreamBatchHandler(logging.Handler):
    """Publishes JSON records to a JetStream subject in batches of ``batch`` (publish_async
    for each, then await every ack), on an asyncio loop of its own."""

    def __init__(self, subject: str, batch: int = 1000) -> None:
        super().__init__()
        import nats

        self.subject, self.batch = subject, batch
        self.setFormatter(JSONFormatter(fields={"service": "bench"}))
        self.buffer: list[bytes] = []
        self.acked = 0
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.nc = self._run(nats.connect(NATS_URL))
        self.js = self.nc.jetstream()
        self._run(self.js.add_stream(name="LQBENCH", subjects=[subject]))

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def emit(self, record: logging.LogRecord) -> None:
        self.buffer.append(self.format(record).encode())
        if len(self.buffer) >= self.batch:
            self.flush()

    def flush(self) -> None:
        batch, self.buffer = self.buffer, []
        if batch:
            self._run(self._publish(batch))
            self.acked += len(batch)

    async def _publish(self, batch: list[bytes]) -> None:
        futures = [await self.js.publish_async(self.subject, data) for data in batch]
        await asyncio.gather(*futures)

    def close(self) -> None:
        self.flush()
        self._run(self.js.delete_stream("LQBENCH"))
        self._run(self.nc.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        super().close()


def bench_nats_peer(records: int) -> float:
    target = JetStreamBatchHandler("lqbench.logs")
    q: queue.Queue = queue.Queue(-1)
    listener = logging.handlers.QueueListener(q, target)
    listener.start()
    logger = isolated("nats", logging.handlers.QueueHandler(q))
    began = time.perf_counter()
    for i in range(records):
        logger.info("delivered record %d", i)
    listener.stop()  # every record handed to the target
    target.flush()
    elapsed = time.perf_counter() - began
    acked = target.acked
    target.close()
    if acked != records:
        print(f"warning: JetStream acknowledged {acked} of {records}", file=sys.stderr)
    return acked / elapsed


# --- outage drain ----------------------------------------------------------------------------

def bench_outage(broker: Broker, records: int, outage: float, tmp: str) -> dict[str, float]:
    handler = LogQueueHandler(url=broker.url, topic="bench-outage", queue_size=records * 2,
                              batch_size=1000, spool_dir=os.path.join(tmp, "spool3"),
                              timeout=120, fields={"service": "bench"})
    logger = isolated("outage", handler)
    for i in range(2):  # registered (and ready to give spooled batches their seq)
        logger.info("before %d", i)
        handler.flush()
    broker.stop()
    down = time.monotonic()
    for i in range(records):
        logger.info("spooled record %d", i)
    while handler.stats()["spooled"] < records and time.monotonic() - down < outage + 60:
        handler.flush()
    spooled = handler.stats()["spooled"]
    time.sleep(max(0.0, outage - (time.monotonic() - down)))  # the outage lasts its length
    sent_before = handler.stats()["sent"]
    up = broker.start()
    first = None
    while handler.stats()["sent"] < sent_before + records:
        if first is None and handler.stats()["sent"] > sent_before:
            first = time.monotonic()
        time.sleep(0.005)  # sampling the progress, not synchronizing
        if time.monotonic() - up > 300:
            break
    done = time.monotonic()
    delivered = handler.stats()["sent"] - sent_before
    handler.close()
    return {"spooled": spooled, "from_up": delivered / (done - up),
            "from_first": delivered / (done - (first or up)), "reconnect": (first or up) - up}


def report(args: argparse.Namespace, calls: dict[str, float], rates: dict[str, float],
           outage: dict[str, float]) -> None:
    base, null = calls["QueueHandler+QueueListener"], calls["NullHandler"]
    print(f"\n1. per logger.info() call on the app thread ({args.calls} calls, best of "
          f"{args.repeat}; Python {sys.version.split()[0]})")
    print(f"{'handler':<28} {'us/call':>8} {'x NullHandler':>14} {'x QueueHandler':>15}")
    for name, value in calls.items():
        print(f"{name:<28} {value:>8.2f} {value / null:>14.2f} {value / base:>15.2f}")
    lq, peer = rates["LogQueueHandler"], rates.get("QueueHandler+QueueListener -> JetStream")
    print(f"\n2. records/s delivered from one process ({args.records} records, broker on "
          "PostgreSQL)")
    for name, value in rates.items():
        print(f"{name:<40} {value:>9.0f}   x{value / (peer or lq):.2f}")
    print(f"\n3. outage drain: {outage['spooled']:.0f} records spooled during a "
          f"{args.outage:.0f} s outage")
    print(f"{'drain records/s from broker up':<40} {outage['from_up']:>9.0f}   "
          f"x{outage['from_up'] / lq:.2f} of part 2")
    print(f"{'drain records/s from first ack':<40} {outage['from_first']:>9.0f}   "
          f"x{outage['from_first'] / lq:.2f} of part 2  (reconnect {outage['reconnect']:.2f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="PostgreSQL URL for the broker (default: a fresh "
                        "database on LQ_BENCH_PG_DSN's server, dropped afterwards)")
    parser.add_argument("--calls", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--outage", type=float, default=30.0)
    parser.add_argument("--no-nats", action="store_true", help="leave out the JetStream peer")
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="lq-bench-")
    with nullcontext(args.db) if args.db else pg_database() as db:
        if db is None:
            raise SystemExit("this benchmark needs PostgreSQL: pass --db or set LQ_BENCH_PG_DSN")
        broker = Broker(db, Path(tmp) / "broker.log")
        broker.start()
        try:
            calls = bench_calls(broker.url, args.calls, args.repeat, tmp)
            rates = {"LogQueueHandler": bench_delivery(broker.url, args.records, tmp)[0]}
            if not args.no_nats:
                rates["QueueHandler+QueueListener -> JetStream"] = bench_nats_peer(args.records)
            outage = bench_outage(broker, args.records, args.outage, tmp)
        finally:
            broker.stop()
    report(args, calls, rates, outage)


if __name__ == "__main__":
    main()
