"""System calls the broker's worker makes per one-message produce, counted with strace.

    python docs/profiles/syscalls.py                       # this checkout
    python docs/profiles/syscalls.py --before /work/main   # and another checkout's, same run

Unlike wall and CPU times, the counts do not move with the machine's load: they show what a
change removed (database round trips, rounds of the worker's main loop, thread hand-offs).
Starts ``lq broker --workers 1`` on a throwaway PostgreSQL database per checkout, sends
``--calls`` produce requests on one kept-alive connection (http.client) while ``strace -c -f``
counts the worker's calls, and prints those made at least once every four requests.
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import pg_database
from measure import http_client_post, produce_body, worker_pid
from support import BrokerProcess

HERE = Path(__file__).resolve().parent


def count(db: str, checkout: str, calls: int, out: Path) -> dict[str, float]:
    """strace's counts per request for `lq broker` running `checkout`'s code."""
    proc = BrokerProcess(db, args=["--workers", "1", "--threads", "32"],
                         env={"PYTHONPATH": checkout}).start()
    try:
        session = requests.Session()
        topic = f"syscalls-{time.time_ns()}"
        session.post(proc.url + "/topics", json={"topic_name": topic})
        producer = session.post(proc.url + "/producer/register", json={"topic": topic}).json()[
            "producer_id"]
        seqs = itertools.count(1)
        post = http_client_post(proc.url, True)
        for _ in range(20):  # warm: connections open, caches filled
            post(produce_body(producer, seqs, topic))
        tracer = subprocess.Popen(["strace", "-c", "-f", "-q", "-o", str(out), "-p",
                                   str(worker_pid(proc.url))])
        time.sleep(1.0)  # strace attaches to every thread; nothing to poll for
        for _ in range(calls):
            post(produce_body(producer, seqs, topic))
        tracer.send_signal(signal.SIGINT)
        tracer.wait(30)
    finally:
        proc.stop()
    counts = {}
    for line in out.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[3].isdigit():
            counts[fields[-1]] = int(fields[3]) / calls
        elif fields[-1:] == ["total"]:
            counts["total"] = int(fields[2]) / calls
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--before", help="another checkout to count too")
    args = parser.parse_args()
    checkouts = ([args.before] if args.before else []) + [str(HERE.parents[1])]
    results = {}
    with pg_database() as db, tempfile.TemporaryDirectory() as tmp:
        for n, checkout in enumerate(checkouts):
            results[checkout] = count(db, checkout, args.calls, Path(tmp) / f"{n}.txt")
    names = sorted({name for counts in results.values() for name, per in counts.items()
                    if per >= 0.25}, key=lambda n: (n == "total", n))
    print("\n| system call, per produce | " + " | ".join(results) + " |")
    print("|---|" + "---:|" * len(results))
    for name in names:
        print(f"| {name} | " + " | ".join(f"{c.get(name, 0):.1f}" for c in results.values())
              + " |")
    print(f"\nload average: {os.getloadavg()}")


if __name__ == "__main__":
    main()
