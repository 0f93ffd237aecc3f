"""The runner's configuration (TOML and options -> one pydantic model), checked without a
broker: every refusal names the pipeline and the key and says what is allowed. Also: the
library side of lq_logging does not import the command line's toolkit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support import clean_env

from lq_logging.config import ConfigError, config_from_dict, load_config


def test_import_lq_logging_does_not_import_click() -> None:
    """An application that only logs must not pay for (or depend on) click."""
    code = ("import lq_logging, lq_logging.sinks, sys; "
            "assert 'click' not in sys.modules, 'click imported'")
    done = subprocess.run([sys.executable, "-c", code], env=clean_env(), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def _refusal(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        config_from_dict(data, source="runner.toml")
    return str(caught.value)


def _pipeline(**keys: Any) -> dict[str, Any]:
    return {"pipeline": [{"name": "p", "topics": ["app"], "sinks": ["stdout"], **keys}]}


def test_toml_spellings_make_one_model() -> None:
    config = config_from_dict({
        "url": "http://a:5000,http://b:5000", "until_empty": "yes", "retry_backoff": "250ms",
        "pipeline": [
            {"name": "one", "topic": "app", "min_level": "warning", "logger_prefix": "app.db",
             "wait": "500ms", "sinks": ["stdout"],
             "sink": [{"type": "file", "path": "/tmp/x.jsonl", "format": "text"},
                      {"type": "sql", "url": "sqlite:///x.db"},
                      {"type": "http", "url": "https://h/ingest", "timeout": 3},
                      {"spec": "mypkg:Sink", "level": 1}]},
            {"name": "two", "topics": ["a", "b"], "consumer": "reader", "from": "latest",
             "batch": 1000, "wait": 0, "sinks": ["stdout:json"]}]})
    one, two = config.pipelines
    assert config.until_empty is True and config.retry_backoff == 0.25
    assert (one.topics, one.min_level, one.logger_prefix, one.wait) == (
        ["app"], 30, ("app.db",), 0.5)
    assert one.consumer == "one", "the consumer name defaults to the pipeline's"
    assert [(s.spec, s.options) for s in one.sinks] == [
        ("stdout", {}), ("file:/tmp/x.jsonl", {"format": "text"}), ("sql:sqlite:///x.db", {}),
        ("https://h/ingest", {"timeout": 3}), ("mypkg:Sink", {"level": 1})]
    assert (two.consumer, two.start, two.batch, two.wait) == ("reader", "latest", 1000, 0.0)
    anonymous = config_from_dict(_pipeline(consumer=None)).pipelines[0]
    assert anonymous.consumer is None, "lq consume without --name"


@pytest.mark.parametrize(("data", "words"), [
    ({"pipelines": []}, ["no [[pipeline]] table", "pipelines: unknown key (allowed: ",
                         "dead_letter, pipeline, prefetch"]),
    (_pipeline(min_levle=3), ["pipeline 1 ('p'): min_levle: unknown key (allowed: batch, ",
                              "logger_prefix, max_deliveries, min_level"]),
    (_pipeline(batch=5000), ["pipeline 1 ('p'): batch: ", "less than or equal to 1000",
                             "(got 5000)"]),
    (_pipeline(wait=31), ["pipeline 1 ('p'): wait: ", "less than or equal to 30"]),
    (_pipeline(wait="5 minutes"), ["wait: not a duration: '5 minutes'"]),
    ({"pipeline": [{"name": "p", "topics": ["app"]}]},
     ["pipeline 1 ('p'): sinks: required: 'sinks = [SPEC, ...]' or [[pipeline.sink]]"]),
    ({"pipeline": [{"topics": ["app"], "sinks": ["stdout"]}]},
     ["pipeline 1: name: required (it is also the consumer name)"]),
    (_pipeline(topics=["app", "no spaces"]), ["pipeline 1 ('p'): topics: not a topic name: "
                                              "'no spaces' (1-200 characters"]),
    (_pipeline(topics=[]), ["pipeline 1 ('p'): topics: required"]),
    (_pipeline(topic="app"), ["give 'topics' or 'topic', not both"]),
    (_pipeline(sink=[{"path": "x"}]), ["a [[pipeline.sink]] needs 'spec' (or 'type')"]),
    ({**_pipeline(), "pipeline": [*_pipeline()["pipeline"], *_pipeline()["pipeline"]]},
     ["two pipelines are named 'p'"]),
    (_pipeline(**{"from": "middle"}), ["from: input should be 'earliest' or 'latest'"]),
    (_pipeline(min_level="LOUD"), ["min_level: unknown level 'LOUD' (DEBUG, INFO"]),
    ({**_pipeline(), "url": "http//127.0.0.1:5000"}, ["url: not a broker url"]),
    ({**_pipeline(), "prefetch": "perhaps"}, ["prefetch: not a boolean: 'perhaps'"]),
    ({**_pipeline(), "sink_retries": -1}, ["sink_retries: ", "greater than or equal to 0"]),
])
def test_refusals_name_the_pipeline_the_key_and_what_is_allowed(
        data: dict[str, Any], words: list[str]) -> None:
    message = _refusal(data)
    assert message.startswith("runner.toml: ")
    for word in words:
        assert word in message, message


def test_a_toml_file_that_cannot_be_read_or_parsed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[pipeline]\nname = 1\n")
    with pytest.raises(ConfigError, match="bad.toml"):
        load_config(bad)


def test_the_example_file_is_valid() -> None:
    """examples/runner.toml is what users copy: it must load as it is."""
    config = load_config(Path(__file__).parent.parent / "examples" / "runner.toml")
    assert [p.name for p in config.pipelines] == ["archive", "db-alerts"]
    assert config.retry_backoff == 0.5 and config.pipelines[0].wait == 5.0
    assert [s.spec for s in config.pipelines[1].sinks] == [
        "stdout", "https://alerts.example.com/ingest"]
