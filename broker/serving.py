"""Production serving: gunicorn with `gthread` workers, the app built in each worker.

No `--preload`: each worker builds its own app after the fork, so no database connection or
LISTEN socket is ever shared between processes. A long-poll holds a thread, not a process,
and the worker timeout sits above the longest `wait_ms` (30 s).
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

from gunicorn.app.base import BaseApplication

from .metrics import worker_exited

WORKER_TIMEOUT = 60
GRACEFUL_TIMEOUT = 10


class BrokerServer(BaseApplication):
    def __init__(self, app_config: dict[str, Any], options: dict[str, Any]) -> None:
        self.app_config = app_config
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):  # noqa: ANN201 - a WSGI app
        from .app import create_app

        return create_app(self.app_config)


def _end_long_polls_on_stop(worker) -> None:  # noqa: ANN001 - a gunicorn worker
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
          on_ready: Callable[[], None], on_exit: Callable[[], None]) -> None:
    options = {
        "bind": f"{host}:{port}",
        "workers": workers,
        "worker_class": "gthread",
        "threads": threads,
        "timeout": WORKER_TIMEOUT,
        "graceful_timeout": GRACEFUL_TIMEOUT,
        "keepalive": 5,
        # No request-line cap in gunicorn (its cap answers with an HTML page): the app
        # answers a JSON 413 past its own limit instead.
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
    BrokerServer(app_config, options).run()
