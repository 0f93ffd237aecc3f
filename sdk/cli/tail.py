"""`lq tail`: print a topic's last messages, readable and filtered, and with ``-f`` follow new
ones."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from dataclasses import dataclass

import click

from sdk.cli.options import (
    CONTEXT,
    checked,
    client_command,
    make_client,
    on_sigterm_raise_interrupt,
    topic_argument,
)
from sdk.client import Message
from sdk.consumer import Consumer
from sdk.contract import start_point
from sdk.exceptions import LogQueueError
from sdk.render import RecordFilter, compile_grep, format_text, parse_level, parse_record

#: With a filter, `-n N` reads back window by window, each twice the last, up to this many.
MAX_WINDOW = 10_000


@click.command("tail", context_settings=CONTEXT, epilog="""\b
Examples:
  lq tail app                      # the last 10 messages
  lq tail app -n 100 --json        # the last 100, one JSON object per line
  lq tail app -f                   # the last 10, then new ones as they arrive (Ctrl-C stops)
  lq tail app -f -n 0              # only new messages
  lq tail app --from-beginning     # everything kept
  lq tail app --since 10m -f       # everything of the last 10 minutes, then follow
  lq tail app --since 2024-05-01T12:00:00Z   # from a time (UTC unless an offset is given)
  lq tail app --level WARNING      # the last 10 warnings, errors and criticals
  lq tail app -f --logger shop.db  # shop.db and shop.db.pool, not shop.dbx
  lq tail app --grep 'order 42'    # the text contains "order 42" (case-sensitive)
  lq tail app --grep 're:(?i)timeout|refused' --level ERROR   # filters combine (AND)

\b
Records the logging handler wrote are shown as `TIME LEVEL logger: message` (the level
coloured on a terminal, a traceback on the next lines); other messages as their text.
--grep searches that text; a plain message matches --grep only, never --level or --logger.
With a filter, -n counts the messages that match: lq tail reads back until it has found
that many (or reached the oldest).

\b
`lq tail` reads without taking messages from anyone: it registers a temporary consumer,
reads by offset, and removes the registration when it exits (Ctrl-C or SIGTERM too).
""")
@topic_argument
@click.option("-f", "--follow", is_flag=True, help="Keep printing new messages (long-poll).")
@click.option("--from-beginning", is_flag=True, help="Start at the oldest message kept.")
@click.option("--since", metavar="WHEN", callback=checked(start_point),
              help="Start at the first message appended at or after WHEN: an ISO-8601 time "
                   "or a duration back from now (10m, 2h).")
@click.option("-n", "--lines", "count", type=click.IntRange(0), default=10, show_default=True,
              help="Start with the last N messages (that match the filters).")
@click.option("--level", metavar="LEVEL", callback=checked(parse_level),
              help="Only records at LEVEL or above: DEBUG, INFO, WARNING, ERROR, CRITICAL.")
@click.option("--logger", metavar="NAME",
              help="Only records of logger NAME and its children (NAME.*).")
@click.option("--grep", metavar="TEXT", callback=checked(compile_grep),
              help="Only messages whose text contains TEXT; re:REGEX for a regular expression.")
@click.option("--json", "as_json", is_flag=True,
              help='The messages as stored, one JSON object per line: {"offset", "ts", '
                   '"message"}.')
@click.option("--wait", type=click.FloatRange(0.1, 30), default=10.0, show_default=True,
              hidden=True, help="Seconds each long-poll may wait with -f.")
@client_command
def tail_command(ctx: click.Context, topic: str, follow: bool, from_beginning: bool,
                 since: str | None, count: int, level: str | None, logger: str | None,
                 grep: str | None, as_json: bool, wait: float) -> None:
    """Print TOPIC's last messages (by default 10), and with -f follow new ones."""
    view = _View(RecordFilter(level, logger, grep), as_json,
                 colour=not as_json and click.get_text_stream("stdout").isatty())
    client = make_client(ctx)
    consumer = Consumer(client, start=since or "latest")  # the broker finds `since`
    on_sigterm_raise_interrupt()
    try:
        consumer.register(topic)  # UnknownTopic here, before anything is printed
        info = client.describe(topic)
        if from_beginning or since:
            start = consumer.fetch(topic, max=1)[1] if since else info.first_offset
            for batch in _read(consumer, topic, start, info.next_offset, 0):
                click.echo(view.lines(batch), nl=False)
        else:
            click.echo("".join(_last_lines(consumer, topic, info.first_offset,
                                           info.next_offset, count, view)), nl=False)
        if follow:
            for batch in _read(consumer, topic, info.next_offset, None, wait):
                click.echo(view.lines(batch), nl=False)
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


@dataclass(frozen=True)
class _View:
    """What is printed of a message, if anything: the filter, then text or JSON."""

    keep: RecordFilter
    as_json: bool
    colour: bool

    def line(self, msg: Message) -> str | None:
        """``msg`` as printed (with its newline), or None when the filter drops it."""
        if self.as_json and not self.keep.active:
            return _json_line(msg)
        record = parse_record(msg.value)
        text = msg.value if record is None else format_text(record, ts=msg.ts)
        if not self.keep.matches(record, text):
            return None
        if self.as_json:
            return _json_line(msg)
        if self.colour and record is not None:
            text = format_text(record, ts=msg.ts, colour=True)
        return text + "\n"

    def lines(self, batch: list[Message]) -> str:
        return "".join(line for msg in batch if (line := self.line(msg)) is not None)


def _json_line(msg: Message) -> str:
    ts = msg.ts.isoformat() if msg.ts else None
    return json.dumps({"offset": msg.offset, "ts": ts, "message": msg.value},
                      ensure_ascii=False) + "\n"


def _last_lines(consumer: Consumer, topic: str, first: int, end: int, count: int,
                view: _View) -> list[str]:
    """The last ``count`` lines shown of the messages before ``end``. Without a filter that
    is the last ``count`` messages; with one, the messages are read back window by window
    (each twice the last, up to MAX_WINDOW) until ``count`` match or the oldest is read."""
    lines: list[str] = []
    hi, window = end, count if not view.keep.active else max(count, 100)
    while count and hi > first and len(lines) < count:
        lo = max(first, hi - window)
        found = [line for batch in _read(consumer, topic, lo, hi, 0) for msg in batch
                 if (line := view.line(msg)) is not None]
        lines[:0] = found
        hi, window = lo, min(window * 2, MAX_WINDOW)
    return lines[-count:] if count else []


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

