"""The store's caches against a second store on the same database, in one process: a topic
deleted and re-created through one leaves the other's cached topic id stale, and the other
notices, evicts it and retries, so its answers are the database's.

Two `Store` objects stand for two broker processes (each has its own caches); both run on
SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine

from broker.app import database_url
from broker.errors import UnknownId, UnknownTopic
from broker.store import AppendRequest, Store, configure_engine, create_schema


def open_store(url: str) -> Store:
    engine = create_engine(database_url(url))
    configure_engine(engine)
    create_schema(engine)
    return Store(engine)


@pytest.fixture
def stores(db_url: str) -> Iterator[tuple[Store, Store]]:
    a, b = open_store(db_url), open_store(db_url)
    yield a, b
    for store in (a, b):
        store.db.engine.dispose()


def texts(store: Store, topic: str) -> list[str]:
    """Every message of the topic, read through a new consumer."""
    cid = store.consumers.register(topic)
    return [m[1] for m in store.consumers.consume(topic, cid, 1000).messages]


def recreate(store: Store, topic: str) -> None:
    store.topics.delete(topic)
    store.topics.create(topic)


def test_register_and_append_after_the_topic_was_recreated_elsewhere(
        stores: tuple[Store, Store], request: pytest.FixtureRequest) -> None:
    a, b = stores
    topic = f"stale-{request.node.name}"[:60]
    a.topics.create(topic)
    old = b.producers.register(topic)  # b caches the topic's id
    b.producers.append(topic, AppendRequest(old, ["before"]))
    recreate(a, topic)
    with pytest.raises(UnknownId):  # the registration went with the old topic
        b.producers.append(topic, AppendRequest(old, ["lost"]))
    new = b.producers.register(topic)  # b's cached id is stale: retried on the new topic
    assert b.producers.append(topic, AppendRequest(new, ["after"])).first == 0
    assert texts(a, topic) == ["after"]
    assert a.topics.describe(topic).producers == 1


def test_consumers_after_the_topic_was_recreated_elsewhere(
        stores: tuple[Store, Store], request: pytest.FixtureRequest) -> None:
    a, b = stores
    topic = f"stale-{request.node.name}"[:60]
    a.topics.create(topic)
    old = b.consumers.register(topic)
    assert b.consumers.size(topic, old) == 0
    recreate(a, topic)
    pid = a.producers.register(topic)
    a.producers.append(topic, AppendRequest(pid, ["one", "two"]))
    for read in (lambda: b.consumers.consume(topic, old, 10), lambda: b.consumers.size(topic, old)):
        with pytest.raises(UnknownId):  # the id is gone; the topic is not
            read()
    new = b.consumers.register(topic)
    assert b.consumers.size(topic, new) == 2
    assert [m[1] for m in b.consumers.consume(topic, new, 10).messages] == ["one", "two"]


def test_a_topic_deleted_elsewhere_is_unknown_not_stale(stores: tuple[Store, Store],
                                                        request: pytest.FixtureRequest) -> None:
    a, b = stores
    topic = f"gone-{request.node.name}"[:60]
    a.topics.create(topic)
    b.topics.describe(topic)  # cached in b
    a.topics.delete(topic)
    with pytest.raises(UnknownTopic):
        b.topics.describe(topic)
    with pytest.raises(UnknownTopic):
        b.consumers.register(topic)
    b.producers.register(topic)  # creates it again
    assert a.topics.describe(topic).producers == 1


def test_a_registration_made_elsewhere_on_the_recreated_topic_is_found(
        stores: tuple[Store, Store], request: pytest.FixtureRequest) -> None:
    """b cached the old topic's id; a producer and a consumer registered through a on the
    new topic are refused by b as not registered for the topic, unless b re-checks the
    topic's id first (issue 18)."""
    a, b = stores
    topic = f"moved-{request.node.name}"[:60]
    old = b.producers.register(topic)  # b caches the topic's id
    b.consumers.size(topic, b.consumers.register(topic))
    recreate(a, topic)
    pid, cid = a.producers.register(topic), a.consumers.register(topic)
    assert b.producers.append(topic, AppendRequest(pid, ["through b"])).first == 0
    assert b.consumers.size(topic, cid) == 1
    assert [m[1] for m in b.consumers.consume(topic, cid, 10).messages] == ["through b"]
    with pytest.raises(UnknownId):
        b.producers.append(topic, AppendRequest(old, ["lost"]))
    b.consumers.unregister(topic, cid)
    b.producers.unregister(topic, pid)
    assert a.topics.describe(topic).producers == 0
