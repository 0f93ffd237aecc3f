"""How far LogQueue goes with N topics over M databases (or Citus shards), from ceilings
measured on this machine.

    python bench/capacity_model.py                          # the model, measured defaults
    python bench/capacity_model.py --topics 1,8,64 --databases 1,4 --topic-demand 20000
    python bench/capacity_model.py measure                  # measure the ceilings (~2 min)

The model. A topic's offsets come from one counter row, so a topic lives on one database and
its appends serialize on that row: a topic never passes the per-topic ceiling. A database
(or shard group) serves its topics up to the per-database ceiling. Topics are placed evenly
(hash of topic_id); each wants ``--topic-demand`` msg/s (default: all it can take). Brokers
are stateless: the count needed is the throughput over the per-broker ceiling.

The measurement (``measure``), on a throwaway PostgreSQL cluster (tests/pgcluster.py):
* database side, pgbench running the append transaction's shape (counter row UPDATE ...
  RETURNING, the batch INSERT, the producer's seq UPDATE, one commit) from 8 clients, all on
  one topic (the per-topic ceiling) and each on its own topic (the per-database ceiling);
* through one `lq broker` (2 workers x 32 threads), SDK producers in 4 processes sending
  batches with ``send_many``, one topic for all and one topic each; the CPU seconds the
  broker's processes and the database's processes spent per message, which give how many
  broker hosts one database host feeds when each has the same cores.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import re
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import pgcluster  # the failover test's cluster helpers, from tests/

# Measured with `measure` on this machine (2 cores shared by the broker, the database and the
# clients), the lower of the two quiet runs; docs/scaling.md has every run and the spread.
TOPIC_CEILING = 132_000  # msg/s into one topic (one counter row) through a broker, batches of 1,000
DATABASE_CEILING = 254_000  # msg/s into one database, 8 topics, pgbench, batches of 1,000
BROKER_CEILING = 169_000  # msg/s through one `lq broker` (2 workers), topic each, batches of 1,000
BODY = "x" * 100
FIRST_ID = 1_000_000  # pgbench's topics, far from the ids the broker hands out

APPEND_SCRIPT = """\
\\set t (:client_id % {topics}) + {first_id}
BEGIN;
UPDATE lq_topics SET next_offset = next_offset + {batch} WHERE id = :t RETURNING next_offset AS n \\gset
INSERT INTO lq_messages (topic_id, msg_offset, body, ts_us) SELECT :t, g, repeat('x', 100), 0 FROM generate_series(:n - {batch}, :n - 1) g;
UPDATE lq_producers SET last_seq = :n, last_first = :n - {batch}, last_last = :n - 1 WHERE id = :client_id + 1;
COMMIT;
"""  # noqa: E501 - pgbench reads one statement per line


# --- the model -----------------------------------------------------------------------------
def capacity(topics: int, databases: int, topic_ceiling: float, database_ceiling: float,
             topic_demand: float | None = None) -> float:
    """msg/s for ``topics`` placed evenly over ``databases``, each topic wanting
    ``topic_demand`` (None: as much as it can take)."""
    per_topic = topic_ceiling if topic_demand is None else min(topic_demand, topic_ceiling)
    placed = [topics // databases + (1 if i < topics % databases else 0)
              for i in range(databases)]
    return sum(min(n * per_topic, database_ceiling) for n in placed)


def print_model(opts: argparse.Namespace) -> None:
    topics = [int(n) for n in opts.topics.split(",")]
    databases = [int(m) for m in opts.databases.split(",")]
    demand = "each as much as it can take" if opts.topic_demand is None else \
        f"each wanting {opts.topic_demand:,.0f} msg/s"
    print(f"per topic {opts.topic_ceiling:,.0f} msg/s, per database {opts.database_ceiling:,.0f}"
          f" msg/s, per broker {opts.broker_ceiling:,.0f} msg/s; topics {demand}")
    print(f"\n{'topics':>7}" + "".join(f"{f'{m} db(s)':>22}" for m in databases))
    for n in topics:
        cells = []
        for m in databases:
            rate = capacity(n, m, opts.topic_ceiling, opts.database_ceiling, opts.topic_demand)
            brokers = math.ceil(rate / opts.broker_ceiling)
            cells.append(f"{rate:>12,.0f} ({brokers:>3} br)")
        print(f"{n:>7}" + "".join(f"{c:>22}" for c in cells))
    print("\nmsg/s in total (brokers needed at the per-broker ceiling)")


# --- measuring the ceilings ----------------------------------------------------------------
def pgbench(node: pgcluster.Node, topics: int, batch: int, clients: int, seconds: int) -> float:
    """msg/s of the append transaction's shape straight into the database."""
    script = node.base / f"append-{topics}-{batch}.sql"
    script.write_text(APPEND_SCRIPT.format(topics=topics, batch=batch, first_id=FIRST_ID))
    out = node.run("pgbench", "-n", "-h", "127.0.0.1", "-p", str(node.port), "-U", "postgres",
                   "-c", str(clients), "-j", "2", "-T", str(seconds), "-f", str(script), "lq",
                   timeout=seconds + 60)
    tps = float(re.search(r"tps = ([\d.]+)", out).group(1))
    return tps * batch


def _producer(args: tuple) -> int:
    """One SDK producer process: batches into ``topic`` until ``until``; messages sent."""
    from sdk import Client

    url, topic, batch, until = args
    sent = 0
    with Client(url) as client:
        producer = client.producer()
        messages = [BODY] * batch
        while time.monotonic() < until:
            producer.send_many(topic, messages)
            sent += batch
    return sent


def cpu_seconds(pids: list[int], roots: list[int]) -> float:
    """CPU (user + system) of live ``pids``, plus what ``roots`` reaped from exited children."""
    total = 0
    for pid in set(pids):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
        if pid in roots:
            total += int(fields[13]) + int(fields[14])  # cutime, cstime
    return total / os.sysconf("SC_CLK_TCK")


def process_tree(root: int) -> list[int]:
    found = [root]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == root or int(stat[2]) == root:  # child, or in its group
                found.append(int(entry.name))
    return found


def through_broker(url: str, roots: dict[str, int], clients: int, batch: int, seconds: float,
                   one_topic: bool) -> tuple[float, dict[str, float]]:
    """msg/s through the broker, and CPU seconds per million messages per process tree."""
    tag = f"{'one' if one_topic else 'own'}-{batch}-{time.monotonic_ns()}"
    before = {name: cpu_seconds(process_tree(pid), [pid]) for name, pid in roots.items()}
    until = time.monotonic() + seconds
    start = time.monotonic()
    with mp.Pool(clients) as pool:
        jobs = [(url, tag if one_topic else f"{tag}-{i}", batch, until) for i in range(clients)]
        sent = sum(pool.map(_producer, jobs))
    elapsed = time.monotonic() - start
    after = {name: cpu_seconds(process_tree(pid), [pid]) for name, pid in roots.items()}
    per_million = {name: (after[name] - before[name]) / sent * 1e6 for name in roots}
    return sent / elapsed, per_million


def measure(opts: argparse.Namespace) -> None:
    from support import BrokerProcess  # tests/ is on the path already

    base = pgcluster.workdir()
    node = pgcluster.Node(base, "db")
    try:
        node.init(synchronous_commit="on")
        node.start()
        node.sql("CREATE DATABASE lq")
        url = f"postgresql://postgres@127.0.0.1:{node.port}/lq"
        broker = BrokerProcess(url, log_path=base / "broker.log",
                               args=["--workers", "2", "--threads", "32"]).start()
        try:
            prepare_pgbench(node, opts.clients)
            batches = [int(b) for b in opts.batches.split(",")]
            for batch in batches:
                one = pgbench(node, 1, batch, opts.clients, opts.seconds)
                many = pgbench(node, opts.clients, batch, opts.clients, opts.seconds)
                print(f"pgbench, {opts.clients} clients, batches of {batch}: one topic "
                      f"{one:,.0f} msg/s, {opts.clients} topics {many:,.0f} msg/s")
            roots = {"broker": broker.proc.pid, "postgres": node.postmaster_pid()}
            for batch in batches:
                for one_topic in (True, False):
                    rate, cpu = through_broker(broker.url, roots, opts.workers, batch,
                                               opts.seconds, one_topic)
                    print(f"SDK via one broker, {opts.workers} producer processes, batches of "
                          f"{batch}, {'one topic' if one_topic else 'a topic each'}: "
                          f"{rate:,.0f} msg/s; CPU s per million msgs: broker "
                          f"{cpu['broker']:.1f}, postgres {cpu['postgres']:.1f}")
        finally:
            broker.stop()
    finally:
        node.stop()
        shutil.rmtree(base, ignore_errors=True)


def prepare_pgbench(node: pgcluster.Node, clients: int) -> None:
    """In the broker's tables (made by the broker at start): a topic and a producer per
    pgbench client, with the ids the script computes."""
    for i in range(clients):
        node.sql("INSERT INTO lq_topics (id, name, next_offset, first_offset, created_us) "
                 "VALUES (%s, %s, 0, 0, 0)", (FIRST_ID + i, f"pgbench-{i}"), dbname="lq")
        node.sql("INSERT INTO lq_producers (id, topic_id, created_us) VALUES (%s, %s, 0)",
                 (i + 1, FIRST_ID + i), dbname="lq")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", nargs="?", choices=["model", "measure"], default="model")
    parser.add_argument("--topics", default="1,4,16,64,256", help="topic counts (rows)")
    parser.add_argument("--databases", default="1,2,4,8", help="database counts (columns)")
    parser.add_argument("--topic-ceiling", type=float, default=TOPIC_CEILING)
    parser.add_argument("--database-ceiling", type=float, default=DATABASE_CEILING)
    parser.add_argument("--broker-ceiling", type=float, default=BROKER_CEILING)
    parser.add_argument("--topic-demand", type=float, default=None,
                        help="msg/s each topic wants (default: as much as it can take)")
    parser.add_argument("--clients", type=int, default=8, help="measure: pgbench clients")
    parser.add_argument("--workers", type=int, default=4, help="measure: SDK processes")
    parser.add_argument("--seconds", type=int, default=5, help="measure: per run")
    parser.add_argument("--batches", default="100,1000", help="measure: batch sizes")
    opts = parser.parse_args()
    if opts.action == "measure":
        reason = pgcluster.unavailable()
        if reason:
            raise SystemExit(f"capacity_model measure: {reason}")
        measure(opts)
    else:
        print_model(opts)


if __name__ == "__main__":
    main()
