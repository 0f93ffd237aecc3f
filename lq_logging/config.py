"""The runner's configuration: one pydantic model for the TOML file and the options.

``lq consume --config FILE`` reads a TOML file (``examples/runner.toml``); ``lq consume
--topic ... --sink ...`` builds the same dictionary from its options. Both are validated here,
once, by :func:`config_from_dict`, so a value is refused with the same words whichever way it
came. A refusal is a :class:`ConfigError` that names the pipeline and the key and says what is
allowed; ``key`` lets the command line name its own option instead.

Names, urls, booleans and durations are checked with :mod:`sdk.contract`, the client side's
one copy of the broker's rules: a topic name accepted here is one the broker accepts.
"""

from __future__ import annotations

import logging
import os
import tomllib
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from sdk.contract import DEFAULT_URL, check_topic, check_url, parse_bool, parse_duration_ms
from sdk.transport import parse_verify

DEFAULT_DEAD_LETTER = "lq-dead-letter.jsonl"
BATCH_MAX = 1000
WAIT_MAX = 30.0
#: A lease (``--lease``, the TOML key ``lease``): from one second to one hour, the broker's own
#: bounds; 30 s unless told.
LEASE_MIN, LEASE_MAX, DEFAULT_LEASE = 1.0, 3600.0, 30.0
DEFAULT_MAX_DELIVERIES = 5


@dataclass(frozen=True)
class Problem:
    """One refused key: ``where`` (``"pipeline 2 ('db'): "`` or ``""``), the key, and what is
    wrong with it, in words that say what is allowed."""

    where: str
    key: str | None
    message: str

    def __str__(self) -> str:
        return f"{self.where}{self.key + ': ' if self.key else ''}{self.message}"


class ConfigError(ValueError):
    """The configuration (a TOML file or the options) is invalid.

    Attributes:
        problems: each refused key (the command line names its own option for one).
    """

    def __init__(self, message: str, problems: list[Problem] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


def parse_level(value: str | int | None) -> int | None:
    """``"WARNING"``/``"warning"``/``30`` -> 30; ``None`` or ``""`` -> ``None``."""
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    level = logging.getLevelName(text.upper())
    if not isinstance(level, int):
        raise ValueError(f"unknown level {value!r} (DEBUG, INFO, WARNING, ERROR, CRITICAL "
                         "or a number)")
    return level


def parse_seconds(value: object) -> float:
    """A number of seconds (``5``, ``0.2``, ``"0.2"``) or a duration (``"500ms"``, ``"5s"``)."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r} (seconds, or e.g. 500ms, 5s)")
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(str(value))
    except ValueError:
        return parse_duration_ms(str(value)) / 1000


def parse_lease(value: object) -> float:
    """A lease length: a duration (``30s``, ``2m``) or seconds, from 1 s to 1 h."""
    allowed = "a duration from 1s to 1h, e.g. 30s or 2m"
    try:
        seconds = parse_seconds(value)
    except ValueError:
        raise ValueError(f"{allowed} (got {value!r})") from None
    if not LEASE_MIN <= seconds <= LEASE_MAX:
        raise ValueError(f"{allowed} (got {value!r})")
    return seconds


def parse_max_deliveries(value: object) -> int:
    """How many times one range may be handed out: a whole number, 1 or more."""
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
        raise ValueError(f"a whole number, 1 or more: the hand-outs of one batch before its "
                         f"records go to the dead-letter file (got {value!r})")
    return int(text)


def check_urls(value: str) -> str:
    """One broker url or several, comma-separated (failover), each as sdk.contract allows."""
    for url in value.split(","):
        check_url(url)
    return value


def _listed(value: object) -> object:
    return [value] if isinstance(value, str) else value


Topic = Annotated[str, AfterValidator(check_topic)]
Seconds = Annotated[float, BeforeValidator(parse_seconds)]
Flag = Annotated[bool, BeforeValidator(parse_bool)]
Level = Annotated[int | None, BeforeValidator(parse_level)]
Urls = Annotated[str, AfterValidator(check_urls)]


class SinkConfig(BaseModel):
    """A sink's SPEC (``file:PATH``, ``sql:URL``, ...) and its keyword options."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    spec: str
    options: dict[str, Any] = Field(default_factory=dict)


def sink_from_table(table: dict[str, Any]) -> SinkConfig:
    """A ``[[pipeline.sink]]`` table: ``spec`` (or ``type``) and the sink's options; with
    ``type = "file"``/``"sql"``/``"http"`` the ``path``/``url`` key completes the SPEC."""
    options = dict(table)
    spec = options.pop("spec", None) or options.pop("type", None)
    if not spec:
        raise ValueError("a [[pipeline.sink]] needs 'spec' (or 'type')")
    if spec == "file" and "path" in options:
        spec = f"file:{options.pop('path')}"
    elif spec == "sql" and "url" in options:
        spec = f"sql:{options.pop('url')}"
    elif spec == "http" and "url" in options:
        spec = str(options.pop("url"))
    return SinkConfig(spec=str(spec), options=options)


class PipelineConfig(BaseModel):
    """One pipeline: topics -> filters -> sinks, read by one consumer name.

    Field names are the TOML keys; ``topic = "x"`` is ``topics = ["x"]``, and the
    ``[[pipeline.sink]]`` tables join the ``sinks = [SPEC, ...]`` list. ``consumer`` left out
    is the pipeline's name; ``None`` (``lq consume`` without ``--name``) registers an anonymous
    consumer, which starts at ``from`` on every run and keeps no position across restarts.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    topics: list[Topic] = Field(min_length=1)
    sinks: list[SinkConfig] = Field(min_length=1)
    consumer: str | None
    start: Literal["earliest", "latest"] = Field("earliest", alias="from")
    min_level: Level = None
    logger_prefix: Annotated[tuple[str, ...], BeforeValidator(_listed)] = ()
    batch: int = Field(500, ge=1, le=BATCH_MAX)
    wait: Seconds = Field(5.0, ge=0, le=WAIT_MAX)
    # A named pipeline takes leases (consumer groups): how long one holds without an extend,
    # and how many hand-outs of one range before its records go to the dead-letter file.
    lease: Annotated[float, BeforeValidator(parse_lease)] = DEFAULT_LEASE
    max_deliveries: Annotated[int, BeforeValidator(parse_max_deliveries)] = \
        DEFAULT_MAX_DELIVERIES

    @model_validator(mode="before")
    @classmethod
    def _toml_spellings(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if "topic" in data:
            if "topics" in data:
                raise ValueError("give 'topics' or 'topic', not both")
            data["topics"] = data.pop("topic")
        data["topics"] = _listed(data.get("topics", []))
        sinks = _listed(data.get("sinks", []))
        tables = data.pop("sink", [])
        if not isinstance(sinks, list) or not isinstance(tables, list):
            raise ValueError("'sinks' is a list of SPECs, [[pipeline.sink]] a list of tables")
        data["sinks"] = [
            *(SinkConfig(spec=spec) if isinstance(spec, str) else spec for spec in sinks),
            *(sink_from_table(t) if isinstance(t, dict) else t for t in tables)]
        data.setdefault("consumer", data.get("name"))
        return data


class RunnerConfig(BaseModel):
    """Every pipeline and the options they share. Keys as in the TOML file (``pipeline``
    is the list of ``[[pipeline]]`` tables)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: Urls = DEFAULT_URL
    token: Annotated[str | None, BeforeValidator(lambda value: value or None)] = None
    cacert: Annotated[bool | str, AfterValidator(parse_verify)] = True  # https:// CA file
    dead_letter: str = Field(DEFAULT_DEAD_LETTER, min_length=1)
    sink_retries: int = Field(3, ge=0)
    retry_backoff: Seconds = Field(0.5, ge=0)
    until_empty: Flag = False
    prefetch: Flag = True
    pipelines: list[PipelineConfig] = Field(alias="pipeline", min_length=1)

    @model_validator(mode="after")
    def _names_differ(self) -> RunnerConfig:
        names = [p.name for p in self.pipelines]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"two pipelines are named {twice[0]!r}: each name is one "
                             "consumer, so names must differ")
        return self


#: The keys a TOML file may use, for the "unknown key" message.
TOP_KEYS = sorted(f.alias or n for n, f in RunnerConfig.model_fields.items())
PIPELINE_KEYS = sorted({*(f.alias or n for n, f in PipelineConfig.model_fields.items()),
                        "topic", "sink"})


def load_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw tables of a TOML file.

    Raises:
        ConfigError: unreadable file, bad TOML.
    """
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def load_config(path: str | os.PathLike[str]) -> RunnerConfig:
    """Read and validate a runner TOML file (see ``examples/runner.toml``).

    Raises:
        ConfigError: unreadable file, bad TOML, unknown keys, bad values.
    """
    return config_from_dict(load_toml(path), source=str(path))


def config_from_dict(data: dict[str, Any], source: str = "config") -> RunnerConfig:
    """Validate ``data`` (TOML's shape).

    Raises:
        ConfigError: every problem found, each naming its pipeline and key.
    """
    try:
        return RunnerConfig.model_validate(data)
    except ValidationError as exc:
        problems = [_describe(error, data) for error in exc.errors()]
        raise ConfigError(f"{source}: " + "; ".join(map(str, problems)), problems) from None


_REQUIRED = {"name": "required (it is also the consumer name)",
             "topics": "required (topics = [\"app\"] or topic = \"app\")",
             "sinks": "required: 'sinks = [SPEC, ...]' or [[pipeline.sink]] tables"}


def _describe(error: Any, data: dict[str, Any]) -> Problem:
    """A pydantic error as a :class:`Problem`, with the pipeline's number and name."""
    loc = list(error["loc"])
    where = ""
    if loc[:1] == ["pipeline"] and len(loc) > 1 and isinstance(loc[1], int):
        raw = data["pipeline"][loc[1]]
        name = raw.get("name") if isinstance(raw, dict) else None
        where = f"pipeline {loc[1] + 1}" + (f" ({name!r})" if name else "") + ": "
        loc = loc[2:]
    key = ".".join(str(part) for part in loc if not isinstance(part, int)) or None
    kind = error["type"]
    if kind == "extra_forbidden":
        allowed = PIPELINE_KEYS if where else TOP_KEYS
        return Problem(where, key, f"unknown key (allowed: {', '.join(allowed)})")
    if key == "pipeline" and kind in ("missing", "too_short", "list_type"):
        return Problem(where, None, "no [[pipeline]] table")
    if kind in ("missing", "too_short"):
        return Problem(where, key, _REQUIRED.get(key or "", "required"))
    if kind == "value_error":
        return Problem(where, key, str(error["ctx"]["error"]))
    message = f"{error['msg'][:1].lower()}{error['msg'][1:]} (got {error['input']!r})"
    return Problem(where, key, message)


__all__ = ["BATCH_MAX", "DEFAULT_DEAD_LETTER", "DEFAULT_LEASE", "DEFAULT_MAX_DELIVERIES",
           "WAIT_MAX", "ConfigError", "PipelineConfig",
           "Problem", "RunnerConfig", "SinkConfig", "config_from_dict", "load_config",
           "load_toml", "parse_lease", "parse_level", "parse_max_deliveries", "parse_seconds"]
