"""The same broker app behind other HTTP servers: is gunicorn's gthread hop the cost?

    pip install --target /tmp/lq-server-candidates granian   # not a dependency
    python docs/profiles/servers.py --extra-path /tmp/lq-server-candidates

One PostgreSQL database; servers of the same app on it, one worker process each: ``lq broker``
(gunicorn, gthread worker), the same gunicorn with the store's NOTIFY thread off, werkzeug's
threaded server speaking HTTP/1.1 (a thread keeps its kept-alive connection: no hand-off
between threads per request), and granian (a Rust HTTP server running the WSGI app) when
importable. Times an empty request (an unknown path: the
JSON 404) and a one-message produce with ``http.client``, interleaved as in measure.py.
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import broker, free_port, pg_database
from measure import Layer, http_client_post, produce_body, report, run_layers, worker_pid


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
    """The same app with the store's NOTIFY thread off (long-polls from other processes then
    wait up to a second): what the thread costs a served worker."""
    from broker.store import get_store

    app = build_app()
    get_store(app)._bridge = None  # a private hook, for this measurement only
    return app


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


def start_others(db: str, extra_path: str | None) -> list[tuple[str, str, int, subprocess.Popen]]:
    env = dict(os.environ, LQ_DATABASE_URL=db,
               PYTHONPATH=os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"),
                                                        str(Path(__file__).parent),
                                                        extra_path])))
    started = []
    gunicorn = str(Path(sys.executable).with_name("gunicorn"))
    port = free_port()
    proc = subprocess.Popen([gunicorn, "-k", "gthread", "--threads", "32", "-w", "1", "-b",
                             f"127.0.0.1:{port}", "--log-level", "warning",
                             "servers:build_app_without_notify()"], env=env)
    started.append(("gunicorn gthread, NOTIFY thread off", f"http://127.0.0.1:{port}", proc))
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve-werkzeug", str(port)], env=env)
    started.append(("werkzeug threaded, HTTP/1.1", f"http://127.0.0.1:{port}", proc))
    if extra_path and (Path(extra_path) / "granian").exists():
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "granian", "--interface", "wsgi", "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1", "--blocking-threads", "8",
             "--log-level", "warning", "--factory", "servers:build_app"], env=env)
        started.append(("granian (Rust HTTP server, WSGI)", f"http://127.0.0.1:{port}", proc))
    result = []
    for name, url, proc in started:
        wait_until_up(url)
        pid = proc.pid if "werkzeug" in name else child_pid(proc.pid)  # the worker
        result.append((name, url, pid, proc))
    return result


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
    parser.add_argument("--extra-path", help="a directory holding granian")
    parser.add_argument("--serve-werkzeug", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_werkzeug:
        serve_werkzeug(args.serve_werkzeug)
        return
    with pg_database() as db, broker(db, workers=1) as url:
        others = start_others(db, args.extra_path)
        try:
            servers = [("gunicorn gthread (lq broker)", url, worker_pid(url))]
            servers += [(name, u, pid) for name, u, pid, _ in others]
            layers = [layer for s in servers for layer in layers_for(*s, args.calls)]
            report(run_layers(layers), "µs per call",
                   "One app, one database, several servers (http.client, TCP_NODELAY on)")
        finally:
            for *_, proc in others:
                proc.terminate()
                proc.wait(10)
    print(f"\nload average: {os.getloadavg()}")


if __name__ == "__main__":
    main()
