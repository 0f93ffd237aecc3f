"""A fetch's read and a commit's move (broker/store/positions.py), on both databases: the
same pages (offsets, bodies, the byte bound, pruned prefixes), commits that only move forward,
are refused as before and are durable; on PostgreSQL one statement each, which reads no more
rows than the page, statistics or not."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine
from support import plan_nodes

from broker.app import database_url
from broker.errors import BadRequest, Leased
from broker.store import AppendRequest, Store, configure_engine, create_schema
from broker.store import queries as q

# Bodies of varied UTF-8 sizes (the byte bound counts bytes, not characters).
BODIES = [f"{i:05d} " + ("é" * (i % 7)) + "x" * (i % 50) for i in range(2_500)]


def utf8(body: str) -> int:
    return len(body.encode("utf-8"))


def expected(start: int, limit: int, max_bytes: int | None) -> list[tuple[int, str]]:
    """The page the contract promises: up to `limit` messages from `start`, at most
    `max_bytes` of text and at least one."""
    page: list[tuple[int, str]] = []
    total = 0
    for offset in range(start, min(start + limit, len(BODIES))):
        total += utf8(BODIES[offset])
        if page and max_bytes is not None and total > max_bytes:
            break
        page.append((offset, BODIES[offset]))
    return page


@pytest.fixture(scope="module")
def store(db_url: str) -> Iterator[Store]:
    """A store with the topic "pos" of BODIES, appended in batches, never ANALYZEd."""
    engine = create_engine(database_url(db_url))
    configure_engine(engine)
    create_schema(engine)
    store = Store(engine)
    pid = store.producers.register("pos")
    for start in range(0, len(BODIES), 1_000):
        store.producers.append("pos", AppendRequest(pid, BODIES[start:start + 1_000]))
    yield store
    engine.dispose()


def pairs(batch_messages: list) -> list[tuple[int, str]]:
    return [(row[0], row[1]) for row in batch_messages]


@pytest.mark.parametrize(("offset", "limit", "max_bytes"), [
    (None, 1000, None), (None, 1000, 8 * 1024 * 1024), (0, 7, None), (1_234, 1000, 5_000),
    (2_000, 1000, 1), (2_499, 1000, None), (2_500, 10, None), (9_999, 10, None),
    (1_990, 20, 300)])
def test_a_fetch_reads_the_page_the_contract_promises(store: Store, offset: int | None,
                                                      limit: int, max_bytes: int | None) -> None:
    cid = store.consumers.register("pos")
    store.consumers.commit("pos", cid, 100)
    batch, position = store.consumers.fetch("pos", cid, limit, offset=offset,
                                            max_bytes=max_bytes)
    start = 100 if offset is None else offset
    assert position == 100
    assert pairs(batch.messages) == expected(start, limit, max_bytes)
    assert batch.skipped == 0
    assert all(isinstance(row[2], int) and row[2] > 0 for row in batch.messages)


def test_a_fetch_before_the_first_offset_starts_at_it_and_counts_the_skipped(
        store: Store) -> None:
    store.producers.append("pruned", AppendRequest(store.producers.register("pruned"),
                                                   BODIES[:50]))
    cid = store.consumers.register("pruned")
    store.topics.set_retention("pruned", None, 20)
    while store.pruner.prune():
        pass
    assert store.topics.describe("pruned").first_offset == 30
    batch, position = store.consumers.fetch("pruned", cid, 25)
    assert position == 0 and batch.skipped == 30
    assert pairs(batch.messages) == [(o, BODIES[o]) for o in range(30, 50)]
    batch, _ = store.consumers.fetch("pruned", cid, 5, offset=10)
    assert batch.skipped == 20 and [m[0] for m in batch.messages] == list(range(30, 35))


def test_a_commit_moves_forward_only_and_is_durable(store: Store, db_url: str) -> None:
    cid = store.consumers.register("pos")
    assert store.consumers.commit("pos", cid, 40) == 40
    assert store.consumers.commit("pos", cid, 10) == 40  # never backward
    assert store.consumers.commit("pos", cid, 40) == 40
    assert store.consumers.commit("pos", cid, len(BODIES)) == len(BODIES)  # the end is fine
    with pytest.raises(BadRequest, match="past the end"):
        store.consumers.commit("pos", cid, len(BODIES) + 1)
    other = create_engine(database_url(db_url))  # another connection sees it committed
    try:
        with other.connect() as conn:
            assert conn.execute(q.SELECT_CONSUMER_POSITION, {"id": cid}).scalar() == len(BODIES)
    finally:
        other.dispose()
    batch, position = store.consumers.fetch("pos", cid, 10)
    assert (batch.messages, position) == ([], len(BODIES))


def test_fetch_and_commit_refuse_a_registration_that_hands_out_leases(store: Store) -> None:
    cid = store.consumers.register("pos", "grouped")
    assert store.leases.lease("pos", cid, 10, 60_000).lease is not None
    with pytest.raises(Leased):
        store.consumers.fetch("pos", cid, 10)
    with pytest.raises(Leased):
        store.consumers.commit("pos", cid, 5)


def test_the_pooled_connections_go_back_as_the_pool_hands_them_out(store: Store) -> None:
    """Out of autocommit, no transaction open, after a fetch, a commit and a refused commit."""
    cid = store.consumers.register("pos")
    store.consumers.fetch("pos", cid, 10)
    store.consumers.commit("pos", cid, 3)
    with pytest.raises(BadRequest):
        store.consumers.commit("pos", cid, 10**9)
    pool = store.db.engine.pool
    conns = [store.db.engine.connect() for _ in range(max(1, pool.checkedin()))]
    try:
        for conn in conns:
            driver = conn.connection.dbapi_connection
            if store.dialect == "postgresql":
                assert driver.autocommit is False
                assert driver.info.transaction_status == 0  # idle: nothing left open
            else:
                assert not driver.in_transaction
    finally:
        for conn in conns:
            conn.close()


def deallocate_everywhere(store: Store) -> list[str]:
    """DEALLOCATE ALL on every idle connection of the pool (as a session reset would); the
    prepared statements they held."""
    conns = [store.db.engine.connect() for _ in range(store.db.engine.pool.checkedin())]
    try:
        held = [text for conn in conns for text in conn.exec_driver_sql(
            "SELECT statement FROM pg_prepared_statements").scalars()]
        for conn in conns:
            conn.exec_driver_sql("DEALLOCATE ALL")
            conn.commit()
    finally:
        for conn in conns:
            conn.close()
    return held


def test_the_hot_statements_are_prepared_and_prepared_again_after_a_session_reset(
        store: Store) -> None:
    """On PostgreSQL fetch, commit and append run as server-side prepared statements; a
    connection whose prepared statements were dropped prepares them again instead of
    failing."""
    if store.dialect != "postgresql":
        pytest.skip("SQLite caches its statements itself")
    pid = store.producers.register("prepared")
    assert store.producers.append("prepared", AppendRequest(pid, ["a"], seq=1)).first == 0
    cid = store.consumers.register("pos")
    for _ in range(3):
        assert pairs(store.consumers.fetch("pos", cid, 5)[0].messages) == expected(0, 5, None)
    held = deallocate_everywhere(store)
    assert any("FROM lq_messages" in text for text in held), held  # the fetch
    assert any("INSERT INTO lq_messages" in text for text in held), held  # the append
    assert pairs(store.consumers.fetch("pos", cid, 5)[0].messages) == expected(0, 5, None)
    assert store.consumers.commit("pos", cid, 4) == 4
    assert pairs(store.consumers.fetch("pos", cid, 2)[0].messages) == expected(4, 2, None)
    deallocate_everywhere(store)
    appended = store.producers.append("prepared", AppendRequest(pid, ["b", "c"], seq=2))
    assert (appended.first, appended.last) == (1, 2)
    again = store.producers.append("prepared", AppendRequest(pid, ["b", "c"], seq=2))
    assert (again.first, again.last, again.duplicate) == (1, 2, True)


@pytest.mark.parametrize("max_bytes", [8 * 1024 * 1024, 2_000])
def test_the_fetch_statement_reads_the_page_only(store: Store, max_bytes: int) -> None:
    """Without statistics (never ANALYZEd) too: the messages read are those of the page, and
    the window runs only when the page is over the byte bound."""
    if store.dialect != "postgresql":
        pytest.skip("SQLite reads the registration, then SELECT_MESSAGES (test_store_reads)")
    cid = store.consumers.register("pos")
    store.consumers.commit("pos", cid, 700)
    params = {"id": cid, "topic": store.caches.topic_id("pos"), "offset": None, "limit": 500,
              "max_bytes": max_bytes}
    with store.db.engine.connect() as conn:
        nodes = plan_nodes(conn, q.FETCH_PG.text, params)
        rows = conn.execute(q.FETCH_PG, params).fetchall()
    scans = [n for n in nodes if n.get("Relation Name") == "lq_messages"]
    assert len(scans) == 1 and scans[0]["Actual Rows"] == 500, scans
    window = [n for n in nodes if n["Node Type"] == "WindowAgg"]
    assert window and (window[0]["Actual Loops"] > 0) == (max_bytes == 2_000), window
    assert rows[0][0] is None and rows[0][2] == 700  # the header: the position
    assert [(r[0], r[1]) for r in rows[1:]] == expected(700, 500, max_bytes)
