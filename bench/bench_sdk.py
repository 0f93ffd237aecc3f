"""SDK overhead: produce/consume msg/s through the SDK next to raw ``requests`` calls.

Starts its own ``lq broker`` (SQLite in a temporary directory unless ``--db`` says otherwise,
a free port), then runs each operation several rounds, alternating raw and SDK so both see the
same machine load, and prints the median msg/s of each with the SDK's overhead::

    python bench/bench_sdk.py                       # SQLite
    python bench/bench_sdk.py --db postgresql://postgres@127.0.0.1/logqueue_bench
    python bench/bench_sdk.py --url localhost:5000  # an already running broker

Raw calls use one ``requests.Session`` and send the same fields as the SDK (the seq
included), so the difference is the SDK's own cost: locks, seq bookkeeping, error mapping,
Message objects.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from collections.abc import Callable

import requests
from harness import broker

from sdk import Client
from sdk.producer import initial_seq
from sdk.transport import normalize_url


class Raw:
    """The same calls with a bare ``requests.Session``."""

    def __init__(self, url: str, trust_env: bool = True) -> None:
        self.url = url
        self.session = requests.Session()
        self.session.trust_env = trust_env

    def post(self, path: str, body: dict) -> dict:
        data = self.session.post(self.url + path, json=body, timeout=(3.05, 30)).json()
        assert data["status"] == "success", data
        return data

    def get(self, path: str, params: dict) -> dict:
        data = self.session.get(self.url + path, params=params, timeout=(3.05, 30)).json()
        assert data["status"] == "success", data
        return data


Pair = tuple[str, int, Callable[[], None], Callable[[], None]]


def make_pairs(raw: Raw, client: Client, n_single: int, n_batched: int,
               batch: int) -> list[Pair]:
    """One round's (name, messages, raw function, SDK function), on fresh topics; the raw
    functions use ``raw.session`` as it is when they run. The consume pairs read what the
    produce pairs wrote."""
    tag = uuid.uuid4().hex[:8]
    topics = tuple(f"b-{tag}-{x}" for x in ("raw", "sdk", "rawb", "sdkb"))
    return (produce_pairs(raw, client, topics, n_single, n_batched, batch)
            + consume_pairs(raw, client, topics, n_single, n_batched, batch))


def produce_pairs(raw: Raw, client: Client, topics: tuple[str, ...], n_single: int,
                  n_batched: int, batch: int) -> list[Pair]:
    t_raw, t_sdk, tb_raw, tb_sdk = topics
    pid = raw.post("/producer/register", {"topic": t_raw})["producer_id"]
    pid_b = raw.post("/producer/register", {"topic": tb_raw})["producer_id"]
    producer = client.producer([t_sdk, tb_sdk])
    msgs = [f"benchmark message {i:08d} " + "x" * 100 for i in range(max(n_single, batch))]
    chunks = [msgs[:batch]] * (n_batched // batch)

    def raw_single() -> None:
        seq = initial_seq()
        for i in range(n_single):
            raw.post("/producer/produce", {"topic": t_raw, "producer_id": pid,
                                           "seq": seq + i, "message": msgs[i]})

    def sdk_single() -> None:
        for i in range(n_single):
            producer.send(t_sdk, msgs[i])

    def raw_batched() -> None:
        seq = initial_seq()
        for i, chunk in enumerate(chunks):
            raw.post("/producer/produce", {"topic": tb_raw, "producer_id": pid_b,
                                           "seq": seq + i, "messages": chunk})

    def sdk_batched() -> None:
        for chunk in chunks:
            producer.send_many(tb_sdk, chunk)

    return [("produce, 1 per request", n_single, raw_single, sdk_single),
            (f"produce, {batch} per request", n_batched, raw_batched, sdk_batched)]


def consume_pairs(raw: Raw, client: Client, topics: tuple[str, ...], n_single: int,
                  n_batched: int, batch: int) -> list[Pair]:
    t_raw, t_sdk, tb_raw, tb_sdk = topics
    cid = raw.post("/consumer/register", {"topic": t_raw})["consumer_id"]
    cid_b = raw.post("/consumer/register", {"topic": tb_raw})["consumer_id"]
    consumer = client.consumer([t_sdk, tb_sdk])

    def raw_consume_single() -> None:
        for _ in range(n_single):
            raw.get("/consumer/consume", {"topic": t_raw, "consumer_id": cid})

    def sdk_consume_single() -> None:
        for _ in range(n_single):
            consumer.receive_one(t_sdk)

    def raw_consume_batched() -> None:
        got = 0
        while got < n_batched:
            got += len(raw.get("/consumer/consume", {"topic": tb_raw, "consumer_id": cid_b,
                                                     "max": batch, "wait_ms": 0})["messages"])

    def sdk_consume_batched() -> None:
        got = 0
        while got < n_batched:
            got += len(consumer.receive(tb_sdk, max=batch))

    return [("consume, 1 per request", n_single, raw_consume_single, sdk_consume_single),
            (f"consume, {batch} per request", n_batched, raw_consume_batched,
             sdk_consume_batched)]


def run(url: str, n_single: int, n_batched: int, batch: int, rounds: int) -> list[tuple]:
    raw = Raw(url)
    client = Client(url)
    results: dict[str, dict[str, list[float]]] = {}
    cpu: dict[str, dict[str, list[float]]] = {}
    kinds = ("raw", "raw_noenv", "sdk")

    def timed(name: str, kind: str, n: int, fn: Callable[[], None]) -> None:
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        rate = n / (time.perf_counter() - start)
        results.setdefault(name, {k: [] for k in kinds})[kind].append(rate)
        cpu.setdefault(name, {k: [] for k in kinds})[kind].append(
            (time.process_time() - start_cpu) / n * 1e6)

    for r in range(rounds):
        pairs = make_pairs(raw, client, n_single, n_batched, batch)
        noenv_pairs = make_pairs(raw, client, n_single, n_batched, batch)
        for (name, n, raw_fn, sdk_fn), (_, _, noenv_fn, _) in zip(pairs, noenv_pairs,
                                                                  strict=True):
            order = [("raw", raw_fn), ("raw_noenv", noenv_fn), ("sdk", sdk_fn)]
            if r % 2:
                order.reverse()
            for kind, fn in order:
                raw.session.trust_env = kind != "raw_noenv"
                timed(name, kind, n, fn)
        print(f"round {r + 1}/{rounds} done", file=sys.stderr)

    client.close()
    rows = []
    for name, rates in results.items():
        raw_rate, noenv_rate, sdk_rate = (statistics.median(rates[k]) for k in kinds)
        noenv_cpu, sdk_cpu = (statistics.median(cpu[name][k]) for k in kinds[1:])
        rows.append((name, raw_rate, noenv_rate, sdk_rate, noenv_cpu, sdk_cpu))
    return rows


def print_table(rows: list[tuple], title: str) -> None:
    print(f"\n{title}\n")
    print("| operation | raw requests msg/s | raw, trust_env off | SDK msg/s | SDK / raw | "
          "SDK / raw (trust_env off) | client CPU µs/msg, raw (off) | SDK | SDK CPU overhead |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, raw_rate, noenv_rate, sdk_rate, noenv_cpu, sdk_cpu in rows:
        print(f"| {name} | {raw_rate:,.0f} | {noenv_rate:,.0f} | {sdk_rate:,.0f} | "
              f"{sdk_rate / raw_rate:.3f} | {sdk_rate / noenv_rate:.3f} | {noenv_cpu:,.1f} | "
              f"{sdk_cpu:,.1f} | {(sdk_cpu / noenv_cpu - 1) * 100:+.1f}% |")
    print("\nThe SDK's session ignores proxy/netrc environment settings (trust_env=False, its "
          "default); the middle column is raw requests configured the same way.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="database URL for the broker (default: SQLite in a temp dir)")
    parser.add_argument("--url", help="use this running broker instead of starting one")
    parser.add_argument("--workers", type=int, default=1, help="broker worker processes")
    parser.add_argument("--single", type=int, default=1000, help="messages sent one by one")
    parser.add_argument("--batched", type=int, default=20000, help="messages sent in batches")
    parser.add_argument("--batch", type=int, default=100, help="messages per batch")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (median reported)")
    args = parser.parse_args()

    if args.url:
        url = normalize_url(args.url)
        rows = run(url, args.single, args.batched, args.batch, args.rounds)
        print_table(rows, f"broker {url}")
        return
    with broker(args.db, workers=args.workers) as url:
        rows = run(url, args.single, args.batched, args.batch, args.rounds)
    backend = "PostgreSQL" if args.db and args.db.startswith("postgres") else "SQLite"
    print_table(rows, f"{backend}, {args.workers} worker(s), median of {args.rounds} rounds; "
                      f"same broker, same run")


if __name__ == "__main__":
    main()
