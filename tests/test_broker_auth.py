"""Bearer-token auth: with a token set, every endpoint but /healthz refuses a missing or wrong
token with 401 ``unauthorized`` (checked first, before validation and routing); the right
token works. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from lqhttp import Api, unique_topic
from support import BrokerProcess

TOKEN = "s3cret-T0ken"
WRONG_HEADERS = {
    "missing": None,
    "wrong": f"Bearer {TOKEN}x",
    "prefix": f"Bearer {TOKEN[:-1]}",
    "empty": "Bearer ",
    "no-scheme": TOKEN,
    "basic": f"Basic {TOKEN}",
    "case": f"Bearer {TOKEN.upper()}",
}


@dataclass
class Secured:
    proc: BrokerProcess
    topic: str
    pid: int
    cid: int


@pytest.fixture(scope="module")
def secured(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """A broker started with LQ_TOKEN (module-local: start_broker is function-scoped)."""
    log = tmp_path_factory.mktemp("auth") / "broker.log"
    with BrokerProcess(db_url, token=TOKEN, log_path=log) as proc, Api(proc.url, TOKEN) as api:
        topic = unique_topic("auth")
        pid = api.producer(topic)
        cid = api.consumer(topic)
        api.produce(topic, pid, "seed")
        yield Secured(proc, topic, pid, cid)


def requests_for(s: Secured) -> list[tuple[str, str, dict[str, Any] | None]]:
    ids = {"topic": s.topic, "consumer_id": s.cid}
    return [
        ("POST", "/topics", {"topic_name": unique_topic("auth")}),
        ("GET", "/topics", None),
        ("POST", "/producer/register", {"topic": unique_topic("auth")}),
        ("POST", "/consumer/register", {"topic": s.topic}),
        ("POST", "/producer/produce", {"topic": s.topic, "producer_id": s.pid, "message": "x"}),
        ("GET", "/consumer/consume", ids),
        ("GET", "/consumer/consume", {**ids, "max": 5, "wait_ms": 0}),
        ("GET", "/size", ids),
        ("GET", "/consumer/fetch", ids),
        ("POST", "/consumer/commit", {**ids, "offset": 1}),
        ("GET", "/stats", None),
        ("GET", "/status", None),
        ("GET", "/openapi.json", None),
        # Refused before routing and validation, so nothing leaks about either.
        ("GET", "/no/such/path", None),
        ("DELETE", "/topics", None),
        ("POST", "/producer/produce", {"topic": "bad name!"}),
    ]


@pytest.mark.parametrize("header", WRONG_HEADERS.values(), ids=WRONG_HEADERS.keys())
def test_missing_or_wrong_token_is_refused_everywhere(secured: Secured, header: str | None
                                                      ) -> None:
    with Api(secured.proc.url) as api:
        headers = {"Authorization": header} if header is not None else {}
        for method, path, fields in requests_for(secured):
            api.fail(method, path, fields, 401, "unauthorized", headers=headers)
    with Api(secured.proc.url, TOKEN) as api:
        body = api.fetch(secured.topic, secured.cid)
        assert [m["message"] for m in body["messages"]] == ["seed"], "a refused request acted"
        assert body["position"] == 0
        assert not any(t.startswith("auth-") and t != secured.topic for t in api.topics())


def test_healthz_needs_no_token(secured: Secured) -> None:
    with Api(secured.proc.url) as api:
        assert api.ok("GET", "/healthz")["status"] == "success"


def test_right_token_works_everywhere(secured: Secured) -> None:
    with Api(secured.proc.url, TOKEN) as api:
        topic = unique_topic("auth-ok")
        api.create_topic(topic)
        assert topic in api.topics()
        pid = api.producer(topic)
        cid = api.consumer(topic)
        assert api.produce(topic, pid, "hello")["offsets"] == [0, 0]
        assert api.size(topic, cid) == 1
        assert api.fetch(topic, cid)["position"] == 0
        assert api.consume(topic, cid).body["message"] == "hello"
        assert api.commit(topic, cid, 1) == 1
        assert api.consume_batch(topic, cid, max=5) == []
        assert any(row["topic"] == topic for row in api.ok("GET", "/stats")["topics"])
        assert api.ok("GET", "/status")["status"] == "success"
        assert api.ok("GET", "/healthz")["status"] == "success"
        # With the right token, the usual failures come back (auth is checked, then the rest).
        api.fail("GET", "/no/such/path", None, 404, "not_found")
        api.fail("POST", "/producer/produce", {"topic": topic}, 400, "bad_request")
