"""Retention runs in the background: bounded pruning rounds, one broker at a time.

The thread starts with the first request a process serves (so after gunicorn forks) and
never holds a lock that produce needs for longer than one bounded batch.
"""

from __future__ import annotations

import logging
import re
import threading
import time

from flask import Flask

from .store import get_store

log = logging.getLogger("broker.retention")

UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def parse_duration_ms(text: str) -> int:
    """'7d', '12h', '30m', '45s', '500ms', or 0/'none' (no limit).

    Kept in step with ``sdk.contract.parse_duration_ms`` (the broker may not import the SDK)
    by the shared cases in ``tests/contract_cases.py``: a bare number other than 0 is refused.
    """
    cleaned = str(text).strip().lower()
    if cleaned in ("none", "forever", "off"):
        return 0
    match = re.fullmatch(r"(\d+)\s*(ms|s|m|h|d|w)?", cleaned)
    if not match:
        raise ValueError(f"not a duration: {text!r} (try 7d, 12h, 30m, 45s, 500ms or none)")
    number, unit = match.groups()
    if unit is None and int(number) != 0:
        raise ValueError(f"give a unit: {number}s, {number}m, {number}h or {number}d?")
    return int(number) * UNITS_MS[unit or "ms"]


def init_app(app: Flask) -> None:
    interval = float(app.config["LQ_PRUNE_INTERVAL"])
    if interval <= 0:
        return
    started = threading.Event()

    @app.before_request
    def start_pruner() -> None:
        if started.is_set():
            return
        started.set()
        threading.Thread(target=_run, args=(app, interval), name="lq-retention",
                         daemon=True).start()


def _run(app: Flask, interval: float) -> None:
    pruner = get_store(app).pruner
    while True:
        try:
            while pruner.prune():
                pass  # more to prune: another bounded round at once
        except Exception as exc:  # noqa: BLE001 - retention must never stop the broker
            log.warning("retention round failed: %s", exc)
        time.sleep(interval)  # a schedule, not synchronization
