"""`lq stats`: each topic's messages, consumers and largest lag, and each consumer
registration's lag, leases, lease holders and last activity, once or redrawn in place."""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from typing import NamedTuple

import click

from sdk.cli.options import (
    CONTEXT,
    checked,
    client_command,
    make_client,
    on_sigterm_raise_interrupt,
    table,
)
from sdk.client import Client, parse_ts
from sdk.contract import parse_duration_ms


class _Query(NamedTuple):
    """What to ask and how to show it."""

    as_json: bool
    consumers: bool
    active: str | None  # a duration: only registrations used within it


@click.command("stats", context_settings=CONTEXT, epilog="""\b
Examples:
  lq stats                          # one table: topic, messages, consumers, largest lag
  lq stats --watch                  # redraw every 2 s until Ctrl-C
  lq stats --watch --interval 0.5
  lq stats --consumers              # and each consumer: lag, leases, holders, last active
  lq stats -c --active 1h           # only the registrations used in the last hour
  lq stats --json | jq '.[] | select(.max_lag > 10000) | .topic'
""")
@click.option("-w", "--watch", is_flag=True, help="Refresh in place until Ctrl-C.")
@click.option("--interval", type=click.FloatRange(0.1), default=2.0, show_default=True,
              help="Seconds between refreshes with --watch.")
@click.option("--json", "as_json", is_flag=True, help="A JSON array instead of a table.")
@click.option("-c", "--consumers", is_flag=True,
              help="Also each consumer registration: lag, leases outstanding, lease holders "
                   "seen in the last minute, last activity.")
@click.option("--active", metavar="DURATION", callback=checked(parse_duration_ms),
              help="Count only the consumer registrations used within DURATION (e.g. 1h): "
                   "idle ones are left out of the consumers, the largest lag and --consumers.")
@client_command
def stats_command(ctx: click.Context, watch: bool, interval: float, as_json: bool,
                  consumers: bool, active: str | None) -> None:
    """Show each topic's messages, consumers and largest consumer lag."""
    client = make_client(ctx)
    view = _Query(as_json, consumers, active)
    if not watch:
        click.echo(_stats_text(client, view))
        return
    on_sigterm_raise_interrupt()
    in_place = sys.stdout.isatty() and not as_json
    if in_place:
        click.echo("\x1b[H\x1b[2J", nl=False)
    try:
        while True:
            _draw(client, view, in_place)
            time.sleep(interval)
    except KeyboardInterrupt:
        if in_place:
            click.echo()


def _draw(client: Client, view: _Query, in_place: bool) -> None:
    text = _stats_text(client, view)
    if in_place:  # home, draw, clear what is left of the previous table
        stamp = time.strftime("%H:%M:%S")
        click.echo(f"\x1b[H{stamp}  {client.transport.url}  (Ctrl-C to stop)\x1b[K\n"
                   + text.replace("\n", "\x1b[K\n") + "\x1b[K\x1b[J", nl=False)
    else:
        click.echo(text + ("" if view.as_json else "\n"))


def _stats_text(client: Client, view: _Query) -> str:
    # The raw reply: it also carries each topic's registrations, which Client.stats() leaves out.
    params = {"active": view.active} if view.active else None
    stats = client.transport.get("/stats", params)["topics"]
    if view.as_json:
        return json.dumps([{"topic": t["topic"], "messages": t["messages"],
                            "first_offset": t["first_offset"], "next_offset": t["next_offset"],
                            "consumers": t["consumers"],
                            "max_lag": t["max_lag"] if t["consumers"] else 0,
                            "registrations": t.get("registrations", [])} for t in stats])
    if not stats:
        return "(no topics)"
    rows = [("TOPIC", "MESSAGES", "CONSUMERS", "MAX_LAG")] + [
        (t["topic"], str(t["messages"]), str(t["consumers"]),
         str(t["max_lag"]) if t["consumers"] else "-") for t in stats]
    lines = table(rows, right=(1, 2, 3))
    regs = [(t["topic"], r) for t in stats for r in t.get("registrations", [])]
    if view.consumers and regs:
        lines += ["", *table([("TOPIC", "CONSUMER", "LAG", "LEASES", "HOLDERS", "LAST_ACTIVE")] + [
            (topic, r.get("name") or "(unnamed)", str(r["lag"]), str(r.get("leases", 0)),
             str(r.get("holders", 0)), _ago(r.get("active"))) for topic, r in regs],
            right=(2, 3, 4, 5))]
    return "\n".join(lines)


def _ago(stamp: str | None) -> str:
    """How long ago, in the largest whole unit: ``12s``, ``5m``, ``3h``, ``2d``."""
    when = parse_ts(stamp)
    if when is None:
        return "-"
    seconds = max(0, int((datetime.now(UTC) - when).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
