"""Reads start at the position: consume, fetch and size cost the same at offset 0 and deep in
a long topic (issue 18). Shown with the database's own plans, not with timings: the messages
scan is an index range scan bounded below by the position, and it visits only the rows it
returns."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Connection, create_engine, text
from support import plan_nodes

from broker.app import database_url
from broker.store import AppendRequest, Store, configure_engine, create_schema
from broker.store import queries as q

MESSAGES = 20_000
LIMIT = 100
DEEP = MESSAGES - 500


@pytest.fixture(scope="module")
def long_topic(db_url: str) -> Iterator[tuple[Store, int, int]]:
    """A store, the id of a topic of MESSAGES messages, and a consumer positioned at DEEP."""
    engine = create_engine(database_url(db_url))
    configure_engine(engine)
    create_schema(engine)
    store = Store(engine)
    pid = store.producers.register("long")
    for start in range(0, MESSAGES, 10_000):
        store.producers.append("long", AppendRequest(pid, [f"m{i}" for i in range(start,
                                                                                 start + 10_000)]))
    cid = store.consumers.register("long")
    assert store.consumers.commit("long", cid, DEEP) == DEEP
    with engine.begin() as conn:
        conn.execute(text("ANALYZE"))
    yield store, store.caches.topic_id("long"), cid
    engine.dispose()


def pg_scans(conn: Connection, statement: str, params: dict) -> list[dict]:
    """The plan nodes that read lq_messages, as EXPLAIN ANALYZE ran them (then rolled back)."""
    return [node for node in plan_nodes(conn, statement, params)
            if node.get("Relation Name") == "lq_messages"]


def test_the_consume_statement_reads_only_from_the_position(long_topic) -> None:
    store, topic_id, cid = long_topic
    if store.dialect != "postgresql":
        pytest.skip("SQLite's consume reads the position, then SELECT_MESSAGES from it")
    with store.db.engine.connect() as conn, conn.begin() as tx:
        scans = pg_scans(conn, q.TAKE_MESSAGES_PG.text,
                         {"id": cid, "topic": topic_id, "limit": LIMIT,
                          "max_bytes": 8 * 1024 * 1024})
        tx.rollback()  # EXPLAIN ANALYZE moved the position
    assert len(scans) == 1, scans
    scan = scans[0]
    assert "msg_offset >=" in scan.get("Index Cond", ""), scan
    assert scan["Actual Rows"] <= LIMIT, (
        f"the consume at position {DEEP} visited {scan['Actual Rows']} messages for {LIMIT}")
    assert "Rows Removed by Filter" not in scan and "Rows Removed by Join Filter" not in scan


def test_the_read_statement_is_a_range_scan_from_the_start(long_topic) -> None:
    store, topic_id, _ = long_topic
    params = {"topic": topic_id, "start": DEEP, "limit": LIMIT}
    with store.db.engine.connect() as conn:
        if store.dialect == "postgresql":
            scans = pg_scans(conn, q.SELECT_MESSAGES.text, params)
            assert [s["Actual Rows"] for s in scans] == [LIMIT]
            assert "msg_offset >=" in scans[0]["Index Cond"], scans
        else:
            plan = " ".join(row[-1] for row in conn.execute(
                text("EXPLAIN QUERY PLAN " + q.SELECT_MESSAGES.text), params))
            assert "SEARCH lq_messages USING" in plan, plan
            assert "(topic_id=? AND msg_offset>?)" in plan, plan


def test_reads_deep_in_the_topic_return_what_is_there(long_topic) -> None:
    store, _, cid = long_topic
    assert store.consumers.size("long", cid) == MESSAGES - DEEP
    batch, position = store.consumers.fetch("long", cid, LIMIT)
    assert position == DEEP and [m[0] for m in batch.messages] == list(range(DEEP,
                                                                             DEEP + LIMIT))
    taken = store.consumers.consume("long", cid, LIMIT).messages
    assert [m[1] for m in taken] == [f"m{i}" for i in range(DEEP, DEEP + LIMIT)]
    assert store.consumers.size("long", cid) == MESSAGES - DEEP - LIMIT
