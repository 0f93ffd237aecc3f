"""The broker's and the SDK's copies of the contract's rules agree, case by case."""

from __future__ import annotations

import pytest
import requests
from contract_cases import DURATIONS, TOPICS

from broker.retention import parse_duration_ms as broker_duration
from sdk.contract import is_topic_name
from sdk.contract import parse_duration_ms as sdk_duration


@pytest.mark.parametrize(("text", "expected"), DURATIONS)
@pytest.mark.parametrize("parse", [broker_duration, sdk_duration], ids=["broker", "sdk"])
def test_durations(parse, text: str, expected: int | None) -> None:
    if expected is None:
        with pytest.raises(ValueError):
            parse(text)
    else:
        assert parse(text) == expected


@pytest.mark.parametrize(("name", "accepted"), TOPICS)
def test_sdk_topic_rule(name: str, accepted: bool) -> None:
    assert is_topic_name(name) is accepted


def test_broker_topic_rule_over_http(broker) -> None:
    """The broker itself decides every case; the SDK's rule must give the same answers."""
    answers = {}
    for name, _ in TOPICS:
        reply = requests.post(f"{broker.url}/topics", json={"topic_name": name}, timeout=10)
        answers[name] = reply.status_code == 200 or reply.json().get("error") == "topic_exists"
    assert answers == {name: accepted for name, accepted in TOPICS}
