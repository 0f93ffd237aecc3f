"""``lq consume``: drain topics into sinks (the runner's command line).

Found by the ``lq`` group through the ``lq.commands`` entry point ``consume``. The options
(or the TOML file, with the options on top) make one dictionary that
:func:`~lq_logging.config.config_from_dict` validates; a refusal names the option that gave
the value (or ``--config``). This is the only module of ``lq_logging`` that imports click.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from lq_logging.config import (
    BATCH_MAX,
    DEFAULT_DEAD_LETTER,
    DEFAULT_MAX_DELIVERIES,
    WAIT_MAX,
    ConfigError,
    PipelineConfig,
    RunnerConfig,
    SinkConfig,
    config_from_dict,
    load_toml,
)
from lq_logging.runner import Runner, check_broker
from sdk.contract import DEFAULT_URL, format_duration

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
  lq consume --topic app --sink https://logs.example.com/ingest --name shippers \\
      --lease 2m --max-deliveries 3    # start it 4 times: the 4 share the work
  lq consume --config runner.toml --dry-run     # check the file, the sinks and the broker

\b
Delivery is at least once: fetch, write and flush every sink, then commit. With --name the
position survives restarts, and runners started with the same name share the work: each
batch is a lease that one of them holds (extended while its sinks work) and acks once
written; a dead runner's lease goes to another when it expires (--lease). A batch handed out
more than --max-deliveries times goes to the dead-letter file instead. Use one name per
independent runner. SIGTERM or Ctrl-C finishes the batch in hand, commits and exits 0; a
second signal exits at once (128+N). While the broker does not answer, the runner retries
and says so every few seconds.

\b
Exit status:
  0    stopped by a signal (or --until-empty): everything written is committed
  1    a pipeline failed (a sink kept failing, the broker refused the consumer);
       with --dry-run: the broker does not answer or refuses the token
  2    bad options or configuration
  75   a signal came while a sink (or the commit) was failing: the runner stopped
       retrying at once and did not commit the batch in hand; the next start delivers it
       again (nothing is lost)
"""

#: The option that gives each configuration key, to name it when the value is refused.
OPTION_OF = {"url": "--url", "token": "--token", "topics": "--topic", "sinks": "--sink",
             "cacert": "--cacert",
             "name": "--name", "consumer": "--name", "from": "--from",
             "min_level": "--min-level", "logger_prefix": "--logger-prefix", "batch": "--batch",
             "wait": "--wait", "dead_letter": "--dead-letter", "sink_retries": "--sink-retries",
             "lease": "--lease", "max_deliveries": "--max-deliveries"}
#: Pipeline keys an option sets for every pipeline of a --config file too.
PIPELINE_OVERRIDES = ("lease", "max_deliveries")


@click.command("consume", epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"],
                                                           "max_content_width": 100})
@click.option("--url", envvar="LQ_URL", default=DEFAULT_URL, show_default=True,
              help="Broker url(s), comma-separated for failover. [env: LQ_URL]")
@click.option("--token", envvar="LQ_TOKEN", default=None,
              help="The broker's token. [env: LQ_TOKEN]")
@click.option("--cacert", envvar="LQ_CACERT", default=None, metavar="PATH",
              help="For https:// urls: the CA file of the broker's certificate ('false': "
                   "no check). [env: LQ_CACERT]")
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
@click.option("--batch", type=int, default=500, show_default=True,
              help=f"Records per fetch (1 to {BATCH_MAX}).")
@click.option("--wait", default="5s", show_default=True, metavar="DURATION",
              help=f"How long a fetch long-polls when the topic is drained: seconds (0.5) or "
                   f"a duration (500ms, 5s); at most {WAIT_MAX:g}s.")
@click.option("--lease", default=None, metavar="DURATION",
              help="With --name: how long a runner holds a batch before another runner may "
                   "take it (extended while its sinks work, so this is how soon a dead "
                   "runner's batch is redelivered); 1s to 1h.  [default: 30s]")
@click.option("--max-deliveries", default=None, metavar="N",
              help="With --name: hand-outs of one batch (it failed, or its runner died) "
                   "before its records go to the dead-letter file instead; 1 or more.  "
                   f"[default: {DEFAULT_MAX_DELIVERIES}]")
@click.option("--dead-letter", default=None, metavar="PATH",
              help=f"Where rejected records go. [default: {DEFAULT_DEAD_LETTER}]")
@click.option("--sink-retries", type=int, default=None,
              help="Retries of a failing sink before its pipeline stops. [default: 3]")
@click.option("--until-empty", is_flag=True,
              help="Exit 0 at the first empty fetch of every topic (no long-poll).")
@click.option("--progress", is_flag=True, help="Show a live status line and a summary at exit.")
@click.option("--dry-run", is_flag=True,
              help="Validate the configuration, open every sink, check that the broker "
                   "answers and accepts the token, then exit.")
@click.pass_context
def consume_command(ctx: click.Context, config_path: str | None, progress: bool,
                    dry_run: bool, **options: Any) -> None:
    """Drain topics into sinks: files, a database, an HTTP endpoint, stdout, logging."""
    config = _build_config(ctx, config_path, options)
    runner = Runner(config, progress=progress)

    def bad_sink(pcfg: PipelineConfig, index: int, scfg: SinkConfig,
                 exc: Exception) -> click.BadParameter:
        hint = ("--sink" if config_path is None
                else f"--config (pipeline {pcfg.name!r}, sink {index})")
        return click.BadParameter(str(exc), param_hint=hint)

    runner.build_sinks(on_error=bad_sink)
    if dry_run:
        runner.close_sinks()
        sys.exit(_dry_run(config))
    if any(p.consumer is None for p in config.pipelines):
        click.echo("lq consume: no --name: the position is not kept across restarts",
                   err=True)
    sys.exit(runner.run())


def _dry_run(config: RunnerConfig) -> int:
    """Say what would run; check the broker. The exit status."""
    for p in config.pipelines:
        filters = []
        if p.min_level is not None:
            filters.append(f"level >= {p.min_level}")
        if p.logger_prefix:
            filters.append("logger in " + ",".join(p.logger_prefix))
        click.echo(f"pipeline {p.name!r}: topics {', '.join(p.topics)} -> "
                   f"{', '.join(s.spec for s in p.sinks)}"
                   + (f" (filters: {'; '.join(filters)})" if filters else "")
                   + f"; consumer {p.consumer or '(anonymous)'}"
                   + (f" (leases of {format_duration(int(p.lease * 1000))}, dead-letter after "
                      f"{p.max_deliveries} deliveries)" if p.consumer else ""))
    problem = check_broker(config)
    if problem:
        click.echo(f"lq consume: {problem}", err=True)
        return 1
    click.echo(f"broker {config.url} answers" + (" and accepts the token" if config.token
                                                 else ""))
    click.echo("configuration OK")
    return 0


def _build_config(ctx: click.Context, config_path: str | None,
                  options: dict[str, Any]) -> RunnerConfig:
    """Options, environment and TOML file -> RunnerConfig (options and environment win;
    --lease and --max-deliveries apply to every pipeline of the file)."""
    given = {key: options[key] for key in ("url", "token", "cacert", "dead_letter",
                                           "sink_retries")
             if ctx.get_parameter_source(key) not in (None, click.core.ParameterSource.DEFAULT)
             and options[key] is not None}
    if options["until_empty"]:
        given["until_empty"] = True
    overrides = {key: options[key] for key in PIPELINE_OVERRIDES if options[key] is not None}
    if config_path:
        if options["topics"] or options["sinks"]:
            raise click.UsageError("--config replaces --topic and --sink; put them in the file")
        try:
            data = {**load_toml(config_path), **given}
        except ConfigError as exc:
            raise click.BadParameter(str(exc), param_hint="--config") from exc
        if overrides and isinstance(data.get("pipeline"), list):
            data["pipeline"] = [{**p, **overrides} if isinstance(p, dict) else p
                                for p in data["pipeline"]]
    else:
        if not options["topics"]:
            raise click.UsageError("give at least one --topic (or --config FILE)")
        if not options["sinks"]:
            raise click.UsageError("give at least one --sink SPEC (or --config FILE)")
        if overrides and not options["name"]:
            raise click.UsageError(
                f"{' and '.join(OPTION_OF[k] for k in overrides)} "
                f"need{'s' if len(overrides) == 1 else ''} --name: a runner without a name "
                "reads alone, without leases")
        data = {**given, "pipeline": [{
            "name": options["name"] or "consume", "consumer": options["name"],
            "topics": list(options["topics"]), "sinks": list(options["sinks"]),
            "from": options["start"], "min_level": options["min_level"],
            "logger_prefix": list(options["logger_prefixes"]), "batch": options["batch"],
            "wait": options["wait"], **overrides}]}
    try:
        return config_from_dict(data, source=config_path or "options")
    except ConfigError as exc:
        raise _refusal(exc, config_path, {**given, **overrides}) from exc


def _refusal(exc: ConfigError, config_path: str | None,
             given: dict[str, Any]) -> click.BadParameter:
    """The error naming the option that gave the first refused value (else --config)."""
    first = exc.problems[0] if exc.problems else None
    if (first is not None and first.key in OPTION_OF
            and (config_path is None or first.key in given)):
        return click.BadParameter(first.message, param_hint=OPTION_OF[first.key])
    return click.BadParameter(str(exc), param_hint="--config" if config_path else None)
