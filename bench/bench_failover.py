"""The database tier under a primary's loss, and what the synchronous standby costs.

    python bench/bench_failover.py                   # ~1 minute
    python bench/bench_failover.py --clients 4 --batch 100 --seconds 4 --rounds 2

Two throwaway clusters made like the failover test's (tests/pgcluster.py: a primary and a
streaming standby from stock binaries), two brokers (2 workers x 8 threads) on libpq's
multi-host URL, client processes producing batches with a producer id and seq, each to its
own topic, alternating between the brokers.

1. Cost of the synchronous standby: batched produce msg/s with the standby synchronous
   (`synchronous_standby_names` set: a commit waits for the standby's flush) and
   asynchronous (the same standby still streaming, commits do not wait), alternated in
   rounds in the same run; the ratio is the figure.
2. Failover: the same load, the primary's postmaster killed (-9), the standby promoted once
   both brokers answer 503, its inherited synchronous_standby_names cleared. Printed: kill ->
   first acknowledged produce, promotion -> first acknowledged produce, msg/s before and after
   (after: no standby left, so commits are local), and that nothing acknowledged was lost.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import requests
from harness import broker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import pgcluster  # the failover test's cluster helpers, from tests/

BODY = "x" * 100  # a 100-byte log line


def _client(args: tuple) -> list[tuple[float, int]]:
    """One producer process until ``until`` (monotonic, system-wide on Linux): each batch
    sent with the next seq and retried, same seq, on the other broker until acknowledged.
    Returns (time acknowledged, messages) per batch."""
    urls, topic, batch, until = args
    session = requests.Session()
    which = 0
    pid = None
    seq = 0
    done: list[tuple[float, int]] = []
    body = {"topic": topic, "messages": [BODY] * batch}
    while time.monotonic() < until:
        try:
            if pid is None:
                pid = session.post(urls[which] + "/producer/register", json={"topic": topic},
                                   timeout=10).json()["producer_id"]
            reply = session.post(urls[which] + "/producer/produce", timeout=10,
                                 json={**body, "producer_id": pid, "seq": seq})
        except requests.RequestException:
            reply = None
        if reply is not None and reply.status_code == 200:
            done.append((time.monotonic(), batch))
            seq += 1
        else:
            which = (which + 1) % len(urls)  # the same seq again, on the other broker
            time.sleep(0.01)  # a client's backoff, not synchronization
    return done


def produce_for(pool: mp.pool.Pool, urls: list[str], clients: int, batch: int,
                seconds: float, tag: str) -> list[tuple[float, int]]:
    until = time.monotonic() + seconds
    jobs = [(urls[i % 2:] + urls[:i % 2], f"{tag}-{i}", batch, until) for i in range(clients)]
    return pool.map_async(_client, jobs)


def rate(acks: list[tuple[float, int]], start: float, end: float) -> float:
    return sum(n for at, n in acks if start < at <= end) / (end - start)


def standby_cost(pool: mp.pool.Pool, pair: pgcluster.Pair, urls: list[str],
                 opts: argparse.Namespace) -> None:
    rates: dict[str, list[float]] = {"sync": [], "async": []}
    for rnd in range(opts.rounds):
        for mode in ("sync", "async"):
            pair.set_synchronous(pair.primary, pgcluster.STANDBY_NAME if mode == "sync" else "")
            assert pair.replication_state() == mode, pair.replication_state()
            start = time.monotonic()
            acks = [a for part in produce_for(pool, urls, opts.clients, opts.batch,
                                              opts.seconds, f"{mode}{rnd}").get() for a in part]
            rates[mode].append(rate(acks, start + 0.5, start + opts.seconds))
    sync, asynchronous = (statistics.median(rates[m]) for m in ("sync", "async"))
    print(f"batched produce ({opts.clients} clients x {opts.batch} msgs, own topics), "
          f"median of {opts.rounds} rounds of {opts.seconds:.0f} s:")
    print(f"  synchronous standby   {sync:10,.0f} msg/s   {sync / asynchronous:5.2f}x")
    print(f"  asynchronous standby  {asynchronous:10,.0f} msg/s   1.00x (baseline)")
    pair.set_synchronous(pair.primary, pgcluster.STANDBY_NAME)


def failover(pool: mp.pool.Pool, pair: pgcluster.Pair, urls: list[str],
             opts: argparse.Namespace) -> None:
    total = opts.seconds * 4
    start = time.monotonic()
    pending = produce_for(pool, urls, opts.clients, opts.batch, total, "failover")
    time.sleep(total / 3)  # load before the kill: scheduling, not synchronization
    killed = time.monotonic()
    pair.primary.kill()
    while not all(_unhealthy(url) for url in urls):
        time.sleep(0.01)
    promoted = pair.promote_standby()
    acks = [a for part in pending.get() for a in part]
    first = min(at for at, _ in acks if at > promoted)
    last = max(at for at, _ in acks if at <= promoted)  # answers in flight at the kill
    end = start + total
    print(f"failover ({opts.clients} clients x {opts.batch} msgs):")
    print(f"  kill -> both brokers 503, promotion done   {promoted - killed:6.2f} s")
    print(f"  kill -> first acknowledged produce after    {first - killed:6.2f} s")
    print(f"  no acknowledgement at all for               {first - last:6.2f} s")
    print(f"  promotion -> first acknowledged produce     {first - promoted:6.2f} s")
    print(f"  produce before (synchronous standby)  {rate(acks, start + 0.5, killed):10,.0f} msg/s")
    print(f"  produce after (promoted, no standby)  {rate(acks, first + 0.5, end):10,.0f} msg/s")
    acked = sum(n for _, n in acks)
    stored = sum(_next_offset(urls[0], f"failover-{i}") for i in range(opts.clients))
    print(f"  {acked:,} messages acknowledged, {stored:,} stored")


def _unhealthy(url: str) -> bool:
    try:
        return requests.get(url + "/healthz", timeout=2).status_code == 503
    except requests.RequestException:
        return False


def _next_offset(url: str, topic: str) -> int:
    stats = requests.get(url + "/stats", timeout=10).json()
    return next(t["next_offset"] for t in stats["topics"] if t["topic"] == topic)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=4.0, help="per measured round")
    parser.add_argument("--rounds", type=int, default=2)
    opts = parser.parse_args()
    reason = pgcluster.unavailable()
    if reason:
        raise SystemExit(f"bench_failover: {reason}")
    with ExitStack() as stack:
        pair = stack.enter_context(pgcluster.Pair(synchronous=True))
        urls = [stack.enter_context(broker(pair.url, workers=2, threads=8)) for _ in range(2)]
        pool = stack.enter_context(mp.Pool(opts.clients))
        standby_cost(pool, pair, urls, opts)
        failover(pool, pair, urls, opts)


if __name__ == "__main__":
    main()
