"""`lq produce`: send command-line arguments, or stdin line by line, to a topic."""

from __future__ import annotations

import contextlib
import queue
import sys
import threading
from collections.abc import Iterator

import click

from sdk.cli.options import (
    CONTEXT,
    client_command,
    make_client,
    on_sigterm_raise_interrupt,
    topic_argument,
)
from sdk.exceptions import LogQueueError
from sdk.producer import Producer

BATCH_BYTES = 4 * 1024 * 1024  # well under the broker's 16 MiB body limit, even JSON-escaped


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
@client_command
def produce_command(ctx: click.Context, topic: str, messages: tuple[str, ...],
                    batch: int) -> None:
    """Send MESSAGEs to TOPIC, or one message per line of stdin when none are given."""
    producer = Producer(make_client(ctx))
    sent = 0
    first: int | None = None
    last: int | None = None
    interrupted = False
    on_sigterm_raise_interrupt()
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
        # The messages are in; a leftover producer registration is harmless.
        with contextlib.suppress(LogQueueError):
            producer.unregister(topic)
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
    while (line := lines.get()) is not None:
        chunk, done = _gather(lines, [line], size)
        yield chunk
        if done:
            return


def _gather(lines: queue.Queue[str | None], chunk: list[str], size: int) -> tuple[list[str],
                                                                                   bool]:
    """Add the lines already waiting to ``chunk`` (up to ``size`` and :data:`BATCH_BYTES`);
    also say whether stdin has ended."""
    nbytes = sum(len(line) for line in chunk)
    while len(chunk) < size and nbytes < BATCH_BYTES:
        try:
            line = lines.get_nowait()
        except queue.Empty:
            return chunk, False
        if line is None:
            return chunk, True
        chunk.append(line)
        nbytes += len(line)
    return chunk, False
