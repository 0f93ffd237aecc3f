"""The hot reads run on the driver's own cursor (store/driver.py): its errors must still come
out as the store's, on both databases, and a connection the database dropped must leave the
pool rather than fail the next request too."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy import exc as sa_exc

from broker.app import database_url
from broker.errors import Unavailable
from broker.store import AppendRequest, Store, configure_engine, create_schema
from broker.store import queries as q
from broker.store.driver import driver_cursor


@pytest.fixture(scope="module")
def store(db_url: str) -> Iterator[Store]:
    engine = create_engine(database_url(db_url), pool_size=1, max_overflow=0)
    configure_engine(engine)
    create_schema(engine)
    store = Store(engine)
    pid = store.producers.register("driver")
    store.producers.append("driver", AppendRequest(pid, ["a", "b", "ü ✓"]))
    yield store
    engine.dispose()


def test_named_statements_run_on_the_driver_cursor(store: Store) -> None:
    topic_id = store.caches.topic_id("driver")
    with store.db.transaction() as conn, driver_cursor(conn) as cursor:
        rows = cursor.execute(q.SELECT_MESSAGES, {"topic": topic_id, "start": 1,
                                                  "limit": 5}).fetchall()
    assert [(o, b) for o, b, _ in rows] == [(1, "b"), (2, "ü ✓")]
    assert all(type(row) is tuple and type(row[2]) is int for row in rows)


def test_driver_errors_leave_as_sqlalchemy_errors(store: Store) -> None:
    """As SQLAlchemy's own, so driver.translate_errors maps them as it maps those."""
    with pytest.raises(sa_exc.DBAPIError) as raised, store.db.engine.connect() as conn, \
            conn.begin(), driver_cursor(conn) as cursor:
        cursor.execute(text("SELECT id FROM no_such_table WHERE id = :id"), {"id": 1})
    assert "no_such_table" in str(raised.value.orig)
    assert not raised.value.connection_invalidated
    with store.db.transaction() as conn:  # the connection is usable again
        assert conn.execute(q.PING).scalar() == 1


def test_a_dropped_connection_is_unavailable_and_leaves_the_pool(store: Store,
                                                                 db_url: str) -> None:
    if store.dialect != "postgresql":
        pytest.skip("only a server can drop a connection")
    cid = store.consumers.register("driver")
    with store.db.transaction() as conn:
        backend = conn.execute(text("SELECT pg_backend_pid()")).scalar()
    killer = create_engine(database_url(db_url))
    with killer.begin() as conn:  # the pool's only connection is closed by the server
        assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend}).scalar()
    killer.dispose()
    with pytest.raises(Unavailable):
        store.consumers.fetch("driver", cid, 10)
    batch, position = store.consumers.fetch("driver", cid, 10)  # on a new connection
    assert (position, [row[1] for row in batch.messages]) == (0, ["a", "b", "ü ✓"])
