"""Bytes on the wire per message and msg/s, with and without compression, in one run.

Starts its own ``lq broker`` (SQLite in a temporary directory unless ``--db``), puts a
counting TCP proxy (tests/wirecount.py) between the SDK and the broker, and for each setting
(``Client(compress=False)``, then the default) produces batches of log records of about 300
bytes, then consumes them in batches: the bytes each way per message, as the sockets carried
them (headers included), and msg/s. Rounds alternate between the settings so both see the
same machine load; the table shows the medians::

    python bench/bench_wire.py
    python bench/bench_wire.py --db postgresql://postgres@127.0.0.1/logqueue_bench
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
import uuid
from datetime import UTC, datetime

from harness import broker
from wirecount import CountingProxy

from sdk import Client

LEVELS = ["INFO"] * 8 + ["WARNING", "ERROR"]
PATHS = ["/orders", "/cart", "/users", "/search", "/checkout", "/health"]


def record(rng: random.Random, i: int) -> str:
    """A JSON log record as the handler ships it, about 300 bytes, with the variety real ones
    have (ids, timings, paths)."""
    line = {
        "time": datetime.now(UTC).isoformat(timespec="microseconds"),
        "level": rng.choice(LEVELS),
        "logger": "shop.api.requests",
        "message": f"GET {rng.choice(PATHS)}/{rng.randrange(10**6)} -> 200 in "
                   f"{rng.uniform(1, 900):.1f} ms",
        "extra": {"request_id": uuid.UUID(int=rng.getrandbits(128)).hex, "user": rng.randrange(
            10**5), "host": f"web-{rng.randrange(12)}", "seq": i},
        "process": 4242, "thread": "MainThread", "module": "views", "line": 311,
    }
    text = json.dumps(line, separators=(",", ":"))
    return text + " " * max(0, 300 - len(text))


def one_round(url: str, compress: bool, records: list[str], batch: int) -> dict[str, float]:
    topic = f"wire-{uuid.uuid4().hex[:10]}"
    with (CountingProxy(url) as proxy, Client(proxy.url, compress=compress) as client,
          client.producer([topic]) as producer, client.consumer([topic]) as consumer):
        proxy.reset()
        start = time.perf_counter()
        for first in range(0, len(records), batch):
            producer.send_batch(topic, records[first:first + batch])
        produce_s = time.perf_counter() - start
        produce_out, produce_in = proxy.reset()
        start = time.perf_counter()
        got = 0
        while got < len(records):
            got += len(consumer.receive(topic, max=1000))
        consume_s = time.perf_counter() - start
        consume_out, consume_in = proxy.reset()
    n = len(records)
    return {"produce_out": produce_out / n, "produce_in": produce_in / n,
            "produce_rate": n / produce_s, "consume_out": consume_out / n,
            "consume_in": consume_in / n, "consume_rate": n / consume_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", help="database url (default: SQLite in a temporary directory)")
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500, help="records per produce")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rng = random.Random(7)
    records = [record(rng, i) for i in range(args.messages)]
    size = statistics.mean(len(r.encode()) for r in records)
    results: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    with broker(args.db) as url:
        for _ in range(args.rounds):
            for compress in (False, True):
                results[compress].append(one_round(url, compress, records, args.batch))
    print(f"{args.messages} records of {size:.0f} B, produce batches of {args.batch}, consume "
          f"batches of 1000; medians of {args.rounds} rounds; bytes per message on the wire")
    print(f"{'compress':<9} {'produce out':>12} {'in':>6} {'msg/s':>8}   "
          f"{'consume in':>11} {'out':>6} {'msg/s':>8}")
    for compress, rounds in results.items():
        m = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
        print(f"{'gzip' if compress else 'off':<9} {m['produce_out']:>12.1f} "
              f"{m['produce_in']:>6.1f} {m['produce_rate']:>8.0f}   {m['consume_in']:>11.1f} "
              f"{m['consume_out']:>6.1f} {m['consume_rate']:>8.0f}")


if __name__ == "__main__":
    main()
