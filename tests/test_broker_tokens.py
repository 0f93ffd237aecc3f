"""Scoped tokens: each verb checked against the topic (403 ``forbidden``), tokens stored only as
SHA-256, revocation seen by every broker on the database, and `lq tokens`. Runs on SQLite and
PostgreSQL; the two-broker revocation on PostgreSQL.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from lqhttp import Api, unique_topic
from runner_helpers import make_record, read_jsonl, run_once
from support import LQ, BrokerProcess, clean_env, wait_until

ADMIN = "bootstrap-Adm1n-token"


@pytest.fixture(scope="module")
def secured(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """A broker with a bootstrap admin token (LQ_TOKEN)."""
    log = tmp_path_factory.mktemp("tokens") / "broker.log"
    with BrokerProcess(db_url, token=ADMIN, log_path=log) as proc:
        yield proc


def new_token(url: str, **scopes: Any) -> dict[str, Any]:
    with Api(url, ADMIN) as admin:
        body = admin.ok("POST", "/tokens", scopes)
    assert body["token"].startswith("lq_") and len(body["token"]) > 40, body
    return body


def forbidden(api: Api, method: str, path: str, fields: dict[str, Any] | None) -> None:
    api.fail(method, path, fields, 403, "forbidden")


def test_a_produce_only_token_produces_to_its_topics_and_nothing_else(
        secured: BrokerProcess) -> None:
    prefix = unique_topic("app")
    mine, other = f"{prefix}-x", unique_topic("other")
    token = new_token(secured.url, produce=[f"{prefix}-*"])["token"]
    with Api(secured.url, ADMIN) as admin:
        admin.producer(other)
        cid_other = admin.consumer(other)
    with Api(secured.url, token) as api:
        pid = api.producer(mine)
        assert api.produce(mine, pid, "hello")["offsets"] == [0, 0]
        assert api.produce(mine, pid, messages=["a", "b"])["offsets"] == [1, 2]
        forbidden(api, "POST", "/producer/register", {"topic": other})
        forbidden(api, "POST", "/producer/produce", {"topic": other, "producer_id": pid,
                                                     "message": "x"})
        with Api(secured.url, ADMIN) as admin:
            cid = admin.consumer(mine)
        for method, path, fields in [
                ("POST", "/consumer/register", {"topic": mine}),
                ("GET", "/consumer/consume", {"topic": mine, "consumer_id": cid}),
                ("GET", "/consumer/fetch", {"topic": mine, "consumer_id": cid}),
                ("POST", "/consumer/commit", {"topic": mine, "consumer_id": cid, "offset": 1}),
                ("GET", "/size", {"topic": mine, "consumer_id": cid}),
                ("GET", "/topics/describe", {"topic": mine}),
                ("DELETE", "/topics", {"topic": mine}),
                ("POST", "/topics", {"topic_name": f"{prefix}-new"}),
                ("PATCH", "/topics", {"topic": mine, "retention_ms": 1}),
                ("GET", "/tokens", None),
                ("POST", "/tokens", {"admin": True}),
                ("GET", "/consumer/consume", {"topic": other, "consumer_id": cid_other})]:
            forbidden(api, method, path, fields)
        # Any valid token sees the read-only pages, with only the topics it may read.
        assert api.ok("GET", "/stats")["topics"] == []
        assert api.topics() == []
        assert api.session.get(secured.url + "/openapi.json", timeout=10).json()["paths"]
    with Api(secured.url, ADMIN) as admin:
        assert [m["message"] for m in admin.read_all(mine, cid)] == ["hello", "a", "b"]
        assert mine in admin.topics()  # the refused delete did nothing


def test_a_consume_only_token_reads_its_topics_and_cannot_take_over_others(
        secured: BrokerProcess) -> None:
    prefix = unique_topic("app")
    mine, other = f"{prefix}-x", unique_topic("other")
    token = new_token(secured.url, consume=[f"{prefix}-*"])["token"]
    with Api(secured.url, ADMIN) as admin:
        for topic in (mine, other):
            pid = admin.producer(topic)
            admin.produce(topic, pid, messages=["m0", "m1", "m2"])
        billing = admin.consumer(other, consumer_name="billing")
    with Api(secured.url, token) as api:
        cid = api.consumer(mine, consumer_name="runner")
        assert api.size(mine, cid) == 3
        body = api.fetch(mine, cid)
        assert [m["message"] for m in body["messages"]] == ["m0", "m1", "m2"]
        assert api.commit(mine, cid, 2) == 2
        assert api.consume(mine, cid).body["message"] == "m2"
        assert api.ok("GET", "/topics/describe", {"topic": mine})["topic"] == mine
        forbidden(api, "POST", "/producer/register", {"topic": mine})
        forbidden(api, "POST", "/producer/produce", {"topic": mine, "producer_id": 1,
                                                     "message": "x"})
        # The named consumer of a topic outside the globs: neither its id nor its position.
        forbidden(api, "POST", "/consumer/register", {"topic": other, "consumer_name": "billing"})
        forbidden(api, "POST", "/consumer/commit", {"topic": other, "consumer_id": billing,
                                                    "offset": 3})
        forbidden(api, "GET", "/consumer/consume", {"topic": other, "consumer_id": billing})
        forbidden(api, "GET", "/topics/describe", {"topic": other})
        # Its id on a topic it may read is not a way in either: the id belongs to `other`.
        api.fail("POST", "/consumer/commit", {"topic": mine, "consumer_id": billing,
                                              "offset": 3}, 400, "not_registered")
        assert [t["topic"] for t in api.ok("GET", "/stats")["topics"]] == [mine]
        assert api.topics() == [mine]
    with Api(secured.url, ADMIN) as admin:
        described = admin.ok("GET", "/topics/describe", {"topic": other})
        assert [(c["name"], c["position"]) for c in described["consumers"]] == [("billing", 0)]
        assert {t["topic"] for t in admin.ok("GET", "/stats")["topics"]} >= {mine, other}


def test_metrics_show_only_readable_topics(secured: BrokerProcess) -> None:
    prefix = unique_topic("met")
    mine, other = f"{prefix}-a", unique_topic("hidden")
    token = new_token(secured.url, consume=[f"{prefix}-*"])["token"]
    with Api(secured.url, ADMIN) as admin:
        for topic in (mine, other):
            admin.producer(topic)
    text = Api(secured.url, token).session.get(secured.url + "/metrics", timeout=10).text
    assert f'topic="{mine}"' in text
    assert f'topic="{other}"' not in text


def test_tokens_are_listed_without_the_token_and_revoked(secured: BrokerProcess) -> None:
    name = unique_topic("tok")
    created = new_token(secured.url, name=name, produce=["a-*", "b?"], consume=["c-[xy]"])
    token = created["token"]
    with Api(secured.url, token) as api:
        api.producer(unique_topic("a"))
    with Api(secured.url, ADMIN) as admin:
        reply = admin.request("GET", "/tokens")
        assert token not in str(reply.body) and token[3:] not in str(reply.body)
        row = next(t for t in reply.body["tokens"] if t["name"] == name)
        assert (row["produce"], row["consume"], row["admin"]) == (["a-*", "b?"], ["c-[xy]"],
                                                                   False)
        assert row["created"] and row["last_used"], row
        admin.fail("POST", "/tokens", {"name": name, "admin": True}, 400, "token_exists")
        admin.fail("POST", "/tokens", {"name": unique_topic("tok")}, 400, "bad_request")
        admin.fail("POST", "/tokens", {"produce": ["bad glob/"]}, 400, "bad_request")
        admin.ok("DELETE", "/tokens", {"name": name})
        admin.fail("DELETE", "/tokens", {"name": name}, 400, "unknown_token")
        assert name not in [t["name"] for t in admin.ok("GET", "/tokens")["tokens"]]
    with Api(secured.url, token) as api:  # every worker within its cache time (0.5 s)
        wait_until(lambda: api.request("GET", "/stats").code == 401, timeout=1.0,
                   message="the revoked token refused")


def test_the_bearer_scheme_is_matched_without_regard_to_case(secured: BrokerProcess) -> None:
    token = new_token(secured.url, consume=["*"])["token"]
    with Api(secured.url) as api:
        for scheme in ("bearer", "BEARER", "Bearer"):
            api.ok("GET", "/stats", headers={"Authorization": f"{scheme} {token}"})
        api.fail("GET", "/stats", None, 401, "unauthorized",
                 headers={"Authorization": f"Bearer {token.upper()}"})


def test_no_table_holds_a_token_in_clear(secured: BrokerProcess) -> None:
    tokens = [new_token(secured.url, name=unique_topic("clear"), produce=["*"])["token"]
              for _ in range(2)]
    for token in tokens:
        with Api(secured.url, token) as api:
            api.producer(unique_topic("clear"))  # used: last_used is written
    engine = sa.create_engine(secured.db_url.replace("postgresql://", "postgresql+psycopg2://"))
    try:
        searched = 0
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            for table in inspector.get_table_names():
                for column in inspector.get_columns(table):
                    if not isinstance(column["type"], sa.String):  # Text is a String too
                        continue
                    searched += 1
                    for token in tokens:
                        found = conn.execute(
                            sa.text(f'SELECT COUNT(*) FROM "{table}" '
                                    f'WHERE "{column["name"]}" LIKE :part'),
                            {"part": f"%{token[3:20]}%"}).scalar_one()
                        assert found == 0, f"{table}.{column['name']} holds a token in clear"
        assert searched >= 5  # the tokens' name and digest columns among them
    finally:
        engine.dispose()


def test_with_no_token_anywhere_auth_is_off_until_the_first_admin_token(
        start_broker, tmp_path: Path) -> None:
    proc = start_broker(f"sqlite:///{tmp_path / 'open.db'}")
    with Api(proc.url) as api:
        topic = unique_topic("open")
        api.producer(topic)  # no token needed
        api.fail("POST", "/tokens", {"produce": ["*"]}, 400, "bad_request")  # no admin left
        token = api.ok("POST", "/tokens", {"name": "first", "admin": True})["token"]
        api.fail("GET", "/stats", None, 401, "unauthorized")
    with Api(proc.url, token) as api:
        assert topic in api.topics()


def test_revoked_through_one_broker_refused_by_another_within_two_seconds(
        pg_url: str, start_broker) -> None:
    a = start_broker(pg_url, token=ADMIN)
    b = start_broker(pg_url, token=ADMIN)
    created = new_token(a.url, produce=["rev-*"])
    with Api(b.url, created["token"]) as api:
        api.producer("rev-1")  # B knows the token (and caches it)
        with Api(a.url, ADMIN) as admin:
            admin.ok("DELETE", "/tokens", {"name": created["name"]})
        revoked = time.monotonic()

        def refused() -> bool:
            reply = api.request("POST", "/producer/register", {"topic": "rev-1"})
            return reply.code == 401 and reply.body["error"] == "unauthorized"

        wait_until(refused, timeout=2.0, message="broker B refusing the revoked token")
        assert time.monotonic() - revoked < 2.0


def lq(url: str, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = clean_env(LQ_URL=url, LQ_TOKEN=token)
    return subprocess.run([LQ, *args], env=env, capture_output=True, text=True, timeout=60)


def test_lq_tokens_create_list_revoke(secured: BrokerProcess) -> None:
    name = unique_topic("cli")
    run = lq(secured.url, ADMIN, "tokens", "create", "--name", name, "--produce", "cli-*",
             "--consume", "cli-*", "--consume", "audit")
    assert run.returncode == 0, run.stderr
    token = run.stdout.strip()
    assert token.startswith("lq_") and "\n" not in token, run.stdout
    with Api(secured.url, token) as api:
        api.producer(unique_topic("cli"))
    listed = lq(secured.url, ADMIN, "tokens", "list")
    assert listed.returncode == 0, listed.stderr
    line = next(row for row in listed.stdout.splitlines() if row.startswith(name))
    assert "produce cli-*; consume cli-*,audit" in line and "never" not in line, line
    assert token[3:] not in listed.stdout
    refused = lq(secured.url, token, "tokens", "list")
    assert refused.returncode == 1 and "may not" in refused.stderr, refused.stderr
    revoke = lq(secured.url, ADMIN, "tokens", "revoke", name)
    assert revoke.returncode == 0, revoke.stderr
    # Another worker may answer from its token cache for up to a second (the contract's
    # "everywhere within a second"): poll, within a generous deadline.
    gone = wait_until(lambda: (run := lq(secured.url, token, "topics")).returncode and run,
                      timeout=20, interval=0.2, message="the revoked token refused")
    assert gone.returncode == 1 and "refused the token" in gone.stderr, gone.stderr


def test_the_runner_drains_with_a_consume_only_token(secured: BrokerProcess,
                                                     tmp_path: Path) -> None:
    """It may not create the topic (403): it goes on and reads it; producing needs no admin."""
    prefix = unique_topic("run")
    topic = f"{prefix}-x"
    producer = new_token(secured.url, produce=[f"{prefix}-*"])["token"]
    reader = new_token(secured.url, consume=[f"{prefix}-*"])["token"]
    records = [make_record(i) for i in range(30)]
    with Api(secured.url, producer) as api:
        pid = api.producer(topic)
        api.produce(topic, pid, messages=[json.dumps(r) for r in records])
    out = tmp_path / "out.jsonl"
    run = run_once(["--url", secured.url, "--topic", topic, "--sink", f"file:{out}",
                    "--name", "archiver", "--until-empty"], tmp_path, env={"LQ_TOKEN": reader})
    assert run.returncode == 0, run.stderr
    assert [r["message"] for r in read_jsonl(out)] == [r["message"] for r in records]
    refused = run_once(["--url", secured.url, "--topic", unique_topic("elsewhere"), "--sink",
                        "stdout", "--until-empty"], tmp_path, env={"LQ_TOKEN": reader})
    assert refused.returncode == 1 and "refused the token" in refused.stderr, refused.stderr
