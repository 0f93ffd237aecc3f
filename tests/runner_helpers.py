"""Helpers for the runner tests: `lq consume` as a real subprocess, a real HTTP endpoint,
records in the handler's format. (The fixtures built on them are in conftest.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from support import LQ, clean_env, wait_until

from sdk import Client


def new_topic(prefix: str = "rt") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def make_record(i: int, **overrides: Any) -> dict[str, Any]:
    """A record shaped like the handler's (ARCHITECTURE.md, "Record")."""
    record: dict[str, Any] = {
        "time": f"2024-05-01T12:{i // 60 % 60:02d}:{i % 60:02d}.{i % 10**6:06d}Z",
        "level": ["DEBUG", "INFO", "WARNING", "ERROR"][i % 4],
        "levelno": [10, 20, 30, 40][i % 4],
        "logger": ["app", "app.db", "app.web", "other"][i % 4],
        "message": f"message {i} héllo ✓ \"quoted\" \\ back",
        "module": "orders", "function": "create", "line": 40 + i % 7,
        "pathname": "/srv/app/orders.py", "process": 4242, "process_name": "MainProcess",
        "thread": 139, "thread_name": "MainThread", "host": "web-1",
        "extra": {"order_id": i, "tags": ["a", "b"], "nested": {"x": 1.5}},
        "service": "shop",
    }
    if i % 10 == 3:
        record["exception"] = "Traceback (most recent call last):\n  File ...\nValueError: bad"
    record.update(overrides)
    return record


def produce(url: str, topic: str, messages: list[str], chunk: int = 1000) -> None:
    with Client(url) as client:
        producer = client.producer()
        for start in range(0, len(messages), chunk):
            producer.send_many(topic, messages[start:start + chunk])


def produce_records(url: str, topic: str, records: list[dict[str, Any]]) -> None:
    produce(url, topic, [json.dumps(r, ensure_ascii=False) for r in records])


def position(url: str, topic: str, name: str) -> int:
    """The position of the named consumer on ``topic`` (registers it if new): what it has
    finished (with leases, the first offset of its oldest outstanding lease)."""
    with Client(url) as client:
        client.consumer(name=name).register(topic)
        return next(c.position for c in client.describe(topic).consumers if c.name == name)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.endswith(b"\n"))


class RunnerProcess:
    """``lq consume ARGS`` as a subprocess (its own session), output captured in files."""

    def __init__(self, args: list[str], workdir: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.workdir = workdir
        self.env = clean_env(**(env or {}))
        n = len(list(workdir.glob("runner*.err")))
        self.out_path = workdir / f"runner{n}.out"
        self.err_path = workdir / f"runner{n}.err"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, ready: bool = True) -> RunnerProcess:
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen([LQ, "consume", *self.args], cwd=self.workdir,
                                         env=self.env, stdout=out, stderr=err,
                                         start_new_session=True)
        if ready:
            wait_until(lambda: self._check_alive() and "lq consume: ready" in self.stderr,
                       timeout=30, message=f"runner ready: {self.stderr}")
        return self

    def _check_alive(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"runner exited {self.proc.returncode}: {self.stderr}")
        return True

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace") if self.err_path.exists() else ""

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace") if self.out_path.exists() else ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill9(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill9()


def run_once(args: list[str], workdir: Path, timeout: float = 60,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``lq consume ARGS`` to completion (for --help, --dry-run, --until-empty, errors)."""
    return subprocess.run([LQ, "consume", *args], cwd=workdir, env=clean_env(**(env or {})),
                          capture_output=True, text=True, timeout=timeout)


def start_runner(runners: list[RunnerProcess], args: list[str], workdir: Path,
                 env: dict[str, str] | None = None, ready: bool = True) -> RunnerProcess:
    runner = RunnerProcess(args, workdir, env)
    runners.append(runner)
    return runner.start(ready=ready)


class Endpoint:
    """A real HTTP server in a thread that stores every POSTed JSON batch.

    ``mode`` (may be changed while it runs): ``"ok"`` (200), ``"poison"`` (400 for a batch
    holding a record whose message contains "poison"), ``"fail"`` (500 always),
    ``"unavailable"`` (503 always), ``"hang"`` (answers 503 only once :attr:`release` is set,
    so the request stays in flight). ``refused`` counts the answers that were not a 200.
    """

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.batches: list[list[dict[str, Any]]] = []
        self.headers: list[dict[str, str]] = []
        self.requests = 0
        self.refused = 0
        self.release = threading.Event()
        self._lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                batch = json.loads(body)
                with endpoint._lock:
                    endpoint.requests += 1
                    mode = endpoint.mode
                if mode == "hang":
                    endpoint.release.wait(120)
                with endpoint._lock:
                    if mode == "fail":
                        status = 500
                    elif mode in ("unavailable", "hang"):
                        status = 503
                    elif mode == "poison" and any(
                            "poison" in str(r.get("message")) for r in batch):
                        status = 400
                    else:
                        status = 200
                        endpoint.batches.append(batch)
                        endpoint.headers.append(dict(self.headers))
                    if status != 200:
                        endpoint.refused += 1
                self.send_response(status)
                payload = b'{"ok": true}' if status == 200 else b'{"error": "refused"}'
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ingest"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def records(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r for batch in self.batches for r in batch]

    def __enter__(self) -> Endpoint:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
