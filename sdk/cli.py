"""The `lq` command: one click group; each package adds its subcommands via `lq.commands`.

Plugin commands load lazily from entry points, like Flask's ``FlaskGroup``, so the client side
never imports the broker and a plugin that fails to import costs one error line, not the command.
"""

from __future__ import annotations

import functools
import json
import os
import queue
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from sdk.client import Client, Consumer, Message, Producer, TopicDescription
from sdk.exceptions import BrokerUnavailable, LogQueueError, TopicExists, Unauthorized
from sdk.transport import DEFAULT_URL

EPILOG = """\b
Examples:
  lq broker                         # SQLite ./logqueue.db on 127.0.0.1:5000
  lq broker --db postgresql://postgres@127.0.0.1/logqueue --workers 4
  lq topics create app --retention 7d
  seq 1 1000 | lq produce app       # one message per line
  lq tail app -f                    # the last 10 messages, then follow (Ctrl-C stops)
  lq stats --watch

\b
Client commands take --url (env LQ_URL, default http://127.0.0.1:5000) and --token
(env LQ_TOKEN). `lq CMD --help` explains each command.
"""


class LqGroup(click.Group):
    """A click group that adds the commands registered under the `lq.commands` entry points."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._plugins_loaded = False

    def _load_plugin_commands(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in entry_points(group="lq.commands"):
            if ep.name in self.commands:
                continue
            try:
                self.add_command(ep.load(), ep.name)
            except Exception as exc:  # noqa: BLE001 - one broken plugin must not break `lq`
                click.echo(f"lq: could not load the '{ep.name}' command: {exc}", err=True)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self._load_plugin_commands()
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load_plugin_commands()
        return super().list_commands(ctx)


@click.group(cls=LqGroup, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="logqueue", prog_name="lq")
def main() -> None:
    """LogQueue: a persistent logging queue for Python applications."""



# --- shared client options ---------------------------------------------------------------------
F = TypeVar("F", bound=Callable[..., Any])

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
TOPIC_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}")
BATCH_BYTES = 4 * 1024 * 1024  # well under the broker's 16 MiB body limit, even JSON-escaped
_META = "lq.client_options"


class CliError(click.ClickException):
    """A one-line error (``Error: ...`` on stderr) with an exit code; never a traceback."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Keep the most specific value of a client option across `lq topics [opts] create [opts]`:
    the command line beats the environment, which beats the default; the innermost command
    wins among equals."""
    source = ctx.get_parameter_source(param.name or "") or ParameterSource.DEFAULT
    chosen = ctx.meta.setdefault(_META, {})
    previous = chosen.get(param.name)
    if previous is None or source.value <= previous[0].value:
        chosen[param.name] = (source, value)
    return value


def client_options(f: F) -> F:
    """Add ``--url`` / ``--token`` to a command (declared once, used by every client command).

    They sit on each command rather than on the `lq` group, so ``lq broker`` keeps its own."""
    f = click.option("--token", envvar="LQ_TOKEN", default=None, expose_value=False,
                     callback=_remember, is_eager=True,
                     help="The broker's token, when it requires one. [env: LQ_TOKEN]")(f)
    f = click.option("--url", envvar="LQ_URL", default=DEFAULT_URL, show_default=True,
                     expose_value=False, callback=_remember, is_eager=True,
                     help="Broker url(s), comma-separated for failover. [env: LQ_URL]")(f)
    return f


def make_client(ctx: click.Context | None = None) -> Client:
    """A :class:`Client` from the chosen ``--url`` / ``--token``; closed with the context."""
    ctx = ctx or click.get_current_context()
    chosen = ctx.meta.get(_META, {})
    url = chosen.get("url", (None, DEFAULT_URL))[1] or DEFAULT_URL
    token = chosen.get("token", (None, None))[1] or None
    try:
        # Few retries: a person is waiting, and "broker down" should say so within a second.
        client = Client(url, token=token, retries=2, backoff=0.1, backoff_max=0.5)
    except ValueError as exc:
        raise CliError(f"bad --url {url!r}: {exc}", 2) from None
    ctx.call_on_close(client.close)
    ctx.meta["lq.token_given"] = bool(token)
    return client


def _explain(exc: LogQueueError, url: str, token_given: bool) -> str:
    if isinstance(exc, Unauthorized):
        if token_given:
            return f"the broker at {url} refused the token (check --token / LQ_TOKEN)"
        return f"the broker at {url} requires a token: pass --token or set LQ_TOKEN"
    if isinstance(exc, BrokerUnavailable):
        if exc.status is None:
            cause = exc.__cause__
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
            chosen = ctx.meta.get(_META, {})
            url = chosen.get("url", (None, DEFAULT_URL))[1]
            raise CliError(_explain(exc, url, bool(ctx.meta.get("lq.token_given")))) from None
        except BrokenPipeError:
            _quiet_stdout()
            ctx.exit(0)

    return wrapper  # type: ignore[return-value]


def _quiet_stdout() -> None:
    """After EPIPE, point stdout at /dev/null so the interpreter's final flush is silent."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def topic_argument(f: F) -> F:
    return click.argument("topic", metavar="TOPIC", callback=_check_topic)(f)


def _check_topic(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    if not TOPIC_PATTERN.fullmatch(value):
        raise CliError(f"invalid topic name {value!r}: 1 to 200 letters, digits, '.', '_', ':' "
                       "or '-', starting with a letter or digit", 2)
    return value


_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000,
             "w": 604_800_000}


def parse_duration_ms(text: str) -> int:
    """``7d``, ``12h``, ``30m``, ``45s``, ``500ms``, ``1w``, or ``0``/``none`` (no limit)."""
    text = text.strip().lower()
    if text in ("none", "forever", "off"):
        return 0
    match = re.fullmatch(r"(\d+)\s*(ms|s|m|h|d|w)?", text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (try 7d, 12h, 30m, 45s, 500ms or none)")
    if match.group(2) is None and match.group(1) != "0":
        raise ValueError(f"give a unit: {text}s, {text}m, {text}h or {text}d?")
    return int(match.group(1)) * _UNITS_MS[match.group(2) or "ms"]


def _duration(_ctx: click.Context, _param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_duration_ms(value)
    except ValueError as exc:
        raise CliError(f"--retention: {exc}", 2) from None


def format_duration(ms: int) -> str:
    for unit in ("d", "h", "m", "s"):
        size = _UNITS_MS[unit]
        if ms >= size and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def retention_text(ms: int | None, messages: int | None) -> str:
    parts = []
    if ms:
        parts.append(format_duration(ms))
    if messages:
        parts.append(f"{messages} messages")
    return ", ".join(parts) if parts else "none (the broker's default, if any)"


def _on_sigterm_raise_interrupt() -> None:
    """SIGTERM ends a long-running command like Ctrl-C does, so `finally` blocks run."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.default_int_handler)


# --- lq topics ---------------------------------------------------------------------------------
TOPICS_EPILOG = """\b
Examples:
  lq topics                                    # list, one name per line
  lq topics create app --retention 7d          # keep a week of messages
  lq topics create audit --retention-messages 1000000
  lq topics alter app --retention 30d          # change it later (0 or none: no limit)
  lq topics describe app                       # offsets, retention, consumers and lags
  lq topics delete app --yes
"""


@click.group("topics", invoke_without_command=True, epilog=TOPICS_EPILOG,
             context_settings=CONTEXT)
@client_options
@click.pass_context
@handle_errors
def topics_group(ctx: click.Context) -> None:
    """List topics (with no subcommand), or create, alter, describe and delete one."""
    if ctx.invoked_subcommand is None:
        _list_topics(ctx)


def _list_topics(ctx: click.Context) -> None:
    names = make_client(ctx).topics()
    if names:
        click.echo("\n".join(names))


@topics_group.command("list", context_settings=CONTEXT,
                      epilog="\b\nExample:\n  lq topics list --url http://broker:5000")
@client_options
@click.pass_context
@handle_errors
def topics_list(ctx: click.Context) -> None:
    """List the topics, one name per line (the same as a bare `lq topics`)."""
    _list_topics(ctx)


@topics_group.command("create", context_settings=CONTEXT, epilog="""\b
Examples:
  lq topics create app
  lq topics create app --retention 7d --retention-messages 5000000
  lq topics create app --if-not-exists
""")
@topic_argument
@click.option("--retention", metavar="DURATION", callback=_duration,
              help="Delete messages older than this: 7d, 12h, 30m, 45s, 500ms (0: no limit).")
@click.option("--retention-messages", type=click.IntRange(0), metavar="N",
              help="Keep at most the newest N messages (0: no limit).")
@click.option("--if-not-exists", is_flag=True, help="Succeed quietly if the topic exists.")
@client_options
@click.pass_context
@handle_errors
def topics_create(ctx: click.Context, topic: str, retention: int | None,
                  retention_messages: int | None, if_not_exists: bool) -> None:
    """Create TOPIC, optionally with a retention of its own."""
    client = make_client(ctx)
    try:
        client.create_topic(topic, retention_ms=retention, retention_messages=retention_messages)
    except TopicExists:
        if not if_not_exists:
            raise CliError(f"topic {topic!r} already exists") from None
        return
    click.echo(f"Created topic {topic!r} (retention: "
               f"{retention_text(retention, retention_messages)}).", err=True)


@topics_group.command("alter", context_settings=CONTEXT, epilog="""\b
Examples:
  lq topics alter app --retention 30d
  lq topics alter app --retention none --retention-messages 100000
""")
@topic_argument
@click.option("--retention", metavar="DURATION", callback=_duration,
              help="Delete messages older than this (0 or none: no limit by age).")
@click.option("--retention-messages", type=click.IntRange(0), metavar="N",
              help="Keep at most the newest N messages (0: no limit by count).")
@client_options
@click.pass_context
@handle_errors
def topics_alter(ctx: click.Context, topic: str, retention: int | None,
                 retention_messages: int | None) -> None:
    """Change TOPIC's retention (an option left out stays as it is)."""
    if retention is None and retention_messages is None:
        raise CliError("nothing to change: give --retention and/or --retention-messages", 2)
    client = make_client(ctx)
    current = client.describe(topic)  # the broker replaces both limits: keep the other one
    if retention is None:
        retention = current.retention_ms
    if retention_messages is None:
        retention_messages = current.retention_messages
    client.set_retention(topic, retention_ms=retention, retention_messages=retention_messages)
    click.echo(f"Updated the retention of topic {topic!r}.", err=True)


@topics_group.command("delete", context_settings=CONTEXT, epilog="""\b
Examples:
  lq topics delete app            # asks first
  lq topics delete app --yes      # in scripts
""")
@topic_argument
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@client_options
@click.pass_context
@handle_errors
def topics_delete(ctx: click.Context, topic: str, yes: bool) -> None:
    """Delete TOPIC with its messages and registrations (the name can be reused)."""
    client = make_client(ctx)
    if not yes:
        info = client.describe(topic)  # fails with a clear line if there is no such topic
        click.confirm(f"Delete topic {topic!r} with its {info.messages} messages and "
                      f"{len(info.consumers)} consumers?", abort=True, err=True)
    client.delete_topic(topic)
    click.echo(f"Deleted topic {topic!r}.", err=True)


@topics_group.command("describe", context_settings=CONTEXT, epilog="""\b
Examples:
  lq topics describe app
  lq topics describe app --json | jq '.consumers[] | select(.lag > 1000)'
""")
@topic_argument
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of text.")
@client_options
@click.pass_context
@handle_errors
def topics_describe(ctx: click.Context, topic: str, as_json: bool) -> None:
    """Show TOPIC's offsets, retention, producers, and consumers with their lag."""
    info = make_client(ctx).describe(topic)
    if as_json:
        click.echo(json.dumps(describe_json(info)))
        return
    last = f"{info.first_offset}..{info.next_offset - 1}" if info.messages else "none"
    lines = [f"Topic:      {info.topic}",
             f"Messages:   {info.messages} (offsets {last}; next {info.next_offset})",
             f"Retention:  {retention_text(info.retention_ms, info.retention_messages)}",
             f"Created:    {info.created.isoformat() if info.created else '?'}",
             f"Producers:  {info.producers}",
             f"Consumers:  {len(info.consumers)}"]
    if info.consumers:
        rows = [("NAME", "POSITION", "LAG")] + [
            (c.name or "(unnamed)", str(c.position), str(c.lag)) for c in info.consumers]
        lines += ["  " + line for line in table(rows, right=(1, 2))]
    click.echo("\n".join(lines))


def describe_json(info: TopicDescription) -> dict[str, Any]:
    return {"topic": info.topic, "messages": info.messages, "first_offset": info.first_offset,
            "next_offset": info.next_offset, "retention_ms": info.retention_ms,
            "retention_messages": info.retention_messages,
            "created": info.created.isoformat() if info.created else None,
            "producers": info.producers,
            "consumers": [{"name": c.name, "position": c.position, "lag": c.lag}
                          for c in info.consumers]}


def table(rows: list[tuple[str, ...]], right: tuple[int, ...] = ()) -> list[str]:
    """Rows as aligned columns (the first row is the header); ``right`` columns align right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.rjust(w) if i in right else cell.ljust(w)
                      for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
            for row in rows]


# --- lq produce --------------------------------------------------------------------------------
@click.command("produce", context_settings=CONTEXT, epilog="""\b
Examples:
  lq produce app "user 42 signed in" "user 42 signed out"
  tail -F /var/log/app.log | lq produce app      # one message per line, as they come
  lq produce app < events.txt                    # batches of up to --batch lines

\b
Empty lines are skipped. The topic is created if it does not exist. At the end (EOF or
Ctrl-C) the number of messages sent goes to stderr.
""")
@topic_argument
@click.argument("messages", nargs=-1, metavar="[MESSAGE]...")
@click.option("--batch", type=click.IntRange(1, 10_000), default=500, show_default=True,
              help="Most lines per request (what is already waiting on stdin is sent "
                   "together; a lone line goes at once).")
@client_options
@click.pass_context
@handle_errors
def produce_command(ctx: click.Context, topic: str, messages: tuple[str, ...],
                    batch: int) -> None:
    """Send MESSAGEs to TOPIC, or one message per line of stdin when none are given."""
    producer = Producer(make_client(ctx))
    sent = 0
    first: int | None = None
    last: int | None = None
    interrupted = False
    _on_sigterm_raise_interrupt()
    try:
        source = _chunks(messages, batch) if messages else _stdin_batches(batch)
        for chunk in source:
            result = producer.send_batch(topic, chunk)
            sent += len(chunk)
            if result.first is not None:
                first = result.first if first is None else first
                last = result.last
    except KeyboardInterrupt:
        interrupted = True
    finally:
        try:
            producer.unregister(topic)
        except LogQueueError:
            pass  # the messages are in; a leftover producer registration is harmless
    offsets = f" (offsets {first}..{last})" if first is not None else ""
    click.echo(f"Produced {sent} message{'' if sent == 1 else 's'} to {topic!r}{offsets}.",
               err=True)
    if interrupted:
        ctx.exit(130)


def _chunks(items: tuple[str, ...], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield list(items[i:i + size])


def _stdin_batches(size: int) -> Iterator[list[str]]:
    """Batches of stdin lines: whatever is already waiting, up to ``size`` lines (and
    :data:`BATCH_BYTES`), so a pipe is sent in large batches and a person typing sees each
    line go at once. A daemon thread reads; the main thread stays interruptible."""
    lines: queue.Queue[str | None] = queue.Queue(maxsize=size * 4)

    def read() -> None:
        try:
            for line in sys.stdin:
                line = line.rstrip("\r\n")
                if line:
                    lines.put(line)
        finally:
            lines.put(None)

    threading.Thread(target=read, name="lq-produce-stdin", daemon=True).start()
    done = False
    while not done:
        line = lines.get()
        if line is None:
            return
        chunk, nbytes = [line], len(line)
        while len(chunk) < size and nbytes < BATCH_BYTES:
            try:
                line = lines.get_nowait()
            except queue.Empty:
                break
            if line is None:
                done = True
                break
            chunk.append(line)
            nbytes += len(line)
        yield chunk


# --- lq tail -----------------------------------------------------------------------------------
@click.command("tail", context_settings=CONTEXT, epilog="""\b
Examples:
  lq tail app                      # the last 10 messages
  lq tail app -n 100 --json        # the last 100, one JSON object per line
  lq tail app -f                   # the last 10, then new ones as they arrive (Ctrl-C stops)
  lq tail app -f -n 0              # only new messages
  lq tail app --from-beginning     # everything kept
  lq tail app -f --json | jq -r 'select(.message | test("ERROR")) | .message'

\b
`lq tail` reads without taking messages from anyone: it registers a temporary consumer,
reads by offset, and removes the registration when it exits (Ctrl-C or SIGTERM too).
""")
@topic_argument
@click.option("-f", "--follow", is_flag=True, help="Keep printing new messages (long-poll).")
@click.option("--from-beginning", is_flag=True, help="Start at the oldest message kept.")
@click.option("-n", "--lines", "count", type=click.IntRange(0), default=10, show_default=True,
              help="Start with the last N messages.")
@click.option("--json", "as_json", is_flag=True,
              help='One JSON object per line: {"offset", "ts", "message"}.')
@click.option("--wait", type=click.FloatRange(0.1, 30), default=10.0, show_default=True,
              hidden=True, help="Seconds each long-poll may wait with -f.")
@client_options
@click.pass_context
@handle_errors
def tail_command(ctx: click.Context, topic: str, follow: bool, from_beginning: bool,
                 count: int, as_json: bool, wait: float) -> None:
    """Print TOPIC's last messages (by default 10), and with -f follow new ones."""
    client = make_client(ctx)
    consumer = Consumer(client, start="latest")
    _on_sigterm_raise_interrupt()
    try:
        consumer.register(topic)  # UnknownTopic here, before anything is printed
        info = client.describe(topic)
        offset = info.first_offset if from_beginning else max(info.first_offset,
                                                              info.next_offset - count)
        end = None if follow else info.next_offset
        for batch in _read(consumer, topic, offset, end, wait):
            click.echo("".join(_format(m, as_json) for m in batch), nl=False)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how -f ends: exit 0, no traceback
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip cleanup
        try:
            consumer.unregister(topic)
        except LogQueueError:
            pass  # e.g. the topic was deleted meanwhile, or the broker went away
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def _read(consumer: Consumer, topic: str, offset: int, end: int | None,
          wait: float) -> Iterator[list[Message]]:
    """Batches from ``offset`` up to ``end`` (excluded), or forever when ``end`` is None."""
    while end is None or offset < end:
        messages, _ = consumer.fetch(topic, offset=offset, max=1000,
                                     wait=wait if end is None else 0)
        if end is not None:
            messages = [m for m in messages if m.offset < end]
            if not messages:
                return
        if messages:
            offset = messages[-1].offset + 1
            yield messages


def _format(msg: Message, as_json: bool) -> str:
    if as_json:
        ts = msg.ts.isoformat() if msg.ts else None
        return json.dumps({"offset": msg.offset, "ts": ts, "message": msg.value},
                          ensure_ascii=False) + "\n"
    return msg.value + "\n"


# --- lq stats ----------------------------------------------------------------------------------
@click.command("stats", context_settings=CONTEXT, epilog="""\b
Examples:
  lq stats                          # one table: topic, messages, consumers, largest lag
  lq stats --watch                  # redraw every 2 s until Ctrl-C
  lq stats --watch --interval 0.5
  lq stats --json | jq '.[] | select(.max_lag > 10000) | .topic'
""")
@click.option("-w", "--watch", is_flag=True, help="Refresh in place until Ctrl-C.")
@click.option("--interval", type=click.FloatRange(0.1), default=2.0, show_default=True,
              help="Seconds between refreshes with --watch.")
@click.option("--json", "as_json", is_flag=True, help="A JSON array instead of a table.")
@client_options
@click.pass_context
@handle_errors
def stats_command(ctx: click.Context, watch: bool, interval: float, as_json: bool) -> None:
    """Show each topic's messages, consumers and largest consumer lag."""
    client = make_client(ctx)
    if not watch:
        click.echo(_stats_text(client, as_json))
        return
    _on_sigterm_raise_interrupt()
    in_place = sys.stdout.isatty() and not as_json
    if in_place:
        click.echo("\x1b[H\x1b[2J", nl=False)
    try:
        while True:
            text = _stats_text(client, as_json)
            if in_place:  # home, draw, clear what is left of the previous table
                stamp = time.strftime("%H:%M:%S")
                click.echo(f"\x1b[H{stamp}  {client.transport.url}  (Ctrl-C to stop)\x1b[K\n"
                           + text.replace("\n", "\x1b[K\n") + "\x1b[K\x1b[J", nl=False)
            else:
                click.echo(text + ("" if as_json else "\n"))
            time.sleep(interval)
    except KeyboardInterrupt:
        if in_place:
            click.echo()


def _stats_text(client: Client, as_json: bool) -> str:
    stats = client.stats()
    if as_json:
        return json.dumps([{"topic": t.topic, "messages": t.messages,
                            "first_offset": t.first_offset, "next_offset": t.next_offset,
                            "consumers": t.consumers,
                            "max_lag": t.max_lag if t.consumers else 0} for t in stats])
    rows = [("TOPIC", "MESSAGES", "CONSUMERS", "MAX_LAG")] + [
        (t.topic, str(t.messages), str(t.consumers), str(t.max_lag) if t.consumers else "-")
        for t in stats]
    return "\n".join(table(rows, right=(1, 2, 3))) if stats else "(no topics)"


for _command in (topics_group, produce_command, tail_command, stats_command):
    main.add_command(_command)

if __name__ == "__main__":
    sys.exit(main())
