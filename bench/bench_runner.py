"""Benchmark the consumer runner (`lq consume`).

1. Throughput: N records in one topic; the raw consume rate (SDK fetch + commit, no sink) and
   `lq consume` into the file sink and the SQL sink (SQLite, and PostgreSQL when reachable,
   both through COPY and through the multi-row INSERT of `copy = false`), with and without
   prefetch (fetching the next batch while writing this one), all in the same run against
   the same broker, with ratios to the raw rate. With --rounds R each row is measured R
   times (interleaved) and the median is shown.
2. Latency: an application logs through LogQueueHandler at a fixed rate; `lq consume` writes
   to the file sink; a tail thread reads the file and measures logger.info() -> line in file.
3. Consumer groups (runner_groups.py): 1, 2 and 4 `lq consume` runners sharing one name
   drain a topic into a local HTTP endpoint that takes 20 ms per batch (a slow remote sink)
   and into the PostgreSQL SQL sink; and the lease round trip against fetch + commit through
   the SDK, in the same run, on a SQLite and a PostgreSQL broker.

    python bench/bench_runner.py [--records 50000] [--rounds 1] [--rate 1000] [--seconds 10]
                                 [--group-records 40000] [--only groups]
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from harness import LQ, broker, pg_database
from runner_groups import groups

from sdk import Client


def record(i: int) -> str:
    return json.dumps({
        "time": "2024-05-01T12:00:00.000000Z", "level": "INFO", "levelno": 20,
        "logger": "bench.orders", "message": f"order {i} created", "module": "orders",
        "function": "create", "line": 42, "pathname": "/srv/app/orders.py", "process": 1,
        "process_name": "MainProcess", "thread": 1, "thread_name": "MainThread",
        "host": "bench", "extra": {"order_id": i}, "service": "shop"})


def raw_consume(url: str, topic: str, n: int, name: str = "raw") -> float:
    """records/s of fetch(max=1000) + commit with no sink: the ceiling for the runner."""
    with Client(url) as client:
        consumer = client.consumer(name=name)
        start = time.perf_counter()
        got = 0
        offset = None
        while got < n:
            messages, pos = consumer.fetch(topic, offset=offset, max=1000, wait=1)
            if not messages:
                continue
            got += len(messages)
            offset = consumer.commit(topic, messages[-1].offset + 1)
        return got / (time.perf_counter() - start)


def runner_rate(url: str, topic: str, sink: str, name: str, workdir: Path,
                prefetch: bool = True, **options: str | bool) -> float:
    """records/s of `lq consume` draining ``topic`` into ``sink`` (with the sink's keyword
    ``options``), through a TOML config."""
    config = workdir / f"{name}.toml"
    config.write_text(f"url = {json.dumps(url)}\nuntil_empty = true\n"
                      f"prefetch = {json.dumps(prefetch)}\n"
                      f"[[pipeline]]\nname = {json.dumps(name)}\n"
                      f"topics = [{json.dumps(topic)}]\nbatch = 1000\nwait = 0.2\n"
                      f"[[pipeline.sink]]\nspec = {json.dumps(sink)}\n"
                      + "".join(f"{key} = {json.dumps(value)}\n"
                                for key, value in options.items()))
    done = subprocess.run([LQ, "consume", "--config", str(config), "--progress"], cwd=workdir,
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"lq consume failed: {done.stderr}")
    match = re.search(r"done: ([\d,]+) records in ([\d.]+)s", done.stderr)
    assert match, done.stderr
    n = int(match.group(1).replace(",", ""))
    # the runner's own clock includes start-up; --until-empty ends at the first empty fetch
    return n / max(float(match.group(2)), 1e-9)


def latency(url: str, workdir: Path, rate: int, seconds: float) -> tuple[list[float], int]:
    """ms from logger.info() to the line in the file sink, at ``rate`` records/s."""
    from lq_logging import LogQueueHandler

    topic = "latency"
    Client(url).create_topic(topic, exist_ok=True)
    out = workdir / "latency.jsonl"
    runner = subprocess.Popen([LQ, "consume", "--url", url, "--topic", topic, "--name", "lat",
                               "--sink", f"file:{out}", "--wait", "5"], cwd=workdir,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    assert runner.stderr is not None
    while "ready" not in runner.stderr.readline():
        pass
    total = int(rate * seconds)
    seen: list[float] = []
    done = threading.Event()

    def tail() -> None:
        while not out.exists():
            time.sleep(0.0005)
        with open(out, "rb") as fh:
            buf = b""
            while len(seen) < total and not done.is_set():
                chunk = fh.read()
                if not chunk:
                    time.sleep(0.0005)
                    continue
                now = time.time()
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    seen.append((now - json.loads(line)["extra"]["t0"]) * 1000)

    reader = threading.Thread(target=tail, daemon=True)
    reader.start()
    handler = LogQueueHandler(url=url, topic=topic, spool_dir=str(workdir / "spool"))
    log = logging.getLogger("bench.latency")
    log.propagate = False
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    start = time.perf_counter()
    for i in range(total):
        target = start + i / rate
        delay = target - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        log.info("order %d", i, extra={"t0": time.time()})
    reader.join(30)
    done.set()
    handler.close()
    runner.send_signal(signal.SIGTERM)
    runner.wait(30)
    return seen, total


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure each throughput row this many times; show the median")
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--group-records", type=int, default=40_000,
                        help="records per groups run (4 runners drain 40,000 in about 5 s; "
                             "with fewer, the first and last batches weigh on the rate)")
    parser.add_argument("--only", choices=["groups"], help="run only this part")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if args.only == "groups":
            with broker() as url, pg_database() as pg:
                groups(url, args.group_records, args.rounds, workdir, record, pg)
            return
        with broker() as url, pg_database() as pg:
            throughput(url, pg, args, workdir)
            latency_table(url, workdir, args.rate, args.seconds)
            groups(url, args.group_records, args.rounds, workdir, record, pg)


def throughput(url: str, pg: str | None, args: argparse.Namespace, workdir: Path) -> None:
    """The throughput table: raw consume and `lq consume` into each sink, prefetch off/on."""
    topic = "bench"
    with Client(url) as client:
        producer = client.producer()
        for start in range(0, args.records, 1000):
            producer.send_many(topic, [record(i) for i in
                                       range(start, min(start + 1000, args.records))])
    # label, sink, its options, prefetch; "{dir}" and "{name}" are filled per run
    paths: list[tuple[str, str, dict[str, str | bool], bool]] = []
    sinks: list[tuple[str, str, dict[str, str | bool]]] = [
        ("file (JSON lines, fsync)", "file:{dir}/out-{name}.jsonl", {}),
        ("file (fsync=false)", "file:{dir}/out-{name}.jsonl?fsync=false", {}),
        ("sql (SQLite)", "sql:sqlite:///{dir}/sink-{name}.db", {})]
    if pg:  # one table per run, so every run writes fresh rows
        sinks += [("sql (PostgreSQL, multi-row INSERT)", f"sql:{pg}",
                   {"table": "t_{name}", "copy": False}),
                  ("sql (PostgreSQL, COPY)", f"sql:{pg}", {"table": "t_{name}"})]
    for label, sink, options in sinks:
        for prefetch in (False, True):
            paths.append((f"lq consume -> {label}, prefetch "
                          f"{'on' if prefetch else 'off'}", sink, options, prefetch))
    results: dict[str, list[float]] = {"raw": []}
    for r in range(args.rounds):
        results["raw"].append(raw_consume(url, topic, args.records, f"raw-{r}"))
        for index, (label, sink, options, prefetch) in enumerate(paths):
            name = f"p{index}_r{r}"
            filled = {k: v.format(name=name) if isinstance(v, str) else v
                      for k, v in options.items()}
            results.setdefault(label, []).append(runner_rate(
                url, topic, sink.format(dir=workdir, name=name), name, workdir,
                prefetch, **filled))
    rows = [("raw consume (SDK fetch+commit, no sink)", statistics.median(results["raw"]))]
    rows += [(label, statistics.median(results[label])) for label, *_ in paths]
    raw = rows[0][1]
    print(f"\nThroughput, {args.records:,} records of ~400 bytes, broker on SQLite, "
          f"batch 1000, median of {args.rounds} round(s)\n")
    print("| path | records/s | ratio to raw consume |")
    print("|---|---:|---:|")
    for label, value in rows:
        print(f"| {label} | {value:,.0f} | {value / raw:.2f} |")


def latency_table(url: str, workdir: Path, rate: int, seconds: float) -> None:
    seen, total = latency(url, workdir, rate, seconds)
    print(f"\nLatency logger.info() -> line in the file sink, {rate}/s for "
          f"{seconds:.0f} s ({len(seen):,}/{total:,} records seen)\n")
    print("| p50 ms | p90 ms | p99 ms | max ms | mean ms |")
    print("|---:|---:|---:|---:|---:|")
    if seen:
        print(f"| {pct(seen, 50):.1f} | {pct(seen, 90):.1f} | {pct(seen, 99):.1f} | "
              f"{max(seen):.1f} | {statistics.mean(seen):.1f} |")


if __name__ == "__main__":
    main()
