"""The same broker app behind other HTTP servers and gunicorn settings: what a request costs.

    python docs/profiles/servers.py                        # gunicorn settings
    python docs/profiles/servers.py --others               # + werkzeug, and granian if importable
    pip install --target /tmp/lq-server-candidates granian   # not a dependency
    python docs/profiles/servers.py --others --extra-path /tmp/lq-server-candidates
    python docs/profiles/servers.py --before /work/main     # + `lq broker` of another checkout

One PostgreSQL database; servers of the same app on it, one worker process each: ``lq broker``
(gunicorn, gthread worker, as shipped), then the same gunicorn with one setting changed
(``TUNINGS``: the heartbeat file back in /tmp, fewer threads, ...), and with ``--others``
werkzeug's threaded server speaking HTTP/1.1 (a thread keeps its kept-alive connection: no
hand-off between threads per request) and granian (a Rust HTTP server running the WSGI app)
when importable; with ``--before DIR``, also ``lq broker`` running the code of another
checkout (the same database: a before/after in one run). Times an empty request (an unknown
path: the JSON 404) and a one-message produce with ``http.client``, interleaved as in
measure.py, with the worker's CPU per call.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import broker, pg_database
from measure import (
    Layer,
    http_client_post,
    produce_body,
    report,
    run_layers,
    without_notify,
    worker_pid,
)
from support import BrokerProcess, free_port

THREADS = 32  # as bench/harness.py starts `lq broker`
#: gunicorn settings tried one at a time over the shipped ones (broker/serving.py).
TUNINGS: dict[str, dict[str, object]] = {
    "heartbeat file in /tmp (gunicorn's default worker_tmp_dir)": {"worker_tmp_dir": None},
    "8 threads": {"threads": 8},
    "keepalive 60 s": {"keepalive": 60},
}


def build_app():
    """The app as ``lq broker`` builds it (the database from LQ_DATABASE_URL), schema made."""
    from broker.app import create_app
    from broker.models import db
    from broker.store import create_schema

    app = create_app({"LQ_PRUNE_INTERVAL": 0})
    with app.app_context():
        create_schema(db.engine)
    return app


def build_app_without_notify():
    """The same app with the store's NOTIFY to other processes off (their long-polls then
    wait up to a second): what the NOTIFY costs a served worker."""
    from broker.store import get_store

    app = build_app()
    without_notify(get_store(app))
    return app


def serve_gunicorn(port: int, tuning: dict[str, object]) -> None:
    """`lq broker`'s gunicorn (broker/serving.py) with `tuning` over its settings, on the
    database (and schema) of the `lq broker` started first."""
    from broker.metrics import make_multiprocess_dir
    from broker.serving import long_poll_limit, serve

    threads = int(tuning.get("threads", THREADS))
    config = {"LQ_DATABASE_URL": os.environ["LQ_DATABASE_URL"], "LQ_PRUNE_INTERVAL": 0,
              "LQ_POOL_SIZE": threads - long_poll_limit(threads) + 2}
    metrics_dir = make_multiprocess_dir()  # as `lq broker` counts its metrics
    serve(config, host="127.0.0.1", port=port, workers=1, threads=threads,
          on_ready=lambda: None,
          on_exit=lambda: metrics_dir and shutil.rmtree(metrics_dir, ignore_errors=True),
          tuning={k: v for k, v in tuning.items() if k != "threads"})


def serve_werkzeug(port: int) -> None:
    from werkzeug.serving import WSGIRequestHandler, make_server

    class Handler(WSGIRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the connection stays with its thread

        def log_request(self, *args: object, **kwargs: object) -> None:
            pass

    make_server("127.0.0.1", port, build_app(), threaded=True,
                request_handler=Handler).serve_forever()


def wait_until_up(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)  # polling for readiness, bounded by the deadline
    raise SystemExit(f"no server answered at {url}")


def child_pid(pid: int) -> int:
    tasks = Path(f"/proc/{pid}/task").iterdir()
    return next(int(c) for t in tasks for c in (t / "children").read_text().split())


def start(db: str, extra_path: str | None, others: bool
          ) -> list[tuple[str, str, int, subprocess.Popen]]:
    env = dict(os.environ, LQ_DATABASE_URL=db,
               PYTHONPATH=os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"),
                                                        str(Path(__file__).parent),
                                                        extra_path])))
    started = []
    for name, tuning in TUNINGS.items():
        port = free_port()
        proc = subprocess.Popen([sys.executable, __file__, "--serve-gunicorn", str(port),
                                 json.dumps(tuning)], env=env)
        started.append((f"gunicorn, {name}", f"http://127.0.0.1:{port}", proc, True))
    if others:
        started += others_started(env, extra_path)
    result = []
    for name, url, proc, forks in started:
        wait_until_up(url)
        result.append((name, url, child_pid(proc.pid) if forks else proc.pid, proc))
    return result


def others_started(env: dict[str, str], extra_path: str | None) -> list[tuple]:
    """The NOTIFY-off gunicorn, werkzeug, and granian when importable."""
    gunicorn = str(Path(sys.executable).with_name("gunicorn"))
    port = free_port()
    started = [("gunicorn gthread, NOTIFY off", f"http://127.0.0.1:{port}", subprocess.Popen(
        [gunicorn, "-k", "gthread", "--threads", str(THREADS), "-w", "1", "-b",
         f"127.0.0.1:{port}", "--log-level", "warning", "servers:build_app_without_notify()"],
        env=env), True)]
    port = free_port()
    started.append(("werkzeug threaded, HTTP/1.1", f"http://127.0.0.1:{port}", subprocess.Popen(
        [sys.executable, __file__, "--serve-werkzeug", str(port)], env=env), False))
    if extra_path and (Path(extra_path) / "granian").exists():
        port = free_port()
        started.append(("granian (Rust HTTP server, WSGI)", f"http://127.0.0.1:{port}",
                        subprocess.Popen(
                            [sys.executable, "-m", "granian", "--interface", "wsgi", "--host",
                             "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--blocking-threads", "8", "--log-level", "warning", "--factory",
                             "servers:build_app"], env=env), True))
    return started


def layers_for(name: str, url: str, pid: int, calls: int) -> list[Layer]:
    session = requests.Session()
    topic = f"servers-{time.time_ns()}"
    session.post(url + "/topics", json={"topic_name": topic})
    producer = session.post(url + "/producer/register", json={"topic": topic}).json()[
        "producer_id"]
    seqs = itertools.count(time.time_ns() // 1000)
    get, post = http_client_post(url, True, "/bench-empty"), http_client_post(url, True)
    return [Layer(f"{name}: GET an unknown path", lambda: get(None), calls, pid),
            Layer(f"{name}: POST produce", lambda: post(produce_body(producer, seqs, topic)),
                  calls, pid)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--others", action="store_true",
                        help="also werkzeug, gunicorn without NOTIFY, and granian if found")
    parser.add_argument("--extra-path", help="a directory holding granian")
    parser.add_argument("--before", help="a checkout whose `lq broker` is measured too")
    parser.add_argument("--serve-werkzeug", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve-gunicorn", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_werkzeug:
        serve_werkzeug(args.serve_werkzeug)
        return
    if args.serve_gunicorn:
        serve_gunicorn(int(args.serve_gunicorn[0]), json.loads(args.serve_gunicorn[1]))
        return
    print(f"load average before: {os.getloadavg()}")
    with pg_database() as db, broker(db, workers=1, threads=THREADS) as url:
        started = start(db, args.extra_path, args.others)
        before = None
        if args.before:
            before = BrokerProcess(db, args=["--workers", "1", "--threads", str(THREADS)],
                                   env={"PYTHONPATH": args.before}).start()
        try:
            servers = [("gunicorn gthread (lq broker, as shipped)", url, worker_pid(url))]
            if before is not None:
                servers.insert(0, (f"lq broker from {args.before}", before.url,
                                   worker_pid(before.url)))
            servers += [(name, u, pid) for name, u, pid, _ in started]
            layers = [layer for s in servers for layer in layers_for(*s, args.calls)]
            report(run_layers(layers), "µs per call",
                   "One app, one database, several servers (http.client, TCP_NODELAY on)")
        finally:
            if before is not None:
                before.stop()
            for *_, proc in started:
                proc.terminate()
                proc.wait(10)
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
