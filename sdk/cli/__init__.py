"""The `lq` command: one click group; each package adds its subcommands via `lq.commands`.

Plugin commands load lazily from entry points, like Flask's ``FlaskGroup``, so the client side
never imports the broker and a plugin that fails to import costs one error line, not the command.
The client commands live one family per module: :mod:`sdk.cli.topics`, :mod:`sdk.cli.produce`,
:mod:`sdk.cli.tail`, :mod:`sdk.cli.stats`,
:mod:`sdk.cli.tokens`; what they share is in :mod:`sdk.cli.options`.
"""

from __future__ import annotations

from importlib.metadata import entry_points

import click

from sdk.cli.produce import produce_command
from sdk.cli.stats import stats_command
from sdk.cli.tail import tail_command
from sdk.cli.tokens import tokens_group
from sdk.cli.topics import topics_group

EPILOG = """\b
Examples:
  lq broker                         # SQLite ./logqueue.db on 127.0.0.1:5000
  lq broker --db postgresql://postgres@127.0.0.1/logqueue --workers 4
  lq topics create app --retention 7d
  seq 1 1000 | lq produce app       # one message per line
  lq tail app -f                    # the last 10 messages, then follow (Ctrl-C stops)
  lq stats --watch
  lq tokens create --name shop --produce 'shop-*'   # a scoped token, printed once

\b
Client commands take --url (env LQ_URL, default http://127.0.0.1:5000), --token
(env LQ_TOKEN) and --cacert for https:// (env LQ_CACERT). `lq CMD --help` explains each command.
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
        # A built-in command loads no plugin: `lq produce` need not import the broker's
        # SQLAlchemy and the runner's pydantic models (about 0.3 s per invocation).
        command = super().get_command(ctx, cmd_name)
        if command is None:
            self._load_plugin_commands()
            command = super().get_command(ctx, cmd_name)
        return command

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load_plugin_commands()
        return super().list_commands(ctx)


@click.group(cls=LqGroup, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="logqueue", prog_name="lq")
def main() -> None:
    """LogQueue: a persistent logging queue for Python applications."""


for _command in (topics_group, produce_command, tail_command, stats_command, tokens_group):
    main.add_command(_command)
