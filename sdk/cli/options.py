"""What every client command of `lq` shares: ``--url``/``--token``/``--cacert`` (declared once,
each with its env var), the TOPIC argument and ``--retention`` checked by :mod:`sdk.contract`,
other values checked before any request (:func:`checked`), the client they make, one-line
errors instead of tracebacks, and the aligned table their output uses.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from sdk.client import Client
from sdk.contract import DEFAULT_URL, TOPIC_RULE, is_topic_name, parse_duration_ms
from sdk.exceptions import BrokerUnavailable, Forbidden, LogQueueError, Unauthorized
from sdk.transport import parse_verify

F = TypeVar("F", bound=Callable[..., Any])

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
_CHOSEN = "lq.client_options"
_TOKEN_GIVEN = "lq.token_given"


class CliError(click.ClickException):
    """A one-line error (``Error: ...`` on stderr) with an exit code; never a traceback."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _keep_most_specific(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Keep the most specific value of a client option across `lq topics [opts] create [opts]`:
    the command line beats the environment, which beats the default; the innermost command
    wins among equals."""
    source = ctx.get_parameter_source(param.name or "") or ParameterSource.DEFAULT
    chosen = ctx.meta.setdefault(_CHOSEN, {})
    previous = chosen.get(param.name)
    if previous is None or source.value <= previous[0].value:
        chosen[param.name] = (source, value)
    return value


def client_options(f: F) -> F:
    """Add ``--url`` / ``--token`` / ``--cacert`` to a command (declared once, used by every
    client command).

    They sit on each command rather than on the `lq` group, so ``lq broker`` keeps its own."""
    f = click.option("--cacert", envvar="LQ_CACERT", default=None, expose_value=False,
                     callback=_keep_most_specific, is_eager=True, metavar="PATH",
                     help="For https:// urls: the CA file that signs the broker's certificate "
                          "('false': do not check). [env: LQ_CACERT]")(f)
    f = click.option("--token", envvar="LQ_TOKEN", default=None, expose_value=False,
                     callback=_keep_most_specific, is_eager=True,
                     help="The broker's token, when it requires one. [env: LQ_TOKEN]")(f)
    f = click.option("--url", envvar="LQ_URL", default=DEFAULT_URL, show_default=True,
                     expose_value=False, callback=_keep_most_specific, is_eager=True,
                     help="Broker url(s), comma-separated for failover. [env: LQ_URL]")(f)
    return f


def client_command(f: F) -> F:
    """What every client command's callback wears, in this order: the client options, the
    click context (first argument, for :func:`make_client`) and :func:`handle_errors`."""
    return client_options(click.pass_context(handle_errors(f)))


def _chosen(ctx: click.Context, name: str, default: str | None) -> str | None:
    return ctx.meta.get(_CHOSEN, {}).get(name, (None, default))[1] or default


def make_client(ctx: click.Context | None = None) -> Client:
    """A :class:`Client` from the chosen ``--url`` / ``--token``; closed with the context."""
    ctx = ctx or click.get_current_context()
    url = _chosen(ctx, "url", DEFAULT_URL)
    token = _chosen(ctx, "token", None)
    cacert = _chosen(ctx, "cacert", None)
    try:
        verify = parse_verify(cacert)
    except ValueError as exc:
        raise CliError(f"bad --cacert: {exc}", 2) from None
    try:
        # Few retries: a person is waiting, and "broker down" should say so within a second.
        client = Client(url, token=token, verify=verify, retries=2, backoff=0.1,
                        backoff_max=0.5)
    except ValueError as exc:
        raise CliError(f"bad --url {url!r}: {exc}", 2) from None
    ctx.call_on_close(client.close)
    ctx.meta[_TOKEN_GIVEN] = bool(token)
    return client


def _explain(exc: LogQueueError, url: str, token_given: bool) -> str:
    if isinstance(exc, Unauthorized):
        if token_given:
            return f"the broker at {url} refused the token (check --token / LQ_TOKEN)"
        return f"the broker at {url} requires a token: pass --token or set LQ_TOKEN"
    if isinstance(exc, Forbidden):
        return f"the token may not do this: {exc.message}"
    if isinstance(exc, BrokerUnavailable):
        if exc.status is None:
            cause = exc.__cause__
            if "SSL" in type(cause).__name__:
                return (f"TLS with the broker at {url} failed ({cause}); for a broker's own "
                        "CA pass --cacert or set LQ_CACERT")
            reason = "timed out" if "Timeout" in type(cause).__name__ else "connection failed"
            return f"cannot reach the broker at {url} ({reason}); is `lq broker` running?"
        return f"the broker at {url} is unavailable (HTTP {exc.status}): {exc.message}"
    return exc.message


def handle_errors(f: F) -> F:
    """Turn SDK errors into one ``Error:`` line and exit 1, and a closed stdout (``| head``)
    into a quiet exit."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        try:
            return f(*args, **kwargs)
        except LogQueueError as exc:
            url = _chosen(ctx, "url", DEFAULT_URL) or DEFAULT_URL
            raise CliError(_explain(exc, url, bool(ctx.meta.get(_TOKEN_GIVEN)))) from None
        except BrokenPipeError:
            _quiet_stdout()
            ctx.exit(0)

    return wrapper  # type: ignore[return-value]


def _quiet_stdout() -> None:
    """After EPIPE, point stdout at /dev/null so the interpreter's final flush is silent."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def topic_argument(f: F) -> F:
    """The TOPIC argument, refused (exit 2) when the broker would refuse the name."""
    return click.argument("topic", metavar="TOPIC", callback=_check_topic)(f)


def _check_topic(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    if not is_topic_name(value):
        raise CliError(f"invalid topic name {value!r}: {TOPIC_RULE}", 2)
    return value


def checked(parse: Callable[[str], object], *, convert: bool = False) -> Callable[..., Any]:
    """A click callback that refuses a bad value with one error line (``--NAME: why``, exit
    2) before any request is made; it passes the value on as given, or with ``convert`` as
    ``parse`` read it."""

    def callback(_ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
        if value is None:
            return None
        try:
            parsed = parse(value)
        except ValueError as exc:
            raise CliError(f"--{param.name}: {exc}", 2) from None
        return parsed if convert else value

    return callback


def retention_option(help_text: str) -> Callable[[F], F]:
    """``--retention DURATION``, read by :func:`sdk.contract.parse_duration_ms` into ms."""
    return click.option("--retention", metavar="DURATION",
                        callback=checked(parse_duration_ms, convert=True), help=help_text)


def on_sigterm_raise_interrupt() -> None:
    """SIGTERM ends a long-running command like Ctrl-C does, so `finally` blocks run."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.default_int_handler)


def table(rows: list[tuple[str, ...]], right: tuple[int, ...] = ()) -> list[str]:
    """Rows as aligned columns (the first row is the header); ``right`` columns align right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.rjust(w) if i in right else cell.ljust(w)
                      for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
            for row in rows]
