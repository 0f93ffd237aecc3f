"""Flame graphs of issue 21's two lagging paths, broker and client side at once, with py-spy.

    python docs/profiles/record.py                    # PostgreSQL, both paths
    python docs/profiles/record.py --db sqlite --paths single --seconds 10

Starts a broker (``--workers 1``, so one gunicorn worker serves everything), then for each
path runs docs/profiles/load.py under ``py-spy record --idle`` (the client: time blocked in
the socket shows as such) while a second py-spy samples the broker's worker (on-CPU samples
only: the worker's idle threads would drown the picture). Writes
``<path>-<db>-broker.svg`` and ``<path>-<db>-client.svg`` next to this file, and prints the
shares: self time by package, and the functions with the largest inclusive share, from a
second, raw recording of the same run length.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import broker, pg_database
from load import PAYLOAD
from measure import worker_pid

from sdk import Client

HERE = Path(__file__).resolve().parent
PY_SPY = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
WAITING = ("readinto", "recv", "recv_into", "select", "poll", "wait", "_wait_for_tstate_lock")


def spy(pid: int | None, out: Path, seconds: float, fmt: str, command: list[str]) -> list[str]:
    args = [PY_SPY, "record", "--nonblocking", "-r", "200", "-f", fmt, "-o", str(out)]
    if fmt == "flamegraph":
        args.append("-F")  # one box per function, not per line: a smaller, readable graph
    if pid is None:
        return [*args, "--idle", "--", *command]
    return [*args, "-p", str(pid), "-d", str(int(seconds))]


def record_once(url: str, pid: int, path: str, topic: str, seconds: float, fmt: str,
                outs: tuple[Path, Path]) -> str:
    load = [sys.executable, str(HERE / "load.py"), "--url", url, "--path", path,
            "--topic", topic, "--seconds", str(seconds)]
    client = subprocess.Popen(spy(None, outs[0], seconds, fmt, load), stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    server = subprocess.Popen(spy(pid, outs[1], seconds, fmt, []), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    output, _ = client.communicate(timeout=seconds + 60)
    server.wait(timeout=60)
    return [line for line in output.splitlines() if "msg/s" in line][-1]


def package(frame: str) -> str:
    """`func (flask/app.py:12)` -> `flask`; `recv (socket.py:1)` -> `socket`."""
    where = frame.rsplit(" (", 1)[-1]
    return where.split("/", 1)[0].split(":", 1)[0].removesuffix(".py")


def shares(raw: Path, within: str = "", top: int = 14) -> str:
    """Self time by package and by function (waiting leaves marked), and the largest
    inclusive shares, over the samples whose stack holds ``within`` (all when empty)."""
    self_pkg: Counter[str] = Counter()
    self_fn: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if within not in stack:
            continue
        frames, count = stack.split(";"), int(count_text)
        leaf = frames[-1]
        waiting = leaf.split(" (", 1)[0].rsplit(".", 1)[-1] in WAITING
        self_pkg[f"(waiting: {package(leaf)})" if waiting else package(leaf)] += count
        self_fn[function(leaf)] += count
        for name in {function(frame) for frame in frames} - PLUMBING:
            inclusive[name] += count
    total = sum(self_pkg.values()) or 1
    lines = [f"samples: {total}", "self time by package:"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in self_pkg.most_common(top)]
    lines.append("self time by function:")
    lines += [f"  {n / total:6.1%}  {name}" for name, n in self_fn.most_common(top)]
    lines.append("inclusive, largest (thread and dispatch plumbing left out):")
    lines += [f"  {n / total:6.1%}  {name}" for name, n in inclusive.most_common(top + 10)]
    return "\n".join(lines)


def function(frame: str) -> str:
    """`func (pkg/mod.py:12)` -> `func (pkg/mod.py)`."""
    return frame.rsplit(":", 1)[0] + ")" if ":" in frame else frame


PLUMBING = {"Thread._bootstrap (threading.py)", "Thread._bootstrap_inner (threading.py)",
            "Thread.run (threading.py)", "_worker (concurrent/futures/thread.py)",
            "_WorkItem.run (concurrent/futures/thread.py)", "<module> (load.py)",
            "main (load.py)"}


def prepare(url: str, path: str) -> str:
    with Client(url) as client:
        topic = f"profile-{path}"
        client.create_topic(topic, exist_ok=True)
        if path == "consume":
            producer = client.producer([topic])
            for _ in range(100):
                producer.send_many(topic, [PAYLOAD] * 1000)
    return topic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=("pg", "sqlite"), default="pg")
    parser.add_argument("--paths", default="single,consume")
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        db = (stack.enter_context(pg_database()) if args.db == "pg"
              else f"sqlite:///{tmp / 'profile.db'}")
        url = stack.enter_context(broker(db, workers=1))
        pid = worker_pid(url)
        for path in args.paths.split(","):
            topic = prepare(url, path)
            svgs = tuple(args.out / f"{path}-{args.db}-{side}.svg" for side in ("client",
                                                                                 "broker"))
            rate = record_once(url, pid, path, topic, args.seconds, "flamegraph", svgs)
            raws = (tmp / "client.txt", tmp / "broker.txt")
            rate_raw = record_once(url, pid, path, topic, args.seconds, "raw", raws)
            print(f"\n## {path} on {args.db}: {rate} (flame graph run), {rate_raw} (raw run)")
            print(f"\n### client\n{shares(raws[0], within=f'{path} (load.py')}")
            print(f"\n### broker\n{shares(raws[1])}")


if __name__ == "__main__":
    main()
