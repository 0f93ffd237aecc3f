"""`lq broker`: create the schema once, then serve with gunicorn (or Flask's server with --dev)."""

from __future__ import annotations

import errno
import shutil
import signal
import socket
import sys
from typing import TYPE_CHECKING, Any

import click
from sqlalchemy.exc import ArgumentError

from .dburl import displayed, host_count

if TYPE_CHECKING:
    from flask import Flask

EXAMPLES = """\b
Examples:
  lq broker                                   # SQLite ./logqueue.db, 127.0.0.1:5000
  lq broker --port 8080 --db /var/lib/lq.db   # another SQLite file
  lq broker --db postgresql://postgres@127.0.0.1/logqueue --workers 4
  LQ_TOKEN=s3cret lq broker --host 0.0.0.0    # clients send 'Authorization: Bearer s3cret'
  lq broker --certfile cert.pem --keyfile key.pem   # HTTPS: clients pass --cacert
"""
DEFAULT_THREADS = 128  # long-polls may hold three quarters (serving.py); the rest serve


#: The banner's auth, by whether LQ_TOKEN is set (stored tokens turn auth on when there are any).
AUTH_MODES = {True: "LQ_TOKEN + stored tokens", False: "stored tokens, if any"}


def _duration(_ctx: click.Context, _param: click.Parameter, value: str | None) -> int | None:
    from .retention import parse_duration_ms  # see broker_command on imports here

    try:
        return None if value is None else parse_duration_ms(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _topic(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    import re

    from .schemas import TOPIC_PATTERN

    if value is not None and not re.fullmatch(TOPIC_PATTERN, value):
        raise click.BadParameter(f"{value!r} is not a topic name ({TOPIC_PATTERN})")
    return value


def _check_address(host: str, port: int) -> None:
    """One line, exit 1, when the address cannot be listened on (gunicorn would retry for
    five seconds, logging each try). Bound as gunicorn binds: with SO_REUSEADDR."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        reason = ("the address is already in use (another broker?)"
                  if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc))
        raise click.ClickException(f"cannot listen on {host}:{port}: {reason}") from None


def _prepare_database(app: Flask, workers: int | None, threads: int, pool: int) -> int:
    """Create the schema once and warn about the connection limit and a standby; the number
    of workers to start."""
    from .errors import Unavailable
    from .models import db
    from .store import create_schema, default_workers, max_connections
    from .store.replication import standby_warning

    url = app.config["SQLALCHEMY_DATABASE_URI"]
    with app.app_context():
        try:
            create_schema(db.engine)
        except Unavailable as exc:
            raise click.ClickException(f"cannot use the database {displayed(url)}: {exc}") from None
        if workers is None:
            workers = default_workers(db.engine)
        limit = max_connections(db.engine)
        needed = workers * (pool + 4)  # pool, 3 overflow, LISTEN
        if limit is not None and needed > limit:
            click.echo(f"lq broker: warning: {workers} workers x {threads} threads may open "
                       f"{needed} connections; the database allows {limit}", err=True)
        warning = standby_warning(db.engine, host_count(url))
        if warning:
            click.echo(f"lq broker: warning: {warning}", err=True)
        db.engine.dispose()  # no connection crosses the fork into the workers
    return workers


def _serve_dev(app: Flask, host: str, port: int, tls: tuple[str, str] | None) -> None:
    """Flask's threaded server until Ctrl-C or SIGTERM, then the same clean stop."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        app.run(host=host, port=port, threaded=True, use_reloader=False, ssl_context=tls)
    finally:
        _close_database(app)


def _close_database(app: Flask) -> None:
    """A clean stop's last step, once no worker runs: close the connections and, on SQLite,
    checkpoint, so the database file alone holds every message (no -wal file needed)."""
    from .errors import Unavailable
    from .models import db
    from .store.dialect import dialect_for

    with app.app_context():
        try:
            complete = dialect_for(db.engine).checkpoint(db.engine)
        except Unavailable as exc:
            complete, reason = False, str(exc)
        else:
            reason = "a reader held the write-ahead log"
    if not complete:
        click.echo(f"lq broker: warning: the database was not checkpointed: {reason}", err=True)


def _exit_on_sigterm(_signum: int, _frame: object) -> None:
    raise SystemExit(0)


def _tls(certfile: str | None, keyfile: str | None) -> tuple[str, str] | None:
    """(certfile, keyfile) to serve HTTPS; None for plain HTTP."""
    if bool(certfile) != bool(keyfile):
        raise click.UsageError("--certfile and --keyfile go together (HTTPS needs both)")
    return (certfile, keyfile) if certfile and keyfile else None


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
@click.option("--threads", default=DEFAULT_THREADS, show_default=True,
              type=click.IntRange(1, 512),
              help="Threads per worker. Long-polls hold at most three quarters of them; "
                   "one past that answers at once, empty.")
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
@click.option("--otlp-topic", envvar="LQ_OTLP_TOPIC", default=None, callback=_topic,
              help="Put every OpenTelemetry log record sent to /v1/logs in this topic (env "
                   "LQ_OTLP_TOPIC). Default: the topic named by the record's service.name.")
@click.option("--certfile", envvar="LQ_CERTFILE", default=None,
              type=click.Path(exists=True, dir_okay=False),
              help="Serve HTTPS with this PEM certificate (chain); needs --keyfile "
                   "(env LQ_CERTFILE).")
@click.option("--keyfile", envvar="LQ_KEYFILE", default=None,
              type=click.Path(exists=True, dir_okay=False),
              help="The certificate's PEM private key (env LQ_KEYFILE).")
@click.option("--dev", is_flag=True, help="Serve with Flask's threaded development server.")
def broker_command(host: str, port: int, db_url: str | None, workers: int | None, threads: int,
                   token: str | None, retention: int | None, consumer_ttl: int | None,
                   prune_interval: float, recheck_interval: float, max_message_bytes: int,
                   otlp_topic: str | None, certfile: str | None, keyfile: str | None,
                   dev: bool) -> None:
    """Run the LogQueue broker: the HTTP queue API over SQLite or PostgreSQL."""
    tls = _tls(certfile, keyfile)
    # Imported here: every `lq` command loads this module, and these take half a second.
    from .app import create_app
    from .metrics import make_multiprocess_dir
    from .serving import long_poll_limit, serve

    _check_address(host, port)
    metrics_dir = None if dev else make_multiprocess_dir()
    # A waiting long-poll holds no connection: the pool is sized for the other threads.
    pool = threads - long_poll_limit(threads) + 2
    config: dict[str, Any] = {"LQ_DATABASE_URL": db_url, "LQ_TOKEN": token,
                              "LQ_POOL_SIZE": pool, "LQ_RETENTION_MS": retention,
                              "LQ_PRUNE_INTERVAL": prune_interval,
                              "LQ_CONSUMER_TTL_MS": consumer_ttl,
                              "LQ_RECHECK_INTERVAL": recheck_interval,
                              "LQ_MAX_MESSAGE_BYTES": max_message_bytes,
                              "LQ_OTLP_TOPIC": otlp_topic}
    try:
        app = create_app(config)
    except (ArgumentError, ImportError, ValueError) as exc:
        # A malformed URL, an unknown database or a missing driver: one line, no traceback.
        raise click.ClickException(f"cannot use the database URL {displayed(db_url)}: {exc}"
                                   ) from None
    url = app.config["SQLALCHEMY_DATABASE_URI"]
    workers = _prepare_database(app, workers, threads, pool)

    mode = ("Flask development server" if dev
            else f"gunicorn, {workers} worker(s) x {threads} threads")
    banner = (f"LogQueue broker listening on {'https' if tls else 'http'}://{host}:{port} "
              f"(database: {displayed(url)}; {mode}; auth: {AUTH_MODES[bool(token)]})")
    if dev:
        click.echo(banner, err=True)
        _serve_dev(app, host, port, tls)
        return

    def on_exit() -> None:
        _close_database(app)
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)

    serve(config, host=host, port=port, workers=workers, threads=threads,
          on_ready=lambda: click.echo(banner, err=True), on_exit=on_exit, tls=tls)


if __name__ == "__main__":
    sys.exit(broker_command())
