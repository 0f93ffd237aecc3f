"""The application factory, in Flask's order: defaults, environment, overrides, store, API.

Nothing here opens a connection, a socket or a thread: those open lazily in the process that
serves (after gunicorn forks).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import RequestRedirect

from . import (
    api,  # noqa: F401 - its views register on the blueprint
    auth,
    dburl,
    metrics,
    otlp,
    retention,
    store,
)
from .endpoints import bp, failure
from .errors import BrokerError, TooLarge
from .web import is_public, web

log = logging.getLogger("broker")

DEFAULTS: dict[str, Any] = {
    "LQ_DATABASE_URL": None,  # None: ./logqueue.db in the working directory
    "LQ_TOKEN": None,
    "LQ_MAX_MESSAGE_BYTES": 1024 * 1024,
    "LQ_MAX_BATCH": 10_000,
    "LQ_POOL_SIZE": 10,
    "LQ_RETENTION_MS": None,  # broker-wide default for topics without their own
    "LQ_CONSUMER_TTL_MS": None,  # expire unnamed consumers idle this long (None: 7d, 0: never)
    "LQ_PRUNE_INTERVAL": 5.0,  # seconds between retention rounds; 0 turns pruning off
    # The longest a long-poll waits for a wake-up before it reads the database again.
    "LQ_RECHECK_INTERVAL": 1.0,
    "MAX_CONTENT_LENGTH": 16 * 1024 * 1024,
}
ENVIRONMENT = ("LQ_DATABASE_URL", "LQ_TOKEN", "LQ_RECHECK_INTERVAL")
HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
              405: "method_not_allowed", 413: "too_large"}


def database_url(url: str | None) -> str:
    """An absolute SQLAlchemy URL: none is ./logqueue.db, a bare path is a SQLite file, and
    libpq's multi-host form becomes SQLAlchemy's."""
    if not url:
        return f"sqlite:///{Path.cwd() / 'logqueue.db'}"
    url = dburl.normalize(url)
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):  # psycopg2 is the driver we ship
            return "postgresql+psycopg2://" + url[len(prefix):]
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        relative = url[len("sqlite:///"):]
        if relative and relative != ":memory:":
            return f"sqlite:///{Path(relative).absolute()}"
        return url
    if "://" not in url:
        return f"sqlite:///{Path(url).absolute()}"
    return url


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    app = Flask("broker", static_folder=None)  # the web blueprint serves /static
    app.config.from_mapping(DEFAULTS)
    for key in ENVIRONMENT:
        if os.environ.get(key):
            app.config[key] = os.environ[key]
    if config:
        app.config.update({k: v for k, v in config.items() if v is not None})
    url = database_url(app.config["LQ_DATABASE_URL"])
    app.config["SQLALCHEMY_DATABASE_URI"] = url
    pool = int(app.config["LQ_POOL_SIZE"])
    options: dict[str, Any] = {"pool_size": pool, "max_overflow": 3, "pool_timeout": 10}
    connect_args = store.connect_args(url)
    if connect_args:
        options["connect_args"] = connect_args
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = options
    store.init_app(app)
    retention.init_app(app)
    app.register_blueprint(bp)
    app.register_blueprint(web)
    otlp.init_app(app)
    metrics.init_app(app)
    auth.init_app(app, is_public)
    _register_limits(app)
    _register_redirects(app)
    _register_error_handlers(app)
    return app


def _register_limits(app: Flask) -> None:
    limit = app.config["MAX_CONTENT_LENGTH"]

    @app.before_request
    def limit_query_string() -> None:
        if len(request.query_string) > limit:
            raise TooLarge(f"the query string is over the limit of {limit} bytes")


def _register_redirects(app: Flask) -> None:
    """A path the router would redirect (`/topics//`) answers a JSON 308, once the token is
    checked: Flask sends its routing redirects as HTML pages, past every error handler."""

    @app.before_request
    def json_redirect() -> Response | None:
        redirect = request.routing_exception
        if not isinstance(redirect, RequestRedirect):
            return None
        response = failure(308, "moved", f"this resource is at {redirect.new_url}")
        response.headers["Location"] = redirect.new_url
        return response


def _register_error_handlers(app: Flask) -> None:
    @app.errorhandler(BrokerError)
    def broker_error(exc: BrokerError) -> Response:
        return failure(exc.status, exc.code, exc.message)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        message = exc.description or exc.name
        if status == 413:
            limit = app.config["MAX_CONTENT_LENGTH"]
            message = f"the request body is over the limit of {limit} bytes"
        response = failure(status, HTTP_CODES.get(status, "http_error"), message)
        if status == 405 and hasattr(exc, "valid_methods") and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        if isinstance(exc, HTTPException):
            return http_error(exc)
        log.exception("unhandled error on %s %s", request.method, request.path)
        return failure(500, "internal", "internal error (a bug): see the broker's log")
