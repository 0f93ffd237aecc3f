"""`lq tail`: print a topic's last messages, and with ``-f`` follow new ones."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator

import click

from sdk.cli.options import (
    CONTEXT,
    client_options,
    handle_errors,
    make_client,
    on_sigterm_raise_interrupt,
    topic_argument,
)
from sdk.client import Message
from sdk.consumer import Consumer
from sdk.exceptions import LogQueueError


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
    on_sigterm_raise_interrupt()
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
