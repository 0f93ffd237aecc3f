"""`lq topics`: list, create, alter, describe and delete topics."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from sdk.cli.options import (
    CONTEXT,
    CliError,
    client_command,
    make_client,
    retention_option,
    table,
    topic_argument,
)
from sdk.client import TopicDescription
from sdk.contract import format_duration
from sdk.exceptions import TopicExists

TOPICS_EPILOG = """\b
Examples:
  lq topics                                    # list, one name per line
  lq topics create app --retention 7d          # keep a week of messages
  lq topics create audit --retention-messages 1000000
  lq topics alter app --retention 30d          # change it later (0 or none: no limit)
  lq topics describe app                       # offsets, retention, consumers and lags
  lq topics delete app --yes
"""


def retention_text(ms: int | None, messages: int | None) -> str:
    parts = []
    if ms:
        parts.append(format_duration(ms))
    if messages:
        parts.append(f"{messages} messages")
    return ", ".join(parts) if parts else "none (the broker's default, if any)"


@click.group("topics", invoke_without_command=True, epilog=TOPICS_EPILOG,
             context_settings=CONTEXT)
@client_command
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
@client_command
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
@retention_option("Delete messages older than this: 7d, 12h, 30m, 45s, 500ms (0: no limit).")
@click.option("--retention-messages", type=click.IntRange(0), metavar="N",
              help="Keep at most the newest N messages (0: no limit).")
@click.option("--if-not-exists", is_flag=True, help="Succeed quietly if the topic exists.")
@client_command
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
@retention_option("Delete messages older than this (0 or none: no limit by age).")
@click.option("--retention-messages", type=click.IntRange(0), metavar="N",
              help="Keep at most the newest N messages (0: no limit by count).")
@client_command
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
  lq topics delete app            # asks first (on a terminal)
  lq topics delete app --yes      # in scripts: without a terminal, --yes is required
""")
@topic_argument
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@client_command
def topics_delete(ctx: click.Context, topic: str, yes: bool) -> None:
    """Delete TOPIC with its messages and registrations (the name can be reused)."""
    if not yes and not sys.stdin.isatty():
        # No one to answer the question: a script must say --yes rather than see "Aborted!".
        raise CliError(f"not deleting topic {topic!r}: stdin is not a terminal to confirm "
                       "on; pass --yes", 2)
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
@client_command
def topics_describe(ctx: click.Context, topic: str, as_json: bool) -> None:
    """Show TOPIC's offsets, retention, producers, and consumers with their lag."""
    info = make_client(ctx).describe(topic)
    click.echo(json.dumps(describe_json(info)) if as_json else describe_text(info))


def describe_text(info: TopicDescription) -> str:
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
    return "\n".join(lines)


def describe_json(info: TopicDescription) -> dict[str, Any]:
    return {"topic": info.topic, "messages": info.messages, "first_offset": info.first_offset,
            "next_offset": info.next_offset, "retention_ms": info.retention_ms,
            "retention_messages": info.retention_messages,
            "created": info.created.isoformat() if info.created else None,
            "producers": info.producers,
            "consumers": [{"name": c.name, "position": c.position, "lag": c.lag}
                          for c in info.consumers]}
