"""`lq broker`: create the schema once, then serve with gunicorn (or Flask's server with --dev)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Any

import click
from sqlalchemy.exc import ArgumentError

from .dburl import displayed, host_count, standby_warning

EXAMPLES = """\b
Examples:
  lq broker                                   # SQLite ./logqueue.db, 127.0.0.1:5000
  lq broker --port 8080 --db /var/lib/lq.db   # another SQLite file
  lq broker --db postgresql://postgres@127.0.0.1/logqueue --workers 4
  LQ_TOKEN=s3cret lq broker --host 0.0.0.0    # clients send 'Authorization: Bearer s3cret'
"""


def _duration(_ctx: click.Context, _param: click.Parameter, value: str | None) -> int | None:
    from .retention import parse_duration_ms  # see broker_command on imports here

    try:
        return None if value is None else parse_duration_ms(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _prepare_multiprocess_metrics() -> str | None:
    """Workers share metrics through files; the directory must be set before the first app
    is created (metrics.py).

    Returns the directory made here (removed at exit), or None when the caller set one.
    """
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return None
    path = tempfile.mkdtemp(prefix="lq-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path


@click.command("broker", epilog=EXAMPLES)
@click.option("--host", envvar="LQ_HOST", default="127.0.0.1", show_default=True,
              help="Address to listen on (env LQ_HOST).")
@click.option("--port", envvar="LQ_PORT", default=5000, show_default=True,
              type=click.IntRange(0, 65535),
              help="Port to listen on (env LQ_PORT).")
@click.option("--db", "db_url", envvar="LQ_DATABASE_URL", default=None,
              help="Database URL (env LQ_DATABASE_URL): postgresql://... or sqlite:///PATH, "
                   "or a file path. Default: ./logqueue.db (SQLite).")
@click.option("--workers", default=None, type=click.IntRange(1, 64),
              help="gunicorn worker processes. Default: 1 on SQLite (one writer per file), "
                   "2 on PostgreSQL.")
@click.option("--threads", default=32, show_default=True, type=click.IntRange(1, 512),
              help="Threads per worker; each long-poll holds one.")
@click.option("--token", envvar="LQ_TOKEN", default=None,
              help="Require 'Authorization: Bearer TOKEN' on every request but /healthz "
                   "(env LQ_TOKEN).")
@click.option("--retention", envvar="LQ_RETENTION", default=None, callback=_duration,
              help="Default retention for topics without their own, e.g. 7d, 12h, 30m "
                   "(env LQ_RETENTION). Default: keep everything.")
@click.option("--consumer-ttl", envvar="LQ_CONSUMER_TTL", default=None, callback=_duration,
              help="Remove unnamed consumers unused this long, e.g. 1d (env LQ_CONSUMER_TTL). "
                   "Default: 7d; 0 keeps them.")
@click.option("--prune-interval", default=5.0, show_default=True, type=click.FloatRange(0),
              help="Seconds between retention rounds (0: never prune).")
@click.option("--recheck-interval", envvar="LQ_RECHECK_INTERVAL", default=1.0,
              show_default=True, type=click.FloatRange(0.001),
              help="Seconds a long-poll waits for a wake-up before it reads the database "
                   "again (env LQ_RECHECK_INTERVAL). Wake-ups are hints; this bounds what a "
                   "lost one costs.")
@click.option("--max-message-bytes", envvar="LQ_MAX_MESSAGE_BYTES", default=1024 * 1024,
              show_default=True, type=click.IntRange(64, 16 * 1024 * 1024),
              help="Largest message accepted, in UTF-8 bytes; larger ones are refused with 413 "
                   "too_large (env LQ_MAX_MESSAGE_BYTES).")
@click.option("--dev", is_flag=True, help="Serve with Flask's threaded development server.")
def broker_command(host: str, port: int, db_url: str | None, workers: int | None, threads: int,
                   token: str | None, retention: int | None, consumer_ttl: int | None,
                   prune_interval: float, recheck_interval: float, max_message_bytes: int,
                   dev: bool) -> None:
    """Run the LogQueue broker: the HTTP queue API over SQLite or PostgreSQL."""
    # Imported here: every `lq` command loads this module, and these take half a second.
    from .app import create_app
    from .errors import Unavailable
    from .models import db
    from .serving import serve
    from .store import create_schema, default_workers, max_connections

    metrics_dir = None if dev else _prepare_multiprocess_metrics()
    config: dict[str, Any] = {"LQ_DATABASE_URL": db_url, "LQ_TOKEN": token,
                              "LQ_POOL_SIZE": threads + 2, "LQ_RETENTION_MS": retention,
                              "LQ_PRUNE_INTERVAL": prune_interval,
                              "LQ_CONSUMER_TTL_MS": consumer_ttl,
                              "LQ_RECHECK_INTERVAL": recheck_interval,
                              "LQ_MAX_MESSAGE_BYTES": max_message_bytes}
    try:
        app = create_app(config)
    except (ArgumentError, ImportError, ValueError) as exc:
        # A malformed URL, an unknown database or a missing driver: one line, no traceback.
        raise click.ClickException(f"cannot use the database URL {displayed(db_url)}: {exc}"
                                   ) from None
    url = app.config["SQLALCHEMY_DATABASE_URI"]
    with app.app_context():
        try:
            create_schema(db.engine)
        except Unavailable as exc:
            raise click.ClickException(f"cannot use the database {displayed(url)}: {exc}") from None
        if workers is None:
            workers = default_workers(db.engine)
        limit = max_connections(db.engine)
        needed = workers * (threads + 6)  # pool (threads + 2 + 3 overflow) + LISTEN
        if limit is not None and needed > limit:
            click.echo(f"lq broker: warning: {workers} workers x {threads} threads may open "
                       f"{needed} connections; the database allows {limit}", err=True)
        warning = standby_warning(db.engine, host_count(url))
        if warning:
            click.echo(f"lq broker: warning: {warning}", err=True)
        db.engine.dispose()  # no connection crosses the fork into the workers

    mode = ("Flask development server" if dev
            else f"gunicorn, {workers} worker(s) x {threads} threads")
    banner = (f"LogQueue broker listening on http://{host}:{port} "
              f"(database: {displayed(url)}; {mode}; auth: {'token' if token else 'off'})")
    if dev:
        click.echo(banner, err=True)
        app.run(host=host, port=port, threaded=True, use_reloader=False)
        return

    def on_exit() -> None:
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)

    serve(config, host=host, port=port, workers=workers, threads=threads,
          on_ready=lambda: click.echo(banner, err=True), on_exit=on_exit)


if __name__ == "__main__":
    sys.exit(broker_command())
