"""`lq tokens`: create, list and revoke the broker's scoped tokens (needs an admin token)."""

from __future__ import annotations

import json
from datetime import datetime

import click

from sdk.cli.options import CONTEXT, client_command, make_client, table
from sdk.client import TokenInfo

TOKENS_EPILOG = """\b
Examples:
  lq tokens create --name shop --produce 'shop-*'          # prints the token, once
  lq tokens create --name billing --consume 'shop-*' --consume audit
  lq tokens create --name ops --admin
  lq tokens list                                           # names, scopes, last use
  lq tokens revoke shop                                    # refused everywhere within 1 s

\b
A scope is a topic glob (* ? [..]) per verb: --produce (register a producer, produce),
--consume (register a consumer, consume, fetch, commit, size). --admin may do everything
(topics, tokens). The broker keeps only each token's SHA-256.
"""


@click.group("tokens", invoke_without_command=True, epilog=TOKENS_EPILOG,
             context_settings=CONTEXT)
@client_command
def tokens_group(ctx: click.Context) -> None:
    """List tokens (with no subcommand), or create or revoke one."""
    if ctx.invoked_subcommand is None:
        _list_tokens(ctx, as_json=False)


@tokens_group.command("create", context_settings=CONTEXT)
@click.option("--name", default=None, help="A name to list and revoke it by. "
                                           "[default: token-<random>]")
@click.option("--produce", multiple=True, metavar="GLOB",
              help="Topics it may produce to (repeatable), e.g. 'app-*'.")
@click.option("--consume", multiple=True, metavar="GLOB",
              help="Topics it may read (repeatable).")
@click.option("--admin", is_flag=True, help="It may do everything: topics, tokens, any topic.")
@client_command
def tokens_create(ctx: click.Context, name: str | None, produce: tuple[str, ...],
                  consume: tuple[str, ...], admin: bool) -> None:
    """Create a token and print it (on stdout, alone): it is never shown again."""
    if not (produce or consume or admin):
        raise click.UsageError("give --produce GLOB, --consume GLOB or --admin")
    created = make_client(ctx).create_token(name=name, produce=produce, consume=consume,
                                            admin=admin)
    click.echo(f"Created token {created.name!r} ({_scopes(created)}); it is shown only now:",
               err=True)
    click.echo(created.token)


@tokens_group.command("list", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="A JSON array instead of a table.")
@client_command
def tokens_list(ctx: click.Context, as_json: bool) -> None:
    """List the tokens: names, scopes, created, last used (never the tokens themselves)."""
    _list_tokens(ctx, as_json)


@tokens_group.command("revoke", context_settings=CONTEXT)
@click.argument("name")
@client_command
def tokens_revoke(ctx: click.Context, name: str) -> None:
    """Revoke the token NAME: every broker on the database refuses it within a second."""
    make_client(ctx).revoke_token(name)
    click.echo(f"Revoked token {name!r}.", err=True)


def _list_tokens(ctx: click.Context, as_json: bool) -> None:
    tokens = make_client(ctx).tokens()
    if as_json:
        click.echo(json.dumps([{"name": t.name, "produce": list(t.produce),
                                "consume": list(t.consume), "admin": t.admin,
                                "created": _time(t.created), "last_used": _time(t.last_used)}
                               for t in tokens]))
        return
    if not tokens:
        click.echo("No tokens (auth is off unless the broker has LQ_TOKEN).", err=True)
        return
    rows = [("NAME", "SCOPES", "CREATED", "LAST USED")] + [
        (t.name, _scopes(t), _time(t.created) or "?", _time(t.last_used) or "never")
        for t in tokens]
    click.echo("\n".join(table(rows)))


def _scopes(token: TokenInfo) -> str:
    if token.admin:
        return "admin"
    parts = [f"produce {','.join(token.produce)}"] if token.produce else []
    if token.consume:
        parts.append(f"consume {','.join(token.consume)}")
    return "; ".join(parts)


def _time(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value else None
