"""Production serving: gunicorn with `gthread` workers, the app built in each worker.

No `--preload`: each worker builds its own app after the fork, so no database connection or
LISTEN socket is ever shared between processes. A long-poll holds a thread, not a process,
and the worker timeout sits above the longest `wait_ms` (30 s).

gunicorn answers a request it cannot parse (a bad request line, a NUL or control character in
a header, an invalid header name, headers over its limits, ...) itself, before the app sees
it, with an HTML page. `JsonErrorWorker` answers those with the contract's JSON failure body
instead, keeping the status gunicorn picks.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from gunicorn import util
from gunicorn.app.base import BaseApplication
from gunicorn.http.errors import ParseException
from gunicorn.workers.gthread import ThreadWorker

from .metrics import worker_exited
from .schemas import Failure

WORKER_TIMEOUT = 60
GRACEFUL_TIMEOUT = 10
#: The `error` code per status gunicorn answers itself (as broker/app.py names its own).
ERROR_CODES = {400: "bad_request", 403: "forbidden", 414: "too_large", 417: "expectation_failed",
               431: "too_large", 500: "internal", 501: "not_implemented"}
MAX_REASON = 500  # characters of the client's input echoed back (a request line may be 1 MiB)


class BrokerServer(BaseApplication):
    def __init__(self, app_config: dict[str, Any], options: dict[str, Any]) -> None:
        self.app_config = app_config
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        from .app import create_app

        return create_app(self.app_config)


class StatusLine:
    """Stands in for the client socket while gunicorn renders its HTML error page: keeps only
    the status line (gunicorn writes it with `util.write_nonblock`: `gettimeout`, `sendall`)."""

    def __init__(self) -> None:
        self.status = 0
        self.reason = ""

    def gettimeout(self) -> float:
        return 0.0

    def sendall(self, data: bytes) -> None:
        _version, status, reason = data.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        self.status, self.reason = int(status), reason


class JsonErrorWorker(ThreadWorker):
    """The `gthread` worker, but its own error answers are the JSON failure body, not HTML."""

    def handle_error(self, req, client, addr, exc) -> None:
        """Let gunicorn log the error and pick the status, then answer JSON. Never raises."""
        seen = StatusLine()
        try:
            super().handle_error(req, seen, addr, exc)
        except Exception:
            self.log.exception("Error logging a bad request")
        try:
            util.write_nonblock(client, json_error(seen.status, seen.reason, exc))
        except Exception:  # noqa: BLE001 - as gunicorn: the client may be gone
            self.log.debug("Failed to send error message.")


def json_error(status: int, reason: str, exc: BaseException) -> bytes:
    """A complete `Connection: close` HTTP response carrying the contract's failure body."""
    if not status:  # gunicorn wrote nothing we could read: its own rule
        status = 400 if isinstance(exc, ParseException) else 500
        reason = HTTPStatus(status).phrase
    if status == 500:
        message = "internal error (a bug): see the broker's log"
    else:
        message = str(exc)[:MAX_REASON]
    body = Failure(error=ERROR_CODES.get(status, "http_error"), message=message)
    payload = body.model_dump_json().encode()
    head = (f"HTTP/1.1 {status} {reason}\r\n"
            "Connection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n")
    return head.encode("latin-1") + payload


def _end_long_polls_on_stop(worker) -> None:
    """On SIGTERM, long-polls answer at once (empty) instead of holding the stop for 30 s."""
    from .store import get_store

    store = get_store(worker.wsgi)
    previous = signal.getsignal(signal.SIGTERM)

    def stop(signum: int, frame: object) -> None:
        store.wakeups.close()
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, stop)


def serve(app_config: dict[str, Any], *, host: str, port: int, workers: int, threads: int,
          on_ready: Callable[[], None], on_exit: Callable[[], None],
          tls: tuple[str, str] | None = None) -> None:
    """Serve until stopped; with `tls` (certfile, keyfile), HTTPS only (gunicorn's own TLS)."""
    options = {
        "bind": f"{host}:{port}",
        "workers": workers,
        "worker_class": JsonErrorWorker,  # gthread, JSON errors
        "threads": threads,
        "timeout": WORKER_TIMEOUT,
        "graceful_timeout": GRACEFUL_TIMEOUT,
        "keepalive": 5,
        # No request-line cap in gunicorn (its cap would answer 414): the app answers
        # 413 too_large past its own limit instead.
        "limit_request_line": 0,
        "preload_app": False,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "warning",
        "when_ready": lambda _arbiter: on_ready(),
        "child_exit": lambda _arbiter, worker: worker_exited(worker.pid),
        "on_exit": lambda _arbiter: on_exit(),
        "post_worker_init": _end_long_polls_on_stop,
    }
    if tls:
        options.update(certfile=tls[0], keyfile=tls[1])
    BrokerServer(app_config, options).run()
