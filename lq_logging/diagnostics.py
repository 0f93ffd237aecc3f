"""The handler's own complaints: a private, non-propagating, rate-limited stderr logger.

Never routed through the application's handlers (a failing send must not queue another
record for the same dead broker), and never more than a few lines a minute.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time


class RateLimit(logging.Filter):
    """At most ``burst`` messages per ``period`` seconds; then one line saying how many
    were suppressed."""

    def __init__(self, burst: int = 5, period: float = 60.0) -> None:
        super().__init__()
        self.burst, self.period = burst, period
        self._window = 0.0
        self._count = 0
        self._suppressed = 0
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        with self._lock:
            now = time.monotonic()
            if now - self._window > self.period:
                if self._suppressed:
                    record.msg = f"{record.msg} ({self._suppressed} similar messages suppressed)"
                self._window, self._count, self._suppressed = now, 0, 0
            self._count += 1
            if self._count > self.burst:
                self._suppressed += 1
                return False
            return True

    def after_fork(self) -> None:
        self._lock = threading.Lock()


def _make_diagnostics() -> logging.Logger:
    # Not created through logging.getLogger: dictConfig cannot disable it, logging's cache
    # clearing never touches it (so it never takes logging's module lock once warmed), and
    # no application handler is ever attached to it.
    logger = logging.Logger("lq_logging.diagnostics", logging.INFO)
    logger.propagate = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s lq_logging %(levelname)s: %(message)s"))
    handler.addFilter(RateLimit())
    logger.addHandler(handler)
    for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR):
        logger.isEnabledFor(level)
    return logger


diagnostics = _make_diagnostics()


def _after_fork_in_child() -> None:
    for handler in diagnostics.handlers:
        for flt in handler.filters:
            if isinstance(flt, RateLimit):
                flt.after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)

__all__ = ["RateLimit", "diagnostics"]
