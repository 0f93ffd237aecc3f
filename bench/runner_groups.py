"""The consumer-groups part of bench_runner.py (`--only groups`): N `lq consume` runners
sharing one name, and the lease round trip against fetch + commit.

1. Scaling: 1, 2 and 4 runners with one name drain a topic into a local HTTP endpoint that
   takes 20 ms per batch (a slow remote sink), timed at the endpoint from its first batch to
   its last; and into the PostgreSQL SQL sink (one table per run), timed by polling the
   table. The runners start on an empty topic and are all ready before the records are
   produced, in appends of 5,000 (so production is never what the runners wait on). Rounds
   run the rows in turn forwards and backwards; each ratio is taken within its round. Each
   row also gives the CPU per batch of 100 records (/proc, from the runners' readiness to the
   last record) of the runners together and of the broker (its appends included): on a
   machine shared with other work the rates move with the load, the CPU per batch much less.
2. Round trip, no sink, batch 100, through the SDK: fetch + commit, lease + ack (two
   requests), and a lease request carrying the ack of the previous lease (one request, what
   `lq consume --name` does), interleaved batch by batch in one run so the machine's load
   weighs on each alike; on a SQLite broker and on a PostgreSQL broker.

Each table is printed with the load average before and after it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NamedTuple

import sqlalchemy as sa
from harness import LQ, broker

from sdk import Client

Record = Callable[[int], str]
RUNNERS = (1, 2, 4)
CHUNK = 5000  # records per append while the runners wait
PATHS = ("fetch + commit", "lease + ack", "lease carrying the previous ack")


class SlowSink:
    """A local HTTP endpoint that takes ``delay`` seconds per batch, and notes when each
    batch arrived and how many records it held. It keeps connections open (HTTP/1.1), so
    the bench's own process spends no thread and no connection per batch."""

    def __init__(self, delay: float = 0.020) -> None:
        self.arrivals: list[tuple[float, int]] = []
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a remote endpoint would

            def do_POST(self) -> None:
                count = len(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                time.sleep(delay)  # the remote sink's work
                with sink._lock:
                    sink.arrivals.append((time.perf_counter(), count))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ingest"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def received(self) -> int:
        with self._lock:
            return sum(count for _, count in self.arrivals)

    def rate(self) -> float:
        """records/s from the first batch's arrival to the last's (the first excluded)."""
        with self._lock:
            (first, _), *rest = self.arrivals
            return sum(c for _, c in rest) / max(rest[-1][0] - first, 1e-9)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class TableWatch:
    """Polls a SQL sink's table: records/s from the first rows seen to the last."""

    def __init__(self, db_url: str, table: str) -> None:
        self.engine = sa.create_engine(db_url.replace("postgresql://", "postgresql+psycopg2://"))
        self.count = sa.text(f'SELECT count(*) FROM "{table}"')  # the bench's own name

    def rows(self) -> int:
        try:
            with self.engine.connect() as conn:
                return int(conn.execute(self.count).scalar() or 0)
        except sa.exc.ProgrammingError:  # the sink has not made its table yet
            return 0

    def rate_until(self, records: int, deadline: float) -> float:
        first: tuple[float, int] | None = None
        while (seen := self.rows()) < records and time.monotonic() < deadline:
            if first is None and seen:
                first = (time.perf_counter(), seen)
            time.sleep(0.05)
        self.engine.dispose()
        assert first is not None, "the runners wrote nothing"
        return (seen - first[1]) / max(time.perf_counter() - first[0], 1e-9)


def _start_runners(url: str, topic: str, tag: str, runners: int, workdir: Path,
                   sink: str) -> list[subprocess.Popen[str]]:
    """``runners`` `lq consume` processes named ``g-TAG``, each ready (registered)."""
    config = workdir / f"group-{tag}.toml"
    config.write_text(f"url = {json.dumps(url)}\n[[pipeline]]\nname = \"g-{tag}\"\n"
                      f"topics = [{json.dumps(topic)}]\nbatch = 100\nwait = 1\n{sink}")
    procs = [subprocess.Popen([LQ, "consume", "--config", str(config)], cwd=workdir,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(runners)]
    for proc in procs:  # "lq consume: ready (...)" once registered
        assert proc.stderr is not None
        while "ready" not in (proc.stderr.readline() or "ready"):
            pass
    return procs


def _stop(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        proc.wait(30)


class GroupRun(NamedTuple):
    """One scaling run: records/s, and the CPU per batch of 100 (ms) of the runners together
    and of the broker (its appends of the run's records included; PostgreSQL's own not)."""

    rate: float
    runners_cpu: float
    broker_cpu: float


def group_rate(url: str, runners: int, records: int, workdir: Path, tag: str,
               make_record: Record, pg: str | None = None) -> GroupRun:
    """records/s of ``runners`` processes sharing one name, into a SlowSink, or with ``pg``
    into the SQL sink (table ``g_TAG``), and the CPU they and the broker spent."""
    topic = f"group-{tag}"
    with Client(url) as client:
        client.create_topic(topic)
    slow = None if pg else SlowSink()
    if slow is not None:
        sink = f"sinks = [{json.dumps(slow.url)}]\n"
    else:
        sink = f"[[pipeline.sink]]\nspec = {json.dumps(f'sql:{pg}')}\ntable = \"g_{tag}\"\n"
    procs = _start_runners(url, topic, tag, runners, workdir, sink)
    brokers = _broker_pids(url)
    spent = (_cpu([proc.pid for proc in procs]), _cpu(brokers))
    try:
        with Client(url) as client:
            producer = client.producer()
            for start in range(0, records, CHUNK):
                producer.send_many(topic, [make_record(i) for i in range(start, start + CHUNK)])
        deadline = time.monotonic() + 300
        if slow is None:
            rate = TableWatch(str(pg), f"g_{tag}").rate_until(records, deadline)
        else:
            while slow.received() < records and time.monotonic() < deadline:
                time.sleep(0.05)
            rate = slow.rate()
        batches = records / 100
        return GroupRun(rate, (_cpu([proc.pid for proc in procs]) - spent[0]) * 1000 / batches,
                        (_cpu(brokers) - spent[1]) * 1000 / batches)
    finally:
        _stop(procs)
        if slow is not None:
            slow.close()


def _cpu(pids: list[int]) -> float:
    """User + system CPU seconds of the processes (every thread), from /proc."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _broker_pids(url: str) -> list[int]:
    """The processes of the broker at ``url`` (gunicorn's arbiter and workers): those whose
    command line has ``--port PORT``."""
    wanted = f"\0--port\0{url.rsplit(':', 1)[1]}\0".encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if wanted in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
    return found


def round_trips(url: str, records: int, make_record: Record, batch: int = 100
                ) -> dict[str, float]:
    """records/s of each of PATHS through the SDK, no sink, each under a name of its own on
    one topic, interleaved batch by batch (the order turning each batch)."""
    topic = f"rt-{time.monotonic_ns()}"
    spent = dict.fromkeys(PATHS, 0.0)
    with Client(url) as client:
        producer = client.producer()
        for start in range(0, records, CHUNK):
            producer.send_many(topic, [make_record(i) for i in range(start, start + CHUNK)])
        classic, two, one = (client.consumer(name=n) for n in ("fc", "la", "carry"))
        for consumer in (classic, two, one):
            consumer.register(topic)
        offset, held = 0, None

        def fetch_commit() -> None:
            nonlocal offset
            messages, _ = classic.fetch(topic, offset=offset, max=batch)
            offset = classic.commit(topic, messages[-1].offset + 1)

        def lease_ack() -> None:
            two.ack(two.lease(topic, max=batch, lease_ms=60_000))

        def carried() -> None:
            nonlocal held
            held = one.lease(topic, max=batch, lease_ms=60_000, ack=held)

        steps = dict(zip(PATHS, (fetch_commit, lease_ack, carried), strict=True))
        for turn in range(records // batch):
            for path in PATHS[turn % 3:] + PATHS[:turn % 3]:
                started = time.perf_counter()
                steps[path]()
                spent[path] += time.perf_counter() - started
        started = time.perf_counter()
        one.ack(held)  # the last lease's ack goes on its own
        spent[PATHS[2]] += time.perf_counter() - started
    return {path: records / seconds for path, seconds in spent.items()}


def _load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def _scaling_table(title: str, runs: dict[int, list[GroupRun]]) -> None:
    """Median records/s per row, and the ratio to one runner taken round by round (the rows
    of one round ran minutes apart at most) with its median and range; the median CPU per
    batch, which the machine's load moves less than the rates."""
    print(f"\n{title}\n")
    print("| runners | records/s | ratio to one runner | ratio range over the rounds | "
          "CPU ms per batch: runners | broker |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n, values in runs.items():
        ratios = [run.rate / one.rate for run, one in zip(values, runs[1], strict=True)]
        print(f"| {n} | {statistics.median(run.rate for run in values):,.0f} | "
              f"{statistics.median(ratios):.2f} | {min(ratios):.2f}-{max(ratios):.2f} | "
              f"{statistics.median(run.runners_cpu for run in values):.2f} | "
              f"{statistics.median(run.broker_cpu for run in values):.2f} |")


def groups(url: str, records: int, rounds: int, workdir: Path, make_record: Record,
           pg: str | None) -> None:
    """Every table of this part, the broker at ``url`` on SQLite; the SQL sink and the second
    round-trip broker on the PostgreSQL database ``pg`` when there is one."""
    print(f"\n{_load()} (start)")
    http: dict[int, list[GroupRun]] = {n: [] for n in RUNNERS}
    sql: dict[int, list[GroupRun]] = {n: [] for n in RUNNERS}
    for r in range(rounds):
        order = RUNNERS if r % 2 == 0 else RUNNERS[::-1]  # a drifting load weighs on each
        for n in order:
            http[n].append(group_rate(url, n, records, workdir, f"h{n}x{r}", make_record))
        for n in order if pg else ():
            sql[n].append(group_rate(url, n, records, workdir, f"s{n}x{r}", make_record, pg))
    _scaling_table(f"Consumer groups: N runners, one name, {records:,} records, batch 100, "
                   f"into an HTTP endpoint taking 20 ms per batch; median of {rounds} "
                   "round(s)", http)
    if pg:
        _scaling_table("The same into the SQL sink (PostgreSQL, COPY)", sql)
    print(f"\n{_load()} (after the scaling runs)")
    trips: dict[str, dict[str, list[float]]] = {}
    with broker(pg) if pg else contextlib.nullcontext() as pg_url:
        for _ in range(rounds):
            for label, at in (("SQLite", url), ("PostgreSQL", pg_url)):
                if at:
                    for path, rate in round_trips(at, records, make_record).items():
                        trips.setdefault(label, {}).setdefault(path, []).append(rate)
    print(f"\nRound trip through the SDK, batch 100, no sink, interleaved batch by batch; "
          f"median of {rounds} round(s)\n")
    print("| broker | path | records/s | ratio to fetch + commit |")
    print("|---|---|---:|---:|")
    for label, paths in trips.items():
        base = statistics.median(paths[PATHS[0]])
        for path, values in paths.items():
            value = statistics.median(values)
            print(f"| {label} | {path} | {value:,.0f} | {value / base:.2f} |")
    print(f"\n{_load()} (end)")


__all__ = ["GroupRun", "SlowSink", "group_rate", "groups", "round_trips"]
