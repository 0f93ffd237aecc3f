"""``lq consume``: drain topics into sinks (the runner's command line).

Found by the ``lq`` group through the ``lq.commands`` entry point ``consume``.
"""

from __future__ import annotations

import sys

import click

from lq_logging.runner import (
    DEFAULT_DEAD_LETTER,
    DEFAULT_URL,
    ConfigError,
    PipelineConfig,
    Runner,
    RunnerConfig,
    SinkConfig,
    load_config,
    parse_level,
)

EPILOG = """\b
SPEC (--sink, repeatable; every sink gets every record):
  stdout | stdout:json        human text (colours on a TTY) | JSON lines
  file:PATH                   JSON lines, rotated at 100MB, 5 backups;
                              file:PATH?format=text&max_bytes=10MB&backups=3
  sql:DATABASE_URL            table lq_records (SQLite or PostgreSQL), written once
  http://... | https://...    POST JSON arrays; 4xx -> dead-letter file
  logging                     re-emit into this process's logging handlers
  package.module:Class        your sink: write(batch), flush(), close()

\b
Examples:
  lq consume --topic app --sink stdout
  lq consume --url http://broker:5000 --topic app --topic worker \\
      --sink file:/var/log/app.jsonl --sink sql:postgresql://logs@db/logs --name archiver
  lq consume --topic app --sink https://logs.example.com/ingest --min-level WARNING
  lq consume --config runner.toml --progress
  lq consume --config runner.toml --dry-run     # check the file and open the sinks

\b
Delivery is at least once: fetch, write and flush every sink, then commit. With --name the
position survives restarts (use one name per independent runner). SIGTERM or Ctrl-C
finishes the batch in hand, commits and exits 0; a second signal exits at once (128+N).

\b
Exit status:
  0    stopped by a signal (or --until-empty): everything written is committed
  1    a pipeline failed (a sink kept failing, the broker refused the consumer)
  2    bad options or configuration
  75   a signal came while a sink (or the commit) was failing: the runner stopped
       retrying at once and did not commit the batch in hand; the next start delivers it
       again (nothing is lost)
"""


@click.command("consume", epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"],
                                                           "max_content_width": 100})
@click.option("--url", envvar="LQ_URL", default=DEFAULT_URL, show_default=True,
              help="Broker url(s), comma-separated for failover. [env: LQ_URL]")
@click.option("--token", envvar="LQ_TOKEN", default=None,
              help="The broker's token. [env: LQ_TOKEN]")
@click.option("--topic", "topics", multiple=True, metavar="TOPIC",
              help="A topic to drain (repeatable); created when missing.")
@click.option("--sink", "sinks", multiple=True, metavar="SPEC",
              help="Where records go (repeatable); see SPEC below.")
@click.option("--name", default=None,
              help="Consumer name: the position is kept across restarts. Without it the "
                   "runner reads from --from on every start.")
@click.option("--from", "start", type=click.Choice(["earliest", "latest"]), default="earliest",
              show_default=True, help="Where a new consumer starts.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="A TOML file with one or more [[pipeline]] tables (see "
                   "examples/runner.toml); replaces --topic/--sink.")
@click.option("--min-level", default=None, metavar="LEVEL",
              help="Only records at or above LEVEL (e.g. WARNING).")
@click.option("--logger-prefix", "logger_prefixes", multiple=True, metavar="PREFIX",
              help="Only records from loggers under PREFIX (repeatable).")
@click.option("--batch", type=click.IntRange(1, 1000), default=500, show_default=True,
              help="Records per fetch.")
@click.option("--wait", type=click.FloatRange(0, 30), default=5.0, show_default=True,
              help="Seconds a fetch long-polls when the topic is drained.")
@click.option("--dead-letter", default=None, metavar="PATH",
              help=f"Where rejected records go. [default: {DEFAULT_DEAD_LETTER}]")
@click.option("--sink-retries", type=click.IntRange(0), default=None,
              help="Retries of a failing sink before its pipeline stops. [default: 3]")
@click.option("--until-empty", is_flag=True,
              help="Exit 0 once every topic is drained (instead of waiting for more).")
@click.option("--progress", is_flag=True, help="Show a live status line and a summary at exit.")
@click.option("--dry-run", is_flag=True,
              help="Validate the configuration, open every sink, then exit.")
@click.pass_context
def consume_command(ctx: click.Context, url: str, token: str | None, topics: tuple[str, ...],
                    sinks: tuple[str, ...], name: str | None, start: str,
                    config_path: str | None, min_level: str | None,
                    logger_prefixes: tuple[str, ...], batch: int, wait: float,
                    dead_letter: str | None, sink_retries: int | None, until_empty: bool,
                    progress: bool, dry_run: bool) -> None:
    """Drain topics into sinks: files, a database, an HTTP endpoint, stdout, logging."""
    config = _build_config(ctx, url=url, token=token, topics=topics, sinks=sinks, name=name,
                           start=start, config_path=config_path, min_level=min_level,
                           logger_prefixes=logger_prefixes, batch=batch, wait=wait,
                           dead_letter=dead_letter, sink_retries=sink_retries,
                           until_empty=until_empty)
    runner = Runner(config, progress=progress)

    def bad_sink(pcfg: PipelineConfig, index: int, scfg: SinkConfig,
                 exc: Exception) -> click.BadParameter:
        hint = ("--sink" if config_path is None
                else f"--config (pipeline {pcfg.name!r}, sink {index})")
        return click.BadParameter(str(exc), param_hint=hint)

    runner.build_sinks(on_error=bad_sink)
    if dry_run:
        runner.close_sinks()
        for p in config.pipelines:
            filters = []
            if p.min_level is not None:
                filters.append(f"level >= {p.min_level}")
            if p.logger_prefixes:
                filters.append("logger in " + ",".join(p.logger_prefixes))
            click.echo(f"pipeline {p.name!r}: topics {', '.join(p.topics)} -> "
                       f"{', '.join(s.spec for s in p.sinks)}"
                       + (f" (filters: {'; '.join(filters)})" if filters else "")
                       + f"; consumer {p.consumer_name or '(anonymous)'}")
        click.echo("configuration OK")
        return
    if any(p.consumer_name is None for p in config.pipelines):
        click.echo("lq consume: no --name: the position is not kept across restarts",
                   err=True)
    sys.exit(runner.run())


def _build_config(ctx: click.Context, *, url: str, token: str | None, topics: tuple[str, ...],
                  sinks: tuple[str, ...], name: str | None, start: str,
                  config_path: str | None, min_level: str | None,
                  logger_prefixes: tuple[str, ...], batch: int, wait: float,
                  dead_letter: str | None, sink_retries: int | None,
                  until_empty: bool) -> RunnerConfig:
    """Options, environment and TOML file -> RunnerConfig (options and environment win)."""
    def given(param: str) -> bool:
        source = ctx.get_parameter_source(param)
        return source not in (None, click.core.ParameterSource.DEFAULT)

    if config_path:
        if topics or sinks:
            raise click.UsageError("--config replaces --topic and --sink; put them in the file")
        try:
            config = load_config(config_path)
        except ConfigError as exc:
            raise click.BadParameter(str(exc), param_hint="--config") from exc
        if given("url"):
            config.url = url
        if token:
            config.token = token
    else:
        if not topics:
            raise click.UsageError("give at least one --topic (or --config FILE)")
        if not sinks:
            raise click.UsageError("give at least one --sink SPEC (or --config FILE)")
        try:
            level = parse_level(min_level)
        except ConfigError as exc:
            raise click.BadParameter(str(exc), param_hint="--min-level") from exc
        pipeline = PipelineConfig(name=name or "consume", topics=list(topics),
                                  sinks=[SinkConfig(s) for s in sinks], consumer_name=name,
                                  start=start, min_level=level,
                                  logger_prefixes=tuple(logger_prefixes), batch=batch,
                                  wait=wait)
        config = RunnerConfig(url=url, token=token, pipelines=[pipeline])
    if dead_letter:
        config.dead_letter = dead_letter
    if sink_retries is not None:
        config.sink_retries = sink_retries
    if until_empty:
        config.until_empty = True
    return config
